"""``triform convert SRC OUT --to triform|hf``: HuggingFace checkpoint folders <-> triform.

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
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from triform.config import ModelConfig
from triform.errors import TriformError
from triform.models import TransformerModel
from triform.outputs import (
    KINDS,
    check_writable,
    describe,
    folder_kind,
    owner_of,
    remove_dead_temporaries,
)

MODEL_JSON = "model.json"
TOKENIZER = "tokenizer.json"
FINETUNE_JSON = "finetune.json"


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
    with building(args.out, args.overwrite) as tmp:
        if args.to == "triform":
            summary = to_triform(args.src, tmp)
        else:
            summary = to_hf(args.src, tmp, args.part)
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


def finetuned_folder(src: Path) -> Path | None:
    """The fine-tuned model folder ``src`` means (itself, its ``best/`` or its ``final/``),
    or None when it is not a fine-tuned run."""
    for folder in (src, src / "best", src / "final"):
        if (folder / FINETUNE_JSON).is_file():
            return folder
    return None


def _describe(model: TransformerModel, what: str) -> str:
    return f"{what}, {model.config.family}, {model.num_parameters():,} parameters"


def to_triform(src: Path, out: Path) -> str:
    """HF folder ``src`` -> triform model folder ``out`` (fine-tuned model folder for a
    task-head class). Returns a one-line summary."""
    from triform.interop import hf

    hf_config = hf.read_config(src)
    architecture = (hf_config.get("architectures") or [None])[0]
    if hf.tasks.is_finetuned(hf_config):
        from triform.finetune import save_finetuned

        ft = hf.load_finetuned(src)
        save_finetuned(out, ft.model, ft.task, step=0)
        return _describe(ft.model.body, f"{ft.task.kind} fine-tune")
    from triform.runs import save_weights

    model = hf.load(src)
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_JSON).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    save_weights(model, out / "model.safetensors")
    if (src / TOKENIZER).is_file():
        shutil.copyfile(src / TOKENIZER, out / TOKENIZER)
    return _describe(model, str(architecture))


def to_hf(src: Path, out: Path, part: str | None = None) -> str:
    """Triform model, pretraining run or fine-tuned run ``src`` -> HF folder ``out``.
    Returns a one-line summary."""
    from triform.interop import hf

    folder = finetuned_folder(src)
    if folder is not None:
        from triform.finetune import load_finetuned

        ft = load_finetuned(folder)
        hf.save_finetuned(ft, out)
        name = hf.read_config(out)["architectures"][0]
        return _describe(ft.model.body, f"{name} from {folder.name}/")
    model = _load_triform(src, part)
    electra_pair_part = model.config.family == "electra" and model.config.encoder_head != "none"
    (hf.save_electra if electra_pair_part else hf.save)(model, out)
    if (src / TOKENIZER).is_file():
        _write_tokenizer(src / TOKENIZER, out, model.config)
    return _describe(model, hf.read_config(out)["architectures"][0])


def _write_tokenizer(path: Path, out: Path, config: ModelConfig) -> None:
    """Copy ``tokenizer.json`` and write the files ``AutoTokenizer`` needs beside it (only the
    copy, with a warning, when the file is not a tokenizer triform can read)."""
    from triform.interop import hf
    from triform.tokenizers import load_tokenizer

    shutil.copyfile(path, out / TOKENIZER)
    try:
        tokenizer = load_tokenizer(path)
    except TriformError as err:
        print(f"triform: warning: tokenizer_config.json not written: {err}", file=sys.stderr)
        return
    learned = config.position in ("learned", "sinusoidal")
    hf.save_tokenizer_files(
        tokenizer,
        out,
        token_types=config.form == "encoder" and config.type_vocab_size > 1,
        model_max_length=config.max_positions if learned else None,
    )


def _load_triform(src: Path, part: str | None) -> TransformerModel:
    """The model of a triform model folder or pretraining run folder (``part``: one model
    of a run that trained several, e.g. ELECTRA's ``generator``)."""
    from triform.runs import read_model

    if not (src / MODEL_JSON).is_file():
        raise TriformError(
            f"{src} is not a triform model, pretraining run or fine-tuned run folder "
            f"(no {MODEL_JSON} or {FINETUNE_JSON})"
        )
    return read_model(src, part)
