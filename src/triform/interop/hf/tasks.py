"""Fine-tuned models <-> HuggingFace task-head classes, both ways.

A triform fine-tuned model (a body, a task head and its labels; see :mod:`triform.finetune`)
is written as the ``transformers`` class that computes the same thing:

=================================  ==========================================================
triform task kind                  HF class (family: bert, roberta, albert, electra, gpt2, ...)
=================================  ==========================================================
classification, pair-classif.,     ``BertForSequenceClassification``,
regression                         ``RobertaForSequenceClassification``,
                                   ``AlbertForSequenceClassification``,
                                   ``GPT2ForSequenceClassification``,
                                   ``BartForSequenceClassification``
tagging                            ``{Bert,Roberta,Albert,Electra}ForTokenClassification``
qa                                 ``{Bert,Roberta,Albert,Electra}ForQuestionAnswering``
text-to-text                       ``T5ForConditionalGeneration``, ``BartForConditionalGeneration``
=================================  ==========================================================

``config.json`` carries ``id2label`` / ``label2id`` (``problem_type = "regression"`` for a
regression head) and, under ``triform_task``, the task section (without data paths) so that
loading the folder back restores the task exactly. Text-to-text folders also get a
``generation_config.json`` (greedy, triform's decoding budget) and ``prefix`` (the task prefix).

**Where the structures differ** the export maps exactly or refuses with a one-line error:

* BERT and ALBERT classify the pooler's output (dense + tanh on the first token) with one
  linear layer: triform's default head for a body with a pooler; for a body without one,
  triform's head has its own dense + tanh on the first token, which is exported as the
  pooler. RoBERTa reads the first token through dense + tanh + ``out_proj``: triform's default
  head without a pooler. Other ``task.pooling`` choices are refused.
* ``ElectraForSequenceClassification`` reads the first token through dense + GELU +
  ``out_proj``: triform's default head for an ELECTRA body.
* ``GPT2ForSequenceClassification``'s ``score`` layer has no bias. Its input is the final
  layer norm's output ``h = LN(x) * g + beta``, read by nothing else in that class, so the
  head bias ``b`` is folded into the norm: ``beta' = beta + W^+ b`` gives ``W h' = W h + b``
  (exact while ``W`` has full row rank, which is checked). The exported
  ``last_hidden_state`` is shifted by ``W^+ b``; the logits are the same.
  With no separator of its own, GPT-2's tokenizer would join the two texts of a pair; the
  exported ``tokenizer.json`` gets a post-processor that puts triform's separator between them.
* ``BartForSequenceClassification`` reads the decoder's state at the final ``</s>`` through
  dense + tanh + ``out_proj``: triform's default for a BART body (the last token's state).
* GPT-1 style kinds (``gpt-classification`` ...) frame inputs with learned start / extract
  tokens no transformers class adds: refused.

Loading (:func:`load_finetuned`) reads any folder of those classes, written by triform or
by transformers, into a :class:`~triform.finetune.Finetuned` ready to ``predict``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tokenizers
import torch
from tokenizers import processors
from torch import nn

from triform.errors import TriformError
from triform.finetune.body import resolve_pooling
from triform.finetune.config import TaskSection
from triform.finetune.saved import Finetuned
from triform.finetune.tasks import FinetuneModel, Task, build_task
from triform.interop.hf.engine import (
    build,
    export_body,
    export_state,
    family_named,
    family_of,
    hf_name,
)
from triform.interop.hf.files import (
    read_config,
    read_json,
    read_weights,
    write_checkpoint,
    write_json,
)
from triform.interop.hf.rules import StateDict
from triform.interop.hf.tokenizer import save_tokenizer_files
from triform.models import TransformerModel
from triform.tokenizers import load_tokenizer


@dataclass(frozen=True)
class TaskHead:
    """How one HF task class holds a triform task head.

    ``group``: the triform kinds it serves ("sequence", "token", "span", "text-to-text").
    ``modules``: (triform head module, HF module) pairs (RoBERTa's dense + tanh layer is
    ``dense``). ``pooling``: what the HF class reads from the body (sequence tasks).
    ``pooler``: whether the body keeps its pooler (None: a decoder, which has none).
    ``bias``: whether the output layer has a bias.
    """

    group: str
    modules: tuple[tuple[str, str], ...] = ()
    pooling: str | None = None
    pooler: bool | None = False
    bias: bool = True


_TOKEN = TaskHead("token", (("out", "classifier"),))
_SPAN = TaskHead("span", (("out", "qa_outputs"),))
_POOLED = TaskHead("sequence", (("out", "classifier"),), pooling="pooler", pooler=True)
_TEXT = TaskHead("text-to-text")

# model_type -> group -> (HF class, how it holds the head) or why it cannot be exported
TASK_CLASSES: dict[str, dict[str, tuple[str, TaskHead] | str]] = {
    "bert": {
        "sequence": ("BertForSequenceClassification", _POOLED),
        "token": ("BertForTokenClassification", _TOKEN),
        "span": ("BertForQuestionAnswering", _SPAN),
    },
    "albert": {
        "sequence": ("AlbertForSequenceClassification", _POOLED),
        "token": ("AlbertForTokenClassification", _TOKEN),
        "span": ("AlbertForQuestionAnswering", _SPAN),
    },
    "roberta": {
        "sequence": (
            "RobertaForSequenceClassification",
            TaskHead(
                "sequence",
                (("dense", "classifier.dense"), ("out", "classifier.out_proj")),
                pooling="first",
            ),
        ),
        "token": ("RobertaForTokenClassification", _TOKEN),
        "span": ("RobertaForQuestionAnswering", _SPAN),
    },
    "electra": {
        "sequence": (
            "ElectraForSequenceClassification",
            TaskHead(
                "sequence",
                (("dense", "classifier.dense"), ("out", "classifier.out_proj")),
                pooling="first",
            ),
        ),
        "token": ("ElectraForTokenClassification", _TOKEN),
        "span": ("ElectraForQuestionAnswering", _SPAN),
    },
    "gpt2": {
        "sequence": (
            "GPT2ForSequenceClassification",
            TaskHead("sequence", (("out", "score"),), pooling="last", pooler=None, bias=False),
        ),
    },
    "t5": {"text-to-text": ("T5ForConditionalGeneration", _TEXT)},
    "bart": {
        # the decoder's state at the last token (the final </s>) through dense + tanh
        "sequence": (
            "BartForSequenceClassification",
            TaskHead(
                "sequence",
                (("dense", "classification_head.dense"), ("out", "classification_head.out_proj")),
                pooling="last",
                pooler=None,
            ),
        ),
        "text-to-text": ("BartForConditionalGeneration", _TEXT),
    },
}
# HF class -> (model_type, how it holds the head)
BY_CLASS: dict[str, tuple[str, TaskHead]] = {
    entry[0]: (model_type, entry[1])
    for model_type, groups in TASK_CLASSES.items()
    for entry in groups.values()
    if isinstance(entry, tuple)
}
GROUPS = {
    "classification": "sequence",
    "pair-classification": "sequence",
    "regression": "sequence",
    "tagging": "token",
    "qa": "span",
    "text-to-text": "text-to-text",
}
_READS = {
    "pooler": "the pooler's output",
    "first": "the first token's state",
    "last": "the last token's state",
    "mean": "the mean of the token states",
}


def task_class(model_type: str, kind: str) -> tuple[str, TaskHead]:
    """The HF class of a ``kind`` fine-tune on a ``model_type`` body, and how it holds the
    head; raises naming what cannot be represented."""
    group = GROUPS.get(kind)
    if group is None:
        raise TriformError(
            f"task kind {kind} frames its inputs with triform's start / delim / extract tokens, "
            "which no transformers class adds (fine-tune with kind = classification to export)"
        )
    entry = TASK_CLASSES.get(model_type, {}).get(group)
    if entry is None:
        bodies = [t for t, groups in TASK_CLASSES.items() if isinstance(groups.get(group), tuple)]
        raise TriformError(
            f"no HuggingFace class for a {kind} fine-tune of a {model_type} body "
            f"(supported bodies: {', '.join(bodies)})"
        )
    if isinstance(entry, str):
        raise TriformError(f"cannot export this {kind} head: {entry}")
    return entry


def _head_as_pooler(name: str, spec: TaskHead, body: TransformerModel, task: Task) -> bool:
    """Refuse a sequence head that reads the body differently from the HF class. Returns
    True where the head's dense + tanh on the first token stands in for the pooler of the HF
    class (a BERT / ALBERT body without one: the same computation)."""
    if spec.group != "sequence":
        return False
    pooling = resolve_pooling(body, task.cfg.pooling)
    if pooling == spec.pooling:
        return False
    if spec.pooling == "pooler" and pooling == "first" and body.config.form == "encoder":
        return True  # no pooler, so build_head gave the head its dense + tanh layer
    raise TriformError(
        f"{name} classifies {_READS[str(spec.pooling)]}; this model's head reads "
        f"{_READS[pooling]} (task.pooling = {task.cfg.pooling!r})"
    )


def _head_tensors(
    head: nn.Module, modules: tuple[tuple[str, str], ...], name: str
) -> dict[str, torch.Tensor]:
    """HF name -> tensor for every parameter of ``head``, placed by ``modules`` (the output
    bias included even where the HF class has none: the caller folds it)."""
    named = dict(head.named_parameters())
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in modules:
        for leaf in ("weight", "bias"):
            key = f"{ours}.{leaf}"
            if key in named:
                out[f"{theirs}.{leaf}"] = named.pop(key).detach()
    if named:
        what = next(iter(named)).split(".")[0]
        raise TriformError(f"{name} has no place for the head's {what!r} layer")
    return out


def _fold_bias(body: TransformerModel, state: StateDict, key: str, bias: torch.Tensor) -> None:
    """Fold the output layer's ``bias`` into the final norm's bias (see the module docs):
    ``W @ shift = bias``, the minimum-norm solution."""
    weight = state[key].double()  # (labels, H)
    shift = torch.linalg.pinv(weight) @ bias.double()  # (H,)
    scale = max(1.0, float(bias.abs().max()))
    if not torch.allclose(weight @ shift, bias.double(), atol=1e-9 * scale, rtol=0.0):
        raise TriformError(
            "the classifier's bias cannot be folded into the final norm (its weight matrix "
            "is rank-deficient); GPT2ForSequenceClassification has no bias"
        )
    norm = hf_name(body.config, "decoder.final_norm.bias")
    state[norm] = (state[norm].double() + shift).to(state[norm].dtype)


def _label_fields(task: Task, spec: TaskHead) -> dict[str, Any]:
    """``id2label`` / ``label2id`` (transformers counts the labels from them) and
    ``problem_type`` of config.json."""
    if spec.group == "span":
        return {}  # transformers' QA heads use its default of two outputs (start, end)
    if task.kind == "regression":
        return {
            "id2label": {"0": "LABEL_0"},
            "label2id": {"LABEL_0": 0},
            "problem_type": "regression",
        }
    labels = task.labels or []
    fields: dict[str, Any] = {
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
    }
    if spec.group == "sequence":
        fields["problem_type"] = "single_label_classification"
    return fields


def _generation_config(task: Task, body: TransformerModel) -> dict[str, Any]:
    """Greedy decoding with triform's budget and special ids (``generation_config.json``)."""
    return {
        "decoder_start_token_id": task.start_id,  # type: ignore[attr-defined]
        "eos_token_id": task.specials.eos_id,
        "pad_token_id": task.pad_id,
        "bos_token_id": body.config.bos_token_id,
        "max_new_tokens": task.max_new_tokens,  # type: ignore[attr-defined]
        "do_sample": False,
        "num_beams": 1,
        "forced_bos_token_id": None,
        "forced_eos_token_id": None,
    }


