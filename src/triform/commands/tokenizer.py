"""``triform tokenizer train|encode|info``: train a tokenizer, look at what it does."""

from __future__ import annotations

import argparse
import json
import sys

from triform.commands import add_overwrite_option, check_output
from triform.errors import TriformError


def add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    """The corpus options shared by ``tokenizer train`` and ``data prepare``."""
    parser.add_argument(
        "corpus",
        nargs="*",
        metavar="CORPUS",
        help="text files, folders or globs (.txt, .jsonl, maybe .gz; .parquet, .arrow, .csv, "
        ".tsv, datasets folders: a row is a document); none: the embedded default corpus "
        "(Python's own documentation and standard library sources)",
    )
    parser.add_argument(
        "--split-documents",
        choices=("file", "blank-line", "line"),
        default="file",
        help="how text files are cut into documents (default: one per file)",
    )
    parser.add_argument(
        "--text-field",
        default="text",
        help="the JSONL field, or the Parquet / Arrow / CSV column, that holds the text",
    )
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=None,
        metavar="N",
        help="read only about the first N bytes of text (quick runs)",
    )


def corpus_from_args(args: argparse.Namespace):
    """The :class:`~triform.data.Corpus` the arguments name (default corpus when none)."""
    from triform.data import Corpus, default_corpus

    if not args.corpus:
        print("triform: no corpus given; using the embedded default corpus", file=sys.stderr)
        return default_corpus(max_bytes=args.max_bytes)
    return Corpus.from_paths(
        args.corpus,
        text_field=args.text_field,
        split_documents=args.split_documents,
        max_bytes=args.max_bytes,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tokenizer", help="train, inspect and use tokenizers")
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)

    train = sub.add_parser("train", help="train a tokenizer on a corpus, write tokenizer.json")
    add_corpus_arguments(train)
    train.add_argument(
        "--kind",
        default="byte-bpe",
        choices=("bpe", "byte-bpe", "wordpiece", "unigram", "char"),
        help="tokenization algorithm (default: byte-bpe)",
    )
    train.add_argument(
        "--vocab-size",
        type=int,
        default=8000,
        metavar="N",
        help="vocabulary size, special tokens included (default: 8000)",
    )
    train.add_argument(
        "--family",
        default=None,
        help="special tokens and framing: bert, albert, electra, roberta, bart, gpt, gpt2, "
        "gpt3, t5 or none (default: the kind's own: byte-bpe gpt2, wordpiece bert, unigram t5, "
        "bpe roberta, char gpt2)",
    )
    case = train.add_mutually_exclusive_group()
    case.add_argument(
        "--lowercase",
        dest="lowercase",
        action="store_true",
        default=None,
        help="lower-case the text (default for wordpiece)",
    )
    case.add_argument(
        "--no-lowercase",
        dest="lowercase",
        action="store_false",
        help="keep case (default except for wordpiece)",
    )
    train.add_argument(
        "--min-frequency",
        type=int,
        default=2,
        metavar="N",
        help="least count of a merge or piece (bpe, byte-bpe, wordpiece)",
    )
    train.add_argument(
        "--out", required=True, metavar="FILE", help="tokenizer.json to write (or its folder)"
    )
    add_overwrite_option(train)
    train.set_defaults(func=run_train)

    encode = sub.add_parser("encode", help="show the tokens and ids of some text")
    encode.add_argument("tokenizer", metavar="TOKENIZER", help="a tokenizer.json (or its folder)")
    encode.add_argument("text", nargs="*", metavar="TEXT", help="texts (none: lines of stdin)")
    encode.add_argument("--pair", metavar="TEXT", help="a second segment (sentence-pair input)")
    encode.add_argument("--no-special", action="store_true", help="do not add special tokens")
    encode.add_argument("--json", action="store_true", help="one JSON object per text")
    encode.add_argument(
        "--sample",
        type=float,
        default=None,
        metavar="ALPHA",
        help="Unigram subword sampling with this alpha (e.g. 0.1)",
    )
    encode.add_argument("--seed", type=int, default=None, help="seed for --sample")
    encode.set_defaults(func=run_encode)

    info = sub.add_parser("info", help="describe a tokenizer.json")
    info.add_argument("tokenizer", metavar="TOKENIZER", help="a tokenizer.json (or its folder)")
    info.set_defaults(func=run_info)


def run_train(args: argparse.Namespace) -> int:
    from triform.tokenizers import SpecialTokens, save_tokenizer, tokenizer_file, train_tokenizer

    out = check_output(tokenizer_file(args.out), inputs=args.corpus, overwrite=args.overwrite)
    corpus = corpus_from_args(args)
    tok = train_tokenizer(
        corpus,
        kind=args.kind,
        vocab_size=args.vocab_size,
        family=args.family,
        lowercase=args.lowercase,
        min_frequency=args.min_frequency,
        show_progress=sys.stderr.isatty(),
    )
    path = save_tokenizer(tok, out)
    special = {
        k: v for k, v in SpecialTokens.from_tokenizer(tok).to_dict().items() if v not in (None, [])
    }
    if "sentinel_ids" in special:
        ids = special["sentinel_ids"]
        special["sentinel_ids"] = f"{len(ids)} ids, <extra_id_0> = {ids[0]}"
    print(f"wrote {path}: {args.kind}, {tok.get_vocab_size()} tokens; special: {special}")
    return 0


def run_encode(args: argparse.Namespace) -> int:
    from triform.tokenizers import SubwordSampler, load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    texts = args.text or [line.rstrip("\n") for line in sys.stdin]
    sampler = None
    if args.sample is not None:
        if args.pair is not None:
            raise TriformError("--sample encodes single texts; leave out --pair")
        sampler = SubwordSampler(tok, alpha=args.sample, seed=args.seed)
    for text in texts:
        if sampler is not None:
            ids = sampler.encode(text, add_special_tokens=not args.no_special)
            tokens, types = [tok.id_to_token(i) for i in ids], None
        else:
            enc = tok.encode(text, args.pair, add_special_tokens=not args.no_special)
            ids, tokens, types = enc.ids, enc.tokens, enc.type_ids
        if args.json:
            record = {"text": text, "ids": ids, "tokens": tokens}
            if args.pair is not None:
                record["token_type_ids"] = types
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(" ".join(tokens))
            print(" ".join(map(str, ids)))
    return 0


def run_info(args: argparse.Namespace) -> int:
    from triform.tokenizers import SpecialTokens, load_tokenizer, tokenizer_hash

    tok = load_tokenizer(args.tokenizer)
    model = json.loads(tok.to_str())["model"]
    special = SpecialTokens.from_tokenizer(tok)
    print(f"model: {model.get('type')}")
    print(f"vocab size: {tok.get_vocab_size(with_added_tokens=True)}")
    for name, value in special.to_dict().items():
        if name == "sentinel_ids":
            value = f"{len(value)} sentinels" + (f", <extra_id_0> = {value[0]}" if value else "")
        print(f"{name}: {value}")
    print(f"hash: {tokenizer_hash(tok)}")
    return 0
