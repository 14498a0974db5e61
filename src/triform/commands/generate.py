"""``triform generate MODEL_DIR --prompt TEXT``: continue text (decoders) or write the
output for a source text (encoder-decoders) by sampling, greedy decoding or beam search.

MODEL_DIR is a ``triform pretrain`` run folder, a ``triform convert`` folder or a
HuggingFace checkpoint folder with its ``tokenizer.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import tokenizers
import torch

from triform.errors import TriformError
from triform.models import TransformerModel


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
    parser.set_defaults(func=run)


def load_model_folder(folder: str) -> tuple[TransformerModel, tokenizers.Tokenizer]:
    """Model (eval mode) and tokenizer of a run, convert or HuggingFace folder."""
    from triform.inference import load_model

    if not Path(folder).is_dir():
        raise TriformError(
            f"{folder} is not a triform run folder nor a HuggingFace checkpoint folder"
        )
    return load_model(folder)


def read_lines(path: str) -> list[str]:
    """The non-empty lines of a text file, or of standard input for '-'."""
    if path == "-":
        text = sys.stdin.read()
    else:
        if not Path(path).is_file():
            raise TriformError(f"input file not found: {path}")
        text = Path(path).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def _check(args: argparse.Namespace) -> None:
    if args.max_new_tokens <= 0 or args.min_new_tokens < 0 or args.batch_size <= 0:
        raise TriformError("need --max-new-tokens > 0, --min-new-tokens >= 0, --batch-size > 0")
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


def stop_tokens(
    tokenizer: tokenizers.Tokenizer, stops: list[str], eos_id: int | None
) -> tuple[list[int], list[str]]:
    """Split ``--stop`` values into token ids (a value that is one vocabulary entry) and
    text (anything else, cut from the output where it first appears). ``\\n`` and ``\\t``
    in a value stand for a newline and a tab."""
    ids = [] if eos_id is None else [eos_id]
    texts = []
    for stop in stops:
        stop = stop.replace("\\n", "\n").replace("\\t", "\t")
        if not stop:
            raise TriformError("--stop needs a non-empty token or text")
        token = tokenizer.token_to_id(stop)
        if token is not None:
            ids.append(token)
        else:
            texts.append(stop)
    return ids, texts


def _cut(text: str, stops: list[str]) -> str:
    """``text`` up to the first stop text."""
    ends = [text.find(stop) for stop in stops if stop in text]
    return text[: min(ends)] if ends else text


def _batch(rows: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad rows of ids to one (B, L) tensor and its mask: left for decoders."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def run(args: argparse.Namespace) -> int:
    from triform.inference import generate

    _check(args)
    model, tokenizer = load_model_folder(args.run_dir)
    config = model.config
    if config.form == "encoder":
        raise TriformError(f"{args.run_dir} holds an encoder-only model; it cannot generate")
    prompts = list(args.prompt) + (read_lines(args.input) if args.input else [])
    prompts = prompts or [""]
    decoder = config.form == "decoder"
    eos_ids, stop_texts = stop_tokens(tokenizer, args.stop, config.eos_token_id)
    pad_id = next((t for t in (config.pad_token_id, config.eos_token_id) if t is not None), 0)
    rows = []
    for prompt in prompts:
        # decoders continue the bare text; encoder-decoders read it framed as in training
        ids = tokenizer.encode(prompt, add_special_tokens=not decoder).ids
        if not ids:
            ids = [config.bos_token_id if config.bos_token_id is not None else pad_id]
        rows.append(ids)
    generator = torch.Generator().manual_seed(args.seed)
    sampling = not args.greedy and args.num_beams == 1
    many = args.num_return_sequences > 1
    for start in range(0, len(rows), args.batch_size):
        chunk = rows[start : start + args.batch_size]
        input_ids, mask = _batch(chunk, pad_id, left=decoder)
        out = generate(
            model,
            input_ids.to(model.device),
            mask.to(model.device),
            max_new_tokens=args.max_new_tokens,
            num_beams=args.num_beams,
            do_sample=sampling,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            length_penalty=args.length_penalty,
            eos_token_id=eos_ids or None,
            early_stopping={"true": True, "false": False}.get(args.early_stopping, "never"),
            num_return_sequences=args.num_return_sequences,
            min_new_tokens=args.min_new_tokens,
            repetition_penalty=args.repetition_penalty,
            pad_token_id=pad_id,
            generator=generator,
            return_scores=True,
        )
        new = out.sequences[:, input_ids.shape[1] if decoder else 1 :].cpu()
        for i, (ids, score) in enumerate(zip(new.tolist(), out.scores.tolist(), strict=True)):
            prompt = prompts[start + i // args.num_return_sequences]
            ends = [k for k, token in enumerate(ids) if token in eos_ids]
            ids = ids[: ends[0]] if ends else ids  # what follows an end is padding
            text = _cut(tokenizer.decode(ids, skip_special_tokens=True), stop_texts)
            text = prompt + text if decoder else text
            print(f"[{i % args.num_return_sequences + 1}] ({score:.4f}) {text}" if many else text)
    return 0