def _export_tokenizer(task: Task) -> tokenizers.Tokenizer:
    """The task's tokenizer as transformers must run it. Where triform puts a separator
    between the two texts of a pair itself (a tokenizer that frames nothing, GPT-2's), the
    copy gets a post-processor that does the same: ``A <sep> B``, types 0 then 1."""
    separator = getattr(task, "separator", None)
    if not getattr(task, "needs_separator", False) or separator is None:
        return task.tokenizer
    copy = tokenizers.Tokenizer.from_str(task.tokenizer.to_str())
    sep = copy.id_to_token(separator)
    template = processors.TemplateProcessing(
        single="$A", pair=f"$A:0 {sep}:0 $B:1", special_tokens=[(sep, separator)]
    )
    current = copy.post_processor
    copy.post_processor = template if current is None else processors.Sequence([current, template])
    return copy


def save_finetuned(finetuned: Finetuned, directory: str | Path) -> Path:
    """Write a fine-tuned model (``triform.finetune.load_finetuned(...)``) as the matching
    ``transformers`` task class: ``config.json`` with the labels, ``model.safetensors``,
    the tokenizer files ``AutoTokenizer`` reads and, for text-to-text,
    ``generation_config.json``. Raises naming what the HF class cannot represent."""
    model, task = finetuned.model, finetuned.task
    body = model.body
    family = family_of(body.config)
    name, spec = task_class(family.model_type, task.kind)
    as_pooler = _head_as_pooler(name, spec, body, task)
    if spec.group == "text-to-text":
        hf_config, state = export_state(body, name)
    else:
        hf_config, state = export_body(body, bool(spec.pooler) and not as_pooler)
        modules = spec.modules
        if as_pooler:
            pooler = hf_name(body.config, "pooler.dense.weight").removesuffix(".weight")
            modules = (*modules, ("dense", pooler))
        head = _head_tensors(model.head, modules, name)
        if not spec.bias:
            out_module = dict(spec.modules)["out"]
            bias = head.pop(f"{out_module}.bias")
            state.update(head)
            _fold_bias(body, state, f"{out_module}.weight", bias)
        else:
            state.update(head)
        hf_config["architectures"] = [name]
    hf_config.update(_label_fields(task, spec))
    if spec.pooling == "last":  # GPT-2 finds each row's last token by its padding id
        hf_config["pad_token_id"] = task.pad_id
    section = dataclasses.asdict(task.cfg)
    section.update(train="", validation=None, test=None)  # local paths: not part of the model
    hf_config["triform_task"] = section
    if spec.group == "text-to-text" and task.cfg.task_prefix:
        hf_config["prefix"] = task.cfg.task_prefix
    directory = write_checkpoint(directory, hf_config, state, next(body.parameters()).dtype)
    if spec.group == "text-to-text":
        write_json(directory / "generation_config.json", _generation_config(task, body))
    config = body.config
    token_types = config.form == "encoder" and config.type_vocab_size > 1
    learned = config.position in ("learned", "sinusoidal")
    save_tokenizer_files(
        _export_tokenizer(task),
        directory,
        token_types=token_types,
        model_max_length=task.max_length if learned else None,
        pad_id=task.pad_id,
    )
    return directory


