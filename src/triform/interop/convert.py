"""Converting folders between triform and HuggingFace, both ways (what ``triform convert``
runs; it checks the folders and writes atomically).

``to_hf`` reads

* a fine-tuned run folder (its ``best/``, else ``final/``) or one of those folders, and writes
  the matching ``transformers`` task class (``BertForSequenceClassification``, ...,
  ``T5ForConditionalGeneration``; see :mod:`triform.interop.hf.tasks`) with its labels;
* a triform model folder or pretraining run folder (``model.json`` and the latest
  checkpoint's weights), and writes the class its heads imply.

Either way the tokenizer goes along as ``tokenizer.json`` plus the ``tokenizer_config.json``
and ``special_tokens_map.json`` that ``transformers.AutoTokenizer`` needs.

``to_triform`` reads an HF folder (config.json + model.safetensors / pytorch_model.bin):
a task-head class becomes a triform fine-tuned model folder (``finetune.json``, read by
``triform.finetune.load_finetuned``; ``…ForConditionalGeneration`` only when triform wrote it
from a text-to-text fine-tune, else it is a pretrained model), any other class a triform model
folder (``model.json`` and ``model.safetensors``), with ``tokenizer.json`` copied along.

Neither direction needs transformers.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from triform.config import ModelConfig
from triform.errors import TriformError
from triform.finetune import load_finetuned, save_finetuned
from triform.interop import hf
from triform.interop.hf.tasks import is_finetuned
from triform.interop.hf.tasks import load_finetuned as hf_load_finetuned
from triform.interop.hf.tasks import save_finetuned as hf_save_finetuned
from triform.loading import read_model
from triform.models import TransformerModel
from triform.runs import save_weights
from triform.tokenizers import load_tokenizer

MODEL_JSON = "model.json"
TOKENIZER = "tokenizer.json"
FINETUNE_JSON = "finetune.json"


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
    hf_config = hf.read_config(src)
    architecture = (hf_config.get("architectures") or [None])[0]
    if is_finetuned(hf_config):
        ft = hf_load_finetuned(src)
        save_finetuned(out, ft.model, ft.task, step=0)
        return _describe(ft.model.body, f"{ft.task.kind} fine-tune")
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
    folder = finetuned_folder(src)
    if folder is not None:
        ft = load_finetuned(folder)
        hf_save_finetuned(ft, out)
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
    if not (src / MODEL_JSON).is_file():
        raise TriformError(
            f"{src} is not a triform model, pretraining run or fine-tuned run folder "
            f"(no {MODEL_JSON} or {FINETUNE_JSON})"
        )
    return read_model(src, part)
