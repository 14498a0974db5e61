"""``triform convert SRC OUT --to triform|hf``: HuggingFace checkpoint folders <-> triform.

``--to triform`` reads an HF folder (config.json + model.safetensors / pytorch_model.bin) and
writes a triform model folder: ``model.json`` (the ModelConfig) and ``model.safetensors``.
``--to hf`` reads a triform model folder or run folder (``model.json`` and the latest
checkpoint's weights) and writes a folder ``transformers``' ``from_pretrained`` loads.
``tokenizer.json`` is copied along when SRC has one. Neither direction needs transformers.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from triform.config import ModelConfig
from triform.errors import TriformError
from triform.models import TransformerModel, build_model

MODEL_JSON = "model.json"
TOKENIZER = "tokenizer.json"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert HuggingFace checkpoint folders to triform and back"
    )
    parser.add_argument("src", type=Path, help="the folder to read")
    parser.add_argument("out", type=Path, help="the folder to write (created if needed)")
    parser.add_argument(
        "--to",
        required=True,
        choices=("triform", "hf"),
        help="triform: HF folder -> model.json + model.safetensors; hf: the reverse",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert ``args.src`` into ``args.out``; returns the exit status."""
    if args.src.resolve() == args.out.resolve():
        raise TriformError("SRC and OUT must be different folders")
    convert = to_triform if args.to == "triform" else to_hf
    model = convert(args.src, args.out)
    if (args.src / TOKENIZER).is_file():
        shutil.copyfile(args.src / TOKENIZER, args.out / TOKENIZER)
    print(f"wrote {args.out} ({model.config.family}, {model.num_parameters():,} parameters)")
    return 0


def to_triform(src: Path, out: Path) -> TransformerModel:
    """HF folder ``src`` -> triform model folder ``out``."""
    from triform.interop import hf
    from triform.runs import save_weights

    model = hf.load(src)
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_JSON).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    save_weights(model, out / "model.safetensors")
    return model


def to_hf(src: Path, out: Path) -> TransformerModel:
    """Triform model or run folder ``src`` -> HF folder ``out``."""
    from triform.interop import hf
    from triform.runs import load_weights

    config_file = src / MODEL_JSON
    if not config_file.is_file():
        raise TriformError(f"{src} is not a triform model or run folder (no {MODEL_JSON})")
    try:
        config = ModelConfig.from_dict(json.loads(config_file.read_text()))
    except json.JSONDecodeError as err:
        raise TriformError(f"{config_file}: malformed JSON: {err}") from None
    model = build_model(config)
    load_weights(model, src)
    hf.save(model, out)
    return model
