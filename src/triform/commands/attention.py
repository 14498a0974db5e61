"""``triform attention MODEL_DIR --text "..." --out page.html``: every layer's and head's
attention on one input, and the model's positional encodings, as one self-contained HTML page
(or the raw arrays with ``--format npz``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from triform.commands import add_overwrite_option, add_part_option, check_output
from triform.errors import TriformError
from triform.outputs import replacing

FORMATS = ("html", "npz")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "attention",
        help="draw a model's attention maps and positional encodings (HTML page or .npz)",
        description="Run one input through the model and write every layer's and head's "
        "attention probabilities (encoder, decoder and cross-attention) and the model's "
        "position information: an offline HTML page with a head view, a model view and the "
        "positional encodings, or the arrays as .npz.",
    )
    parser.add_argument(
        "model_dir",
        metavar="MODEL_DIR",
        help="a triform run folder, a triform convert folder or a HuggingFace checkpoint",
    )
    parser.add_argument("--text", required=True, help="the text to look at")
    parser.add_argument("--pair", help="a second segment (encoders: BERT's sentence B)")
    parser.add_argument(
        "--target", help="encoder-decoders: the target text the decoder reads (default: none)"
    )
    parser.add_argument("--out", required=True, help="output file (.html, or .npz)")
    parser.add_argument("--title", help="the page's title (default: model folder: text)")
    parser.add_argument(
        "--max-tokens", type=int, default=512, help="refuse longer inputs (maps grow as L²)"
    )
    parser.add_argument(
        "--format", choices=FORMATS, default=None, help="default: from --out's suffix, else html"
    )
    add_part_option(parser)
    add_overwrite_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from triform.inference.attention import attention
    from triform.inference.attention_page import save_page
    from triform.loading import load_model

    fmt = args.format or ("npz" if args.out.endswith(".npz") else "html")
    out = check_output(args.out, overwrite=args.overwrite)
    if not args.text.strip():
        raise TriformError("--text is empty")
    if args.max_tokens < 1:
        raise TriformError("--max-tokens must be positive")
    model, tokenizer = load_model(args.model_dir, args.part)
    maps = attention(
        model,
        tokenizer,
        args.text,
        pair=args.pair,
        target=args.target,
        max_tokens=args.max_tokens,
    )
    with replacing(out) as tmp:
        if fmt == "npz":
            maps.save_npz(tmp)
        else:
            title = args.title or f"{Path(args.model_dir).resolve().name}: {args.text}"
            save_page(maps, tmp, title=title)
    kinds = ", ".join(f"{kind} {tuple(w.shape)}" for kind, w in maps.attentions.items())
    print(f"attention {kinds} -> {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0
