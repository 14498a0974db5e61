"""``triform features MODEL_DIR --input texts.txt --out feats.npy``: contextual embeddings
of every line of a text file, per token or pooled per text (BERT's feature-based approach).
"""

from __future__ import annotations

import argparse

from triform.commands import add_overwrite_option, add_part_option, check_output
from triform.errors import TriformError
from triform.inference.features import LAYERS, POOLING


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "features",
        help="extract contextual embeddings (per token or per text) to .npy / .safetensors",
        description="Embed each non-empty line of --input. Per-token features are written "
        "one text after another with their offsets (NAME.offsets.npy beside a .npy file, "
        "tensor 'offsets' in a .safetensors file); pooled features as an (N, D) array.",
    )
    parser.add_argument(
        "model_dir", metavar="MODEL_DIR", help="a triform run folder or a HuggingFace checkpoint"
    )
    parser.add_argument("--input", required=True, help="text file, one text a line ('-': stdin)")
    parser.add_argument("--out", required=True, help="output file: .npy or .safetensors")
    parser.add_argument("--layers", choices=LAYERS, default="last", help="layer combination")
    parser.add_argument("--pooling", choices=POOLING, default="none", help="per-text pooling")
    parser.add_argument("--normalize", action="store_true", help="unit L2 norm per vector")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=None, help="tokens kept per text")
    add_part_option(parser)
    add_overwrite_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from triform.inference import load_model
    from triform.inference.features import extract_features, offsets_path, save_features
    from triform.textio import read_lines

    if not args.out.endswith((".npy", ".safetensors")):
        raise TriformError(f"--out must end in .npy or .safetensors, not {args.out}")
    check_output(args.out, inputs=[args.input], overwrite=args.overwrite)
    if args.out.endswith(".npy") and args.pooling == "none":  # the offsets go beside it
        check_output(offsets_path(args.out), [args.input], args.overwrite, "--out (offsets)")
    if args.batch_size < 1 or (args.max_length is not None and args.max_length < 1):
        raise TriformError("--batch-size and --max-length must be positive")
    texts = read_lines(args.input)
    if not texts:
        raise TriformError(f"{args.input} holds no text")
    model, tokenizer = load_model(args.model_dir, args.part)
    features = extract_features(
        model,
        tokenizer,
        texts,
        layers=args.layers,
        pooling=args.pooling,
        batch_size=args.batch_size,
        max_length=args.max_length,
        normalize=args.normalize,
    )
    written = save_features(features, args.out)
    width = features.shape[-1] if args.pooling != "none" else features[0].shape[-1]
    print(
        f"{len(texts)} texts, {width} features each {'text' if args.pooling != 'none' else 'token'}"
        f" -> {', '.join(str(p) for p in written)}"
    )
    return 0
