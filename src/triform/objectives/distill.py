"""Knowledge distillation (DistilBERT, Sanh et al. 2019): a smaller student learns to match a
trained teacher.

The teacher (``teacher``: a run folder, a ``triform convert`` folder or a HuggingFace folder)
runs in eval mode without gradients on the same batch as the student. The loss is

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))    (the soft targets)
  + beta  * cross entropy of the student on the true tokens          (MLM, or next token)
  + gamma * (1 - cos(student hidden, teacher hidden))                (last hidden states)

with temperature ``T`` = 2. The KL is averaged over the predicted positions (the masked
tokens of an encoder, every next-token target of a decoder; ``kl_positions = "all"``: every
real token, as DistilBERT's code does without ``--restrict_ce_to_mask``), the cosine over
the real tokens. The defaults ``alpha = 5``, ``beta = 2``, ``gamma = 1`` are DistilBERT's training
command (``--alpha_ce 5.0 --alpha_mlm 2.0 --alpha_cos 1.0``, ``--temperature 2.0``).

- An encoder teacher is distilled with dynamic masking (the :class:`MaskedLM` keys
  ``mask_prob``, ``whole_word``, ... apply); a decoder teacher with the causal-LM shift
  (logit distillation of the next-token distributions). The student has the teacher's form.
- A teacher without a vocabulary head (a bare encoder such as a sentence-embedding model) has
  no distribution to match: set ``alpha = 0`` and distil the hidden states (``gamma``), with
  ``beta`` training the student's own MLM head or 0.
- The student uses the teacher's tokenizer (the run's tokenizer defaults to it; another one
  is refused) and, unless the run names a preset, the teacher's shape with half its layers
  (``[model]`` keys override, e.g. ``num_layers = 3``). With ``init = "teacher-layers"``
  (the default) the student starts as a copy of the teacher with its layer ``i`` taken from
  teacher layer ``teacher_layers[i]`` (default every other layer: 0, 2, 4, ...); this needs
  the student shaped as the teacher apart from its depth. ``init = "random"`` starts afresh
  (any shape; ``gamma`` needs the teacher's hidden size).
- The teacher is an attribute of the objective, not a submodule of the model trained, so
  the run folder holds the student alone: a plain model every command reads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from triform.config import ModelConfig
from triform.errors import ConfigError, TriformError
from triform.models import build_model
from triform.nn.losses import IGNORE_INDEX, Counts, labelled, loss_share, token_cross_entropy
from triform.objectives.base import (
    Objective,
    Step,
    make_config,
    masked_and_real_tokens,
    require,
    token_accuracy,
)
from triform.objectives.causal_lm import CausalLM, CausalLMConfig
from triform.objectives.masked_lm import MaskedLM, MaskedLMConfig, continuation_table
from triform.objectives.ops import Batch, SampleDraws

if TYPE_CHECKING:
    from triform.train.task import RunData

# Settings of the student that may differ from the teacher's with init = "teacher-layers":
# its depth, heads, dropout, and the special ids (the run's tokenizer is the teacher's anyway).
FREE_FIELDS = {
    "num_layers",
    "encoder_head",
    "pair_head",
    "pooler",
    "dropout",
    "attention_dropout",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "decoder_start_token_id",
}
# Student state-dict names that a bare teacher may lack: heads, left as initialised.
HEAD_PREFIXES = ("lm_head.", "pooler.", "pair_head.", "rtd_head.")
_LAYER = re.compile(r"^((?:encoder|decoder)\.layers)\.(\d+)\.(.+)$")


@dataclass
class DistillConfig(MaskedLMConfig):
    """Distillation settings; the :class:`MaskedLMConfig` keys set an encoder's masking."""

    teacher: str | None = None
    """The teacher: a run folder, a ``triform convert`` folder or a HuggingFace folder.
    Required."""
    init: Literal["teacher-layers", "random"] = "teacher-layers"
    """Start the student from teacher layers, or afresh."""
    teacher_layers: list[int] | None = None
    """The teacher layers the student's layers copy; unset: every other one from 0."""
    temperature: float = 2.0
    """Softening temperature T of both distributions."""
    alpha: float = 5.0
    """Weight of the soft-target KL term (scaled by T²)."""
    beta: float = 2.0
    """Weight of the student's cross entropy on the true tokens."""
    gamma: float = 1.0
    """Weight of 1 − cosine between the last hidden states."""
    kl_positions: Literal["masked", "all"] = "masked"
    """Where the KL is taken: the predicted tokens, or every real token."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self, "teacher", "the folder of the model to distil")
        if self.temperature <= 0:
            raise ConfigError(f"objective.temperature must be positive, got {self.temperature}")
        for name in ("alpha", "beta", "gamma"):
            if getattr(self, name) < 0:
                raise ConfigError(f"objective.{name} must be >= 0, got {getattr(self, name)}")
        if self.alpha == self.beta == self.gamma == 0:
            raise ConfigError("objective.alpha, beta and gamma are all 0: nothing to learn")


def evenly_spaced_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """The teacher layers a student of ``student_layers`` copies: ``round(i * T / S)`` for
    ``i < S``, i.e. every other layer for half the depth (0, 2, 4 of 6)."""
    if not 1 <= student_layers <= teacher_layers:
        raise ConfigError(
            f"a student of {student_layers} layers cannot copy a teacher of {teacher_layers}"
        )
    return [round(i * teacher_layers / student_layers) for i in range(student_layers)]


def init_from_teacher(
    student: nn.Module, teacher: nn.Module, layers: list[int] | None = None
) -> list[int]:
    """Copy ``teacher``'s weights into ``student`` (same form and shape apart from depth):
    embeddings, norms and heads as they are, student layer ``i`` from teacher layer
    ``layers[i]`` (default :func:`evenly_spaced_layers`). Student heads the teacher lacks stay
    as initialised. Returns the teacher layers copied."""
    mine, theirs = student.config.to_dict(), teacher.config.to_dict()
    for key in dict.fromkeys([*theirs, *mine]):  # in the config's own order
        if key not in FREE_FIELDS and mine.get(key) != theirs.get(key):
            raise ConfigError(
                f"objective.init = teacher-layers needs the student shaped as the teacher but "
                f"for its depth: {key} is {mine.get(key)!r}, the teacher's {theirs.get(key)!r} "
                "(set it in [model], or use init = random)"
            )
    depth, source = student.config.num_layers, teacher.config.num_layers
    layers = list(layers) if layers is not None else evenly_spaced_layers(source, depth)
    if len(layers) != depth or not all(0 <= i < source for i in layers):
        raise ConfigError(
            f"objective.teacher_layers must list {depth} layers of the teacher's {source} "
            f"(0 to {source - 1}), got {layers}"
        )
    available = teacher.state_dict()
    state = student.state_dict()
    for key in state:
        match = _LAYER.match(key)
        source_key = f"{match[1]}.{layers[int(match[2])]}.{match[3]}" if match else key
        if source_key in available and available[source_key].shape == state[key].shape:
            state[key] = available[source_key]
        elif not key.startswith(HEAD_PREFIXES):
            raise TriformError(f"the teacher has no weight for the student's {key!r}")
    student.load_state_dict(state, strict=True)
    return layers


def distillation_loss(
    student: Any,
    teacher: Any,
    labels: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 5.0,
    beta: float = 2.0,
    gamma: float = 1.0,
    kl_on_all_tokens: bool = False,
    totals: Counts | None = None,
) -> Step:
    """DistilBERT's loss from student and teacher outputs (``.logits`` (B, L, V) or None,
    ``.last_hidden_state`` (B, L, H)); ``labels`` (B, L) mark the predicted positions (-100
    elsewhere), ``attention_mask`` (B, L) the real tokens; the KL is over the predicted
    positions, or every real token with ``kl_on_all_tokens``. A term whose weight is 0 is
    skipped when its inputs are missing. Returns ``(loss, {"kl_loss", "ce_loss",
    "cosine_loss"})`` with the parts that could be computed. The cross entropy is a mean
    over the predicted tokens (``"tokens"``), the cosine over the real tokens
    (``"positions"``), the KL over either; with ``totals`` each is this batch's share of the
    step's mean."""
    parts: dict[str, torch.Tensor] = {}
    counts = {"tokens": labelled(labels), "positions": (attention_mask != 0).sum()}
    loss = torch.zeros((), device=labels.device)
    if student.logits is not None:
        ce = token_cross_entropy(student.logits, labels)
        parts["ce_loss"] = ce.detach()
        loss = loss + beta * loss_share(ce, "tokens", counts, totals)
    elif beta > 0:
        raise TriformError("objective.beta: the student has no vocabulary head")
    if alpha > 0:
        if student.logits is None or teacher.logits is None:
            raise TriformError("objective.alpha: soft targets need both models' vocabulary heads")
        predicted = attention_mask.bool() if kl_on_all_tokens else labels != IGNORE_INDEX
        mine = student.logits[predicted].float() / temperature  # (N, V)
        theirs = teacher.logits[predicted].float() / temperature  # (N, V)
        kl = F.kl_div(
            mine.log_softmax(-1), theirs.log_softmax(-1), log_target=True, reduction="sum"
        ) / predicted.sum().clamp(min=1)
        kl = kl * temperature**2  # keeps the soft-target gradients' scale (Hinton et al.)
        parts["kl_loss"] = kl.detach()
        kl_term = "positions" if kl_on_all_tokens else "tokens"
        loss = loss + alpha * loss_share(kl, kl_term, counts, totals)
    if gamma > 0:
        real = attention_mask.bool()  # (B, L)
        mine, theirs = student.last_hidden_state[real], teacher.last_hidden_state[real]
        if mine.shape[-1] != theirs.shape[-1]:
            raise TriformError(
                f"objective.gamma: the cosine loss needs the teacher's hidden size "
                f"({theirs.shape[-1]}), the student has {mine.shape[-1]}"
            )
        cosine = (1.0 - F.cosine_similarity(mine.float(), theirs.float(), dim=-1)).mean()
        parts["cosine_loss"] = cosine.detach()
        loss = loss + gamma * loss_share(cosine, "positions", counts, totals)
    return loss, parts


