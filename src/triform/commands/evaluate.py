"""``triform evaluate icl MODEL_DIR --task task.jsonl``: zero-, one- and few-shot accuracy;
``triform evaluate perplexity MODEL_DIR FILE...``: perplexity on text (or source/target pairs)."""

from __future__ import annotations

import argparse
import json
import sys

from triform.commands import add_overwrite_option, add_part_option, check_output
from triform.errors import TriformError
from triform.outputs import replacing


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="evaluate a model (perplexity, in-context learning)"
    )
    kinds = parser.add_subparsers(dest="evaluation", metavar="KIND", required=True)
    icl = kinds.add_parser(
        "icl", help="zero-, one- and few-shot accuracy of a decoder or encoder-decoder"
    )
    icl.add_argument("model", help="a run folder, a `triform convert` folder or an HF folder")
    icl.add_argument("--task", required=True, help="JSONL: input, answer [, options]")
    icl.add_argument("--pool", help="JSONL of demonstrations (default: the task itself)")
    icl.add_argument("--shots", default="0,1,4,8", help="numbers of demonstrations (0,1,4,8)")
    icl.add_argument(
        "--template",
        default="{input}\nAnswer: {answer}",
        help="prompt of one example, with {input} and ending with {answer}",
    )
    icl.add_argument("--separator", default="\n\n", help="between demonstrations")
    icl.add_argument("--options", help="comma-separated answer options for every example")
    icl.add_argument(
        "--scoring", default="loglik-norm", choices=["loglik", "loglik-norm", "generate"]
    )
    icl.add_argument("--max-examples", type=int, help="evaluate only the first N examples")
    icl.add_argument("--max-new-tokens", type=int, default=16, help="for --scoring generate")
    icl.add_argument("--seed", type=int, default=0)
    icl.add_argument("--out", help="write accuracies and predictions as JSON")
    add_overwrite_option(icl)
    add_part_option(icl)
    icl.set_defaults(func=run_icl)

    ppl = kinds.add_parser(
        "perplexity",
        help="perplexity on text: sliding window (decoders), source/target pairs "
        "(encoder-decoders), masked-LM pseudo-perplexity (encoders)",
    )
    ppl.add_argument("model", help="a run folder, a `triform convert` folder or an HF folder")
    ppl.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="UTF-8 text files ('-': standard input); for encoder-decoders TSV "
        "(source<TAB>target) or JSONL (source, target) files",
    )
    ppl.add_argument(
        "--max-length", type=int, help="tokens per window (default: the model's positions)"
    )
    ppl.add_argument(
        "--stride", type=int, help="decoders: tokens between window starts (default: half)"
    )
    ppl.add_argument(
        "--batch-size", type=int, help="windows (decoders), pairs or masked copies per forward"
    )
    ppl.add_argument(
        "--windows",
        type=int,
        help="score this many windows (pairs for encoder-decoders), spread evenly across the "
        "text, as a run's validation loss is (default: every window)",
    )
    ppl.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_part_option(ppl)
    ppl.set_defaults(func=run_perplexity)


def run_perplexity(args: argparse.Namespace) -> int:
    from triform.inference import load_model
    from triform.inference.perplexity import perplexity

    model, tokenizer = load_model(args.model, args.part)
    result = perplexity(
        model,
        tokenizer,
        args.files,
        max_length=args.max_length,
        stride=args.stride,
        batch_size=args.batch_size,
        progress=sys.stderr.isatty(),
        windows=args.windows,
    )
    if args.json:
        print(json.dumps({"model": args.model, **result.to_dict()}))
        return 0
    window = (
        f", windows of {result.max_length}" + (f", stride {result.stride}" if result.stride else "")
        if result.max_length
        else ""
    )
    print(f"{result.method}: {result.tokens} tokens in {result.texts} text(s){window}")
    if not result.whole:
        print(f"{result.windows} of {result.total_windows} windows, spread evenly across the text")
    print(f"perplexity     {result.perplexity:.4f}")
    print(f"nll per token  {result.mean_nll:.4f} nats")
    if result.bits_per_byte is not None:
        print(f"bits per byte  {result.bits_per_byte:.4f}")
        print(f"bits per char  {result.bits_per_char:.4f}")
    return 0


def run_icl(args: argparse.Namespace) -> int:
    from triform.inference.icl import evaluate_icl, read_examples, save_result
    from triform.loading import load_model

    try:
        shots = [int(k) for k in args.shots.split(",")]
    except ValueError:
        raise TriformError(
            f"--shots must be comma-separated integers, got {args.shots!r}"
        ) from None
    if any(k < 0 for k in shots):
        raise TriformError("--shots must not be negative")
    if args.out:
        check_output(args.out, inputs=[args.task, args.pool], overwrite=args.overwrite)
    options = [o.strip() for o in args.options.split(",")] if args.options else None
    examples = read_examples(args.task, options)
    if args.max_examples is not None:
        if args.max_examples <= 0:
            raise TriformError("--max-examples must be positive")
        examples = examples[: args.max_examples]
    pool = read_examples(args.pool, options) if args.pool else None
    model, tokenizer = load_model(args.model, args.part)
    template = args.template.replace("\\n", "\n")  # a typed backslash-n is a newline
    result = evaluate_icl(
        model,
        tokenizer,
        examples,
        shots=shots,
        pool=pool,
        template=template,
        separator=args.separator.replace("\\n", "\n"),
        scoring=args.scoring,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
    )
    print(f"{'shots':>5}  accuracy  ({len(examples)} examples, {args.scoring})")
    for k, value in result.accuracy.items():
        print(f"{k:>5}  {value:.4f}")
    if args.out:
        with replacing(args.out) as tmp:
            save_result(result, tmp, {"task": args.task, "model": args.model})
    return 0