def _task_section(
    hf_config: dict[str, Any], spec: TaskHead, kind: str | None, directory: Path
) -> TaskSection:
    """The task section of a folder: the one triform wrote, else inferred from the class."""
    stored = hf_config.get("triform_task")
    known = {f.name for f in dataclasses.fields(TaskSection)}
    values = {k: v for k, v in stored.items() if k in known} if isinstance(stored, dict) else {}
    if kind is not None:
        values["kind"] = kind
    if hf_config.get("problem_type") == "multi_label_classification":
        raise TriformError("multi-label classification has no triform task kind")
    if "kind" not in values:
        if spec.group == "sequence":
            regression = hf_config.get("problem_type") == "regression"
            values["kind"] = "regression" if regression else "classification"
        else:
            values["kind"] = {"token": "tagging", "span": "qa"}.get(spec.group, spec.group)
    if GROUPS.get(values["kind"]) != spec.group:
        raise TriformError(f"task kind {values['kind']} does not fit the head of this folder")
    if not stored:
        values.setdefault("max_length", 512)  # capped by the position table
        if spec.group == "text-to-text":
            values["task_prefix"] = hf_config.get("prefix") or ""
            generation = directory / "generation_config.json"
            if generation.is_file():
                budget = read_json(generation).get("max_new_tokens")
                if isinstance(budget, int) and budget > 0:
                    values["generate_max_tokens"] = budget
    return TaskSection(**values)


