"""``triform convert SRC OUT --to triform|hf``: HuggingFace checkpoint folders <-> triform
(the conversions are :mod:`triform.interop.convert`'s; this module checks the folders and
writes atomically).

``--to hf`` reads

* a fine-tuned run folder (its ``best/``, else ``final/``) or one of those folders, and writes
  the matching ``transformers`` task class (``BertForSequenceClassification``, ...,
  ``T5ForConditionalGeneration``; see :mod:`triform.interop.hf.tasks`) with its labels;
* a triform model folder or pretraining run folder (``model.json`` and the latest
  checkpoint's weights), and writes the class its heads imply.

Either way the tokenizer goes along as ``tokenizer.json`` plus the ``tokenizer_config.json``
and ``special_tokens_map.json`` that ``transformers.AutoTokenizer`` needs.

``--to triform`` reads an HF folder (config.json + model.safetensors / pytorch_model.bin):
a task-head class becomes a triform fine-tuned model folder (``finetune.json``, read by
``triform.finetune.load_finetuned``; ``…ForConditionalGeneration`` only when triform wrote it
from a text-to-text fine-tune, else it is a pretrained model), any other class a triform model
folder (``model.json`` and ``model.safetensors``), with ``tokenizer.json`` copied along.

Neither direction needs transformers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from triform.errors import TriformError
from triform.outputs import (
    KINDS,
    check_writable,
    describe,
    folder_kind,
    owner_of,
    remove_dead_temporaries,
)


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
        help="triform: HF folder -> triform folder; hf: triform model, pretraining run or "
        "fine-tuned run -> HF folder (a task-head class for fine-tuned runs)",
    )
    parser.add_argument(
        "--part",
        help="with --to hf, the model of a run that trained several: ELECTRA's "
        "discriminator (the default, ElectraForPreTraining) or generator (ElectraForMaskedLM)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing model folder OUT (the earlier one is moved to "
        "OUT.previous-<time>, never deleted)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert ``args.src`` into ``args.out``; returns the exit status. The new folder is
    written under a temporary name beside ``args.out`` and renamed into place once complete
    (an existing one is refused, or with ``--overwrite`` moved aside)."""
    if not args.src.is_dir():
        raise TriformError(f"no such folder: {args.src}")
    check_model_folder(args.src, args.out, args.overwrite)
    if args.to == "triform" and args.part is not None:
        raise TriformError("--part applies to --to hf (a triform run with several models)")
    from triform.interop.convert import to_hf, to_triform
    from triform.interop.hf.card import write_model_card

    with building(args.out, args.overwrite) as tmp:
        if args.to == "triform":
            summary = to_triform(args.src, tmp)
        else:
            summary = to_hf(args.src, tmp, args.part)
            write_model_card(args.src, tmp, args.part, name=args.out.name)  # README.md
    print(f"wrote {args.out} ({summary})")
    return 0


def check_model_folder(src: Path, out: Path, overwrite: bool) -> None:
    """Refuse an output folder that is, holds or lies inside SRC, that belongs to a run or
    model folder, that holds a run or anything but a model, or (unless ``overwrite``) that
    exists and is not empty."""
    source, target = src.resolve(), out.resolve()
    if target == source or target.is_relative_to(source) or source.is_relative_to(target):
        raise TriformError(f"SRC {src} and OUT {out} overlap: write OUT elsewhere")
    if out.exists() and not out.is_dir():
        raise TriformError(f"OUT {out} is a file, not a folder")
    owner = owner_of(out)
    if owner is not None:
        raise TriformError(f"OUT {out} lies in {describe(owner)}: write OUT elsewhere")
    kind = folder_kind(out)
    if kind not in (None, "model"):
        raise TriformError(f"OUT {out} holds {KINDS[kind].what}, not a model: choose another one")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise TriformError(
            f"OUT {out} exists and is not empty: add --overwrite to replace it (it is moved to "
            f"{out.name}.previous-<time>), or choose another folder"
        )
    check_writable(out.parent, f"OUT {out}")


@contextlib.contextmanager
def building(out: Path, overwrite: bool) -> Iterator[Path]:
    """``with building(out, overwrite) as tmp: write(tmp)``: the folder is built as a hidden
    sibling and renamed to ``out`` once complete; an existing ``out`` is first renamed to
    ``out.previous-<time>`` (``overwrite``). A failure leaves ``out`` as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(out.parent, out.name)
    tmp = out.with_name(f".tmp-{os.getpid()}-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        if out.exists():
            if any(out.iterdir()):
                aside = out.with_name(f"{out.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(out, aside)
                print(f"moved the earlier {out} to {aside}")
            else:
                out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
