"""``triform evaluate icl MODEL_DIR --task task.jsonl``: zero-, one- and few-shot accuracy."""

from __future__ import annotations

import argparse

from triform.errors import TriformError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="evaluate a model (in-context learning)")
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
    icl.set_defaults(func=run_icl)


def run_icl(args: argparse.Namespace) -> int:
    from triform.inference.icl import evaluate_icl, read_examples, save_result
    from triform.runs import load_model

    try:
        shots = [int(k) for k in args.shots.split(",")]
    except ValueError:
        raise TriformError(
            f"--shots must be comma-separated integers, got {args.shots!r}"
        ) from None
    if any(k < 0 for k in shots):
        raise TriformError("--shots must not be negative")
    options = [o.strip() for o in args.options.split(",")] if args.options else None
    examples = read_examples(args.task, options)
    if args.max_examples is not None:
        if args.max_examples <= 0:
            raise TriformError("--max-examples must be positive")
        examples = examples[: args.max_examples]
    pool = read_examples(args.pool, options) if args.pool else None
    model, tokenizer = load_model(args.model)
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
        save_result(result, args.out, {"task": args.task, "model": args.model})
    return 0