def _labels(hf_config: dict[str, Any], spec: TaskHead, kind: str) -> list[str] | None:
    """Label names in index order, from ``id2label``."""
    if spec.group not in ("sequence", "token") or kind == "regression":
        return None
    raw = hf_config.get("id2label")
    if not isinstance(raw, dict) or not raw:
        raise TriformError("config.json has no id2label")
    try:
        by_index = {int(k): str(v) for k, v in raw.items()}
    except ValueError:
        raise TriformError("config.json: id2label keys must be integers") from None
    if sorted(by_index) != list(range(len(by_index))):
        raise TriformError("config.json: id2label must number the labels 0, 1, ...")
    return [by_index[i] for i in range(len(by_index))]


def is_finetuned(hf_config: dict[str, Any]) -> bool:
    """Whether an HF config is a fine-tuned model: a task-head class other than conditional
    generation, or conditional generation exported from a triform text-to-text fine-tune
    (a T5 or BART checkpoint is otherwise a pretrained model)."""
    name = (hf_config.get("architectures") or [None])[0]
    if name not in BY_CLASS:
        return False
    return BY_CLASS[name][1].group != "text-to-text" or "triform_task" in hf_config


def load_finetuned(
    directory: str | Path, device: torch.device | str = "cpu", kind: str | None = None
) -> Finetuned:
    """A HuggingFace task-head folder (one of the classes in the module docs, written by
    triform or by transformers, with its ``tokenizer.json``) as a triform fine-tuned model
    in eval mode: body, head and labels, ready to ``predict``.

    ``kind`` overrides the task kind (a folder transformers wrote does not say whether a
    sequence classifier takes pairs: ``kind="pair-classification"``).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise TriformError(f"no such checkpoint folder: {directory}")
    hf_config = read_config(directory)
    family = family_named(hf_config.get("model_type"))
    name = (hf_config.get("architectures") or [None])[0]
    if name not in BY_CLASS or BY_CLASS[name][0] != family.model_type:
        supported = ", ".join(c for c, (t, _) in BY_CLASS.items() if t == family.model_type)
        raise TriformError(
            f"{name} is not a task-head class triform loads (for {family.model_type}: "
            f"{supported}); hf.load reads pretraining and base classes"
        )
    spec = BY_CLASS[name][1]
    state = read_weights(directory)
    if spec.group == "text-to-text":
        body = build(hf_config, name, state)
    else:
        heads = tuple(f"{theirs}." for _, theirs in spec.modules)
        head_state = {k: v for k, v in state.items() if k.startswith(heads)}
        rest = {k: v for k, v in state.items() if k not in head_state}
        base = list(family.architectures)[-1]
        pooler = {"pooler": spec.pooler} if spec.pooler is not None else None
        body = build(hf_config, base, rest, heads=pooler)
    cfg = _task_section(hf_config, spec, kind, directory)
    tokenizer = load_tokenizer(directory)
    task = build_task(cfg, tokenizer, body.config)
    task.load_state({"labels": _labels(hf_config, spec, cfg.kind)})
    task.prepare_body(body)
    _head_as_pooler(name, spec, body, task)
    head = task.build_head(body)
    if spec.group != "text-to-text":
        _load_head(head, spec, head_state, name)
    model = FinetuneModel(body, head).to(device).eval()
    return Finetuned(model, tokenizer, task.labels, task)


@torch.no_grad()
def _load_head(head: nn.Module, spec: TaskHead, state: StateDict, name: str) -> None:
    """Copy the HF head tensors into triform's ``head`` (strict both ways)."""
    wanted = dict(_head_names(head, spec))
    unexpected = [key for key in state if key not in wanted]
    if unexpected:
        raise TriformError(f"unexpected key {unexpected[0]} in the {name} checkpoint")
    for hf_key, param in wanted.items():
        if hf_key not in state:
            if hf_key.endswith(".bias") and not spec.bias:
                param.zero_()  # the HF class has no bias: ours is zero
                continue
            raise TriformError(f"checkpoint lacks {hf_key}")
        value = state[hf_key]
        if value.shape != param.shape:
            raise TriformError(
                f"checkpoint tensor {hf_key} has shape {tuple(value.shape)}, "
                f"the labels imply {tuple(param.shape)}"
            )
        param.copy_(value.float())


def _head_names(head: nn.Module, spec: TaskHead) -> list[tuple[str, torch.Tensor]]:
    """(HF name, triform parameter) for every parameter of ``head``."""
    modules = dict(spec.modules)
    pairs = []
    for key, param in head.named_parameters():
        module, _, leaf = key.rpartition(".")
        if module not in modules:
            raise TriformError(f"triform head layer {module!r} has no HuggingFace equivalent")
        pairs.append((f"{modules[module]}.{leaf}", param))
    return pairs