class Distillation(Objective):
    """DistilBERT-style knowledge distillation; see the module docstring."""

    name = "distill"
    resamplable = True
    config_class = DistillConfig
    form = "encoder or decoder"  # the teacher's
    input_paths = ("teacher",)
    perplexity_of = "ce_loss"

    def __init__(
        self,
        config: DistillConfig,
        teacher: nn.Module,
        *,
        is_continuation: torch.Tensor | None = None,
    ) -> None:
        super().__init__(config)
        self.teacher = teacher.eval().requires_grad_(False)  # not a submodule of the student
        teacher_form = teacher.config.form
        if teacher_form == "encoder":
            self.inner: Objective = MaskedLM(config, is_continuation=is_continuation)
        elif teacher_form == "decoder":
            self.inner = CausalLM(CausalLMConfig())
        else:
            raise ConfigError(
                f"objective.teacher: distillation takes an encoder or a decoder teacher, "
                f"{config.teacher} is {teacher_form}"
            )
        if teacher.config.vocab_size != config.vocab_size:
            raise ConfigError(
                f"objective.teacher: the teacher has {teacher.config.vocab_size} tokens, the "
                f"tokenizer {config.vocab_size}"
            )
        has_head = teacher_form == "decoder" or teacher.config.encoder_head == "mlm"
        if config.alpha > 0 and not has_head:
            raise ConfigError(
                f"objective.alpha: the teacher {config.teacher} has no MLM head (a bare "
                "encoder); set objective.alpha = 0 to distil its hidden states alone"
            )

    @classmethod
    def from_dict(cls, options: Mapping[str, Any], **context: Any) -> Distillation:
        """As :meth:`Objective.from_dict`; loads the teacher and refuses a run tokenizer
        (``context["tokenizer"]``) other than the teacher's."""
        from triform.loading import load_model
        from triform.tokenizers.files import tokenizer_hash

        config = make_config(cls.config_class, options, context)
        teacher, teacher_tokenizer = load_model(config.teacher)
        tokenizer = context.get("tokenizer")
        if tokenizer is not None and tokenizer_hash(tokenizer) != tokenizer_hash(teacher_tokenizer):
            raise ConfigError(
                f"tokenizer.path: the student must use the teacher's tokenizer "
                f"({Path(config.teacher) / 'tokenizer.json'}); leave tokenizer.path unset"
            )
        table = context.get("is_continuation")
        if table is None and config.whole_word and tokenizer is not None:
            table = continuation_table(tokenizer)
        return cls(config, teacher, is_continuation=table)

    # -- the run around it ----------------------------------------------------------------
    @classmethod
    def trains(cls, form: str) -> bool:
        return form in ("encoder", "decoder")

    @classmethod
    def run_defaults(cls, options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """The teacher's tokenizer, and its shape with half its layers (``[model]`` keys
        override; a ``[model]`` preset replaces it)."""
        from triform.loading import read_model_config_of

        teacher = options.get("teacher")
        if not isinstance(teacher, str):
            raise ConfigError("objective.teacher is required (the folder of the model to distil)")
        if not Path(teacher).is_dir():
            raise ConfigError(f"objective.teacher: no model folder at {teacher}")
        config = read_model_config_of(teacher)
        model = {**config.to_dict(), "num_layers": max(1, config.num_layers // 2)}
        return {"tokenizer": {"path": str(Path(teacher) / "tokenizer.json")}, "model": model}

    @classmethod
    def fit_model_config(cls, config: ModelConfig) -> ModelConfig:
        """Encoders: an MLM head (for the soft targets), no pair head, no pooler."""
        if config.form == "encoder":
            return config.replace(encoder_head="mlm", pair_head="none", pooler=False)
        return config

    @classmethod
    def unused_parameters(cls, config: ModelConfig) -> bool:
        # an encoder's MLM head learns nothing when alpha = beta = 0 (hidden states only)
        return config.form == "encoder"

    def build_model(self, config: ModelConfig) -> nn.Module:
        """The student: from the teacher's layers (``init = "teacher-layers"``) or afresh."""
        teacher = self.teacher.config
        if config.form != teacher.form:
            raise ConfigError(
                f"[model]: the student's form ({config.form}) must be the teacher's form "
                f"({teacher.form})"
            )
        width_differs = config.hidden_size != teacher.hidden_size  # (teacher-layers: an error)
        if self.config.init == "random" and self.config.gamma > 0 and width_differs:
            raise ConfigError(
                f"objective.gamma: the cosine loss needs the teacher's hidden size "
                f"({teacher.hidden_size}), the student has {config.hidden_size}; set gamma = 0"
            )
        student = build_model(config)
        if self.config.init == "teacher-layers":
            init_from_teacher(student, self.teacher, self.config.teacher_layers)
        return student

    def readers(self, data: RunData) -> tuple[Any, Any]:
        return self.inner.readers(data)

    # -- the transform --------------------------------------------------------------------
    def __call__(self, batch: Batch, draws: SampleDraws) -> Batch:
        return self.inner(batch, draws)

    def source_length(self, seq_len: int) -> int:
        return self.inner.source_length(seq_len)

    # -- the loss -------------------------------------------------------------------------
    def counts(self, batch: Batch) -> Counts:
        """Predicted tokens and real tokens (see :func:`distillation_loss`)."""
        return masked_and_real_tokens(batch)

    def step(
        self,
        model: nn.Module,
        batch: Batch,
        draws: SampleDraws,
        totals: Counts | None = None,
    ) -> Step:
        """Student forward, teacher forward (no gradient), :func:`distillation_loss`."""
        c = self.config
        inputs = self.model_inputs(batch)
        # vocabulary scores only when a term uses them (hidden-state distillation skips them)
        student = model(**inputs, compute_logits=c.alpha > 0 or c.beta > 0)
        device = batch["input_ids"].device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        with torch.no_grad():
            teacher = self.teacher(**inputs, compute_logits=c.alpha > 0)
        loss, parts = distillation_loss(
            student,
            teacher,
            batch["labels"],
            batch["attention_mask"],
            c.temperature,
            c.alpha,
            c.beta,
            c.gamma,
            c.kl_positions == "all",
            totals,
        )
        parts.update(token_accuracy(student, batch))
        return loss, parts

    @property
    def generative(self) -> bool:  # type: ignore[override]
        return self.inner.generative
