"""``triform generate RUN_DIR --prompt TEXT``: continue text with a trained model."""

from __future__ import annotations

import argparse

import torch

from triform.errors import TriformError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="generate text from a trained run folder")
    parser.add_argument("run_dir", help="a folder written by `triform pretrain`")
    parser.add_argument("--prompt", action="append", default=[], help="prompt (repeatable)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--greedy", action="store_true", help="greedy decoding, no sampling")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from triform.inference import generate, load_run

    if args.max_new_tokens <= 0:
        raise TriformError("--max-new-tokens must be positive")
    if args.temperature <= 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
        raise TriformError("need --temperature > 0, 0 < --top-p <= 1 and --top-k >= 0")
    model, tokenizer = load_run(args.run_dir)
    if model.config.form == "encoder":
        raise TriformError(f"{args.run_dir} holds an encoder-only model; it cannot generate")
    prompts = args.prompt or [""]
    generator = torch.Generator().manual_seed(args.seed)
    for prompt in prompts:
        ids = tokenizer.encode(prompt, add_special_tokens=False).ids
        if model.config.form == "decoder" and not ids:
            start = model.config.bos_token_id if model.config.bos_token_id is not None else 0
            ids = [start]
        input_ids = torch.tensor([ids], dtype=torch.long)
        output = generate(
            model,
            input_ids,
            max_new_tokens=args.max_new_tokens,
            do_sample=not args.greedy,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            generator=generator,
        )
        new = output[0, input_ids.shape[1] :] if model.config.form == "decoder" else output[0]
        text = tokenizer.decode(new.tolist(), skip_special_tokens=True)
        print(prompt + text if model.config.form == "decoder" else text)
    return 0
