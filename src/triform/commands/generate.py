"""``triform generate MODEL_DIR --prompt TEXT``: continue text (decoders) or write the
output for a source text (encoder-decoders) by sampling, greedy decoding or beam search.

MODEL_DIR is a ``triform pretrain`` run folder, a ``triform convert`` folder or a
HuggingFace checkpoint folder with its ``tokenizer.json``. The work is
:func:`triform.inference.completions.complete`; this module parses and prints.
"""

from __future__ import annotations

import argparse
import json
import sys

from triform.commands import add_overwrite_option, add_part_option, check_output
from triform.errors import TriformError
from triform.outputs import write_output


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate text with a decoder or encoder-decoder model",
        description="Continue prompts (decoders) or answer sources (encoder-decoders). "
        "Sampling by default; --greedy or --num-beams N decode deterministically.",
    )
    parser.add_argument(
        "run_dir", metavar="MODEL_DIR", help="a triform run folder or a HuggingFace checkpoint"
    )
    parser.add_argument("--prompt", action="append", default=[], help="prompt (repeatable)")
    parser.add_argument("--input", help="a file of prompts, one a line ('-': standard input)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--min-new-tokens", type=int, default=0)
    parser.add_argument("--greedy", action="store_true", help="greedy decoding, no sampling")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=0, help="0: no top-k filtering")
    parser.add_argument("--top-p", type=float, default=0.95, help="1.0: no nucleus filtering")
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--num-beams", type=int, default=1, help="> 1: beam search")
    parser.add_argument("--length-penalty", type=float, default=1.0, help="beam score / len^this")
    parser.add_argument(
        "--early-stopping",
        choices=("false", "true", "never"),
        default="false",
        help="when beam search stops (as transformers)",
    )
    parser.add_argument("--num-return-sequences", type=int, default=1, help="outputs per prompt")
    parser.add_argument(
        "--stop",
        action="append",
        default=[],
        help="stop at this token or text (repeatable; \\n is a newline; the model's end token "
        "always stops)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="prompts decoded together")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--format",
        choices=("text", "jsonl"),
        default="text",
        help="text: each output under a '--- prompt N ---' line when there are several; "
        "jsonl: one JSON object per output (prompt, text, rank, score)",
    )
    parser.add_argument("--out", help="write the outputs to this file (default: stdout)")
    add_overwrite_option(parser)
    add_part_option(parser)
    parser.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    if args.max_new_tokens <= 0 or args.min_new_tokens < 0 or args.batch_size <= 0:
        raise TriformError("need --max-new-tokens > 0, --min-new-tokens >= 0, --batch-size > 0")
    if args.min_new_tokens > args.max_new_tokens:
        raise TriformError(
            f"--min-new-tokens {args.min_new_tokens} is more than --max-new-tokens "
            f"{args.max_new_tokens}"
        )
    if args.temperature <= 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
        raise TriformError("need --temperature > 0, 0 < --top-p <= 1 and --top-k >= 0")
    if args.repetition_penalty <= 0:
        raise TriformError("--repetition-penalty must be positive")
    if args.num_beams < 1 or args.num_return_sequences < 1:
        raise TriformError("--num-beams and --num-return-sequences must be at least 1")
    if args.num_beams > 1 and args.num_return_sequences > args.num_beams:
        raise TriformError("--num-return-sequences cannot exceed --num-beams")
    if args.greedy and args.num_beams == 1 and args.num_return_sequences > 1:
        raise TriformError("--greedy gives one sequence per prompt: use --num-beams or sampling")
    if any(not stop for stop in args.stop):
        raise TriformError("--stop needs a non-empty token or text")


def run(args: argparse.Namespace) -> int:
    from triform.inference import load_model
    from triform.inference.completions import complete
    from triform.textio import read_lines

    _check(args)
    if args.out is not None:
        check_output(args.out, inputs=[args.input], overwrite=args.overwrite)
    prompts = list(args.prompt) + (read_lines(args.input) if args.input else [])
    model, tokenizer = load_model(args.run_dir, args.part)
    if model.config.form == "encoder":
        raise TriformError(f"{args.run_dir} holds an encoder-only model; it cannot generate")
    completions = complete(
        model,
        tokenizer,
        prompts or [""],
        stops=args.stop,
        batch_size=args.batch_size,
        num_return_sequences=args.num_return_sequences,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        do_sample=not args.greedy and args.num_beams == 1,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        length_penalty=args.length_penalty,
        early_stopping={"true": True, "false": False}.get(args.early_stopping, "never"),
        min_new_tokens=args.min_new_tokens,
        repetition_penalty=args.repetition_penalty,
    )
    lines = _lines(completions, args.format, args.num_return_sequences)
    if args.out is None:
        sys.stdout.writelines(f"{line}\n" for line in lines)
        return 0
    write_output(args.out, "".join(f"{line}\n" for line in lines))
    print(f"{len(completions)} output(s) -> {args.out}", file=sys.stderr)
    return 0


def _lines(completions: list, fmt: str, per_prompt: int) -> list[str]:
    """The outputs as printed: JSON lines, one text, or texts under ``--- prompt N ---``."""
    if fmt == "jsonl":
        return [json.dumps(c.to_dict(), ensure_ascii=False) for c in completions]
    if len(completions) == 1:
        return [completions[0].text]
    lines = []
    for i, c in enumerate(completions):
        output = f", output {c.rank}" if per_prompt > 1 else ""
        lines += [f"--- prompt {i // per_prompt + 1}{output} (score {c.score:.4f}) ---", c.text]
    return lines
