"""``triform models``: list the presets with their parameter counts, or show one."""

from __future__ import annotations

import argparse
import json

from triform import presets
from triform.models import build_model


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models", help="list model presets and their parameter counts, or show one preset"
    )
    parser.add_argument("name", nargs="?", help="a preset to show in full (its config as JSON)")
    parser.add_argument("--all", action="store_true", help="include the *-tiny test presets")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.name:
        config = presets.get(args.name)
        model = build_model(config, device="meta")
        print(json.dumps(config.to_dict(), indent=2))
        print(f"parameters: {model.num_parameters():,}")
        return 0
    print(f"{'preset':<18} {'form':<16} {'layers':>6} {'hidden':>6} {'heads':>5} {'params':>10}")
    for name in presets.names():
        if name.endswith("-tiny") and not args.all:
            continue
        config = presets.get(name)
        params = build_model(config, device="meta").num_parameters()
        layers = str(config.num_layers)
        if config.form == "encoder-decoder":
            layers = f"{config.num_layers}+{config.decoder_layers}"
        print(
            f"{name:<18} {config.form:<16} {layers:>6} {config.hidden_size:>6} "
            f"{config.num_heads:>5} {_millions(params):>10}"
        )
    return 0


def _millions(count: int) -> str:
    return f"{count / 1e6:,.1f}M" if count >= 1e6 else f"{count / 1e3:,.0f}k"
