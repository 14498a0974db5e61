"""Special tokens: what each model family registers, how it frames sequences, and how to find
the ids of the roles (pad, unk, cls, sep, mask, bos, eos, T5 sentinels) in any tokenizer.

Families and their layouts (as the original models do it):

- ``bert``, ``albert``, ``electra``: ``[CLS] A [SEP]`` and ``[CLS] A [SEP] B [SEP]`` with token
  types 0 up to the first ``[SEP]`` and 1 after; tokens ``[PAD] [UNK] [CLS] [SEP] [MASK]``.
- ``roberta``, ``bart``: ``<s> A </s>`` and ``<s> A </s></s> B </s>``; tokens
  ``<s> <pad> </s> <unk> <mask>``.
- ``gpt``, ``gpt2``, ``gpt3``: nothing added; token ``<|endoftext|>`` (bos, eos and document
  separator).
- ``t5``: ``A </s>`` and ``A </s> B </s>``; tokens ``<pad> </s> <unk>`` and the sentinels
  ``<extra_id_0>`` ... ``<extra_id_99>``.
- ``none``: nothing added, no special tokens (an unknown token is added if the kind needs one).

The family's tokens take ids ``0..k-1`` in the order listed; T5's 100 sentinels take the last
ids of the vocabulary with ``<extra_id_0>`` the highest, exactly as in the released T5.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import tokenizers
from tokenizers import processors

from triform.config import ModelConfig
from triform.errors import ConfigError

NUM_T5_SENTINELS = 100


@dataclass(frozen=True)
class FamilySpec:
    """The special tokens and post-processing templates of one model family."""

    name: str
    tokens: tuple[str, ...]  # registered first, in this order (ids 0..k-1)
    unk: str | None  # the unknown token (None: the family has none, e.g. GPT-2)
    single: str | None  # TemplateProcessing template for one sequence (None: add nothing)
    pair: str | None
    num_sentinels: int = 0  # T5: 100 ``<extra_id_i>`` tokens appended at the end

    def sentinel_tokens(self) -> list[str]:
        """The sentinel strings in the order they are appended (highest index first)."""
        return [f"<extra_id_{i}>" for i in reversed(range(self.num_sentinels))]


_BERT = FamilySpec(
    name="bert",
    tokens=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
    unk="[UNK]",
    single="[CLS] $A:0 [SEP]:0",
    pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
)
_ROBERTA = FamilySpec(
    name="roberta",
    tokens=("<s>", "<pad>", "</s>", "<unk>", "<mask>"),
    unk="<unk>",
    single="<s> $A </s>",
    pair="<s> $A </s> </s> $B </s>",
)
_GPT2 = FamilySpec(name="gpt2", tokens=("<|endoftext|>",), unk=None, single=None, pair=None)
_T5 = FamilySpec(
    name="t5",
    tokens=("<pad>", "</s>", "<unk>"),
    unk="<unk>",
    single="$A </s>",
    pair="$A </s> $B </s>",
    num_sentinels=NUM_T5_SENTINELS,
)
_NONE = FamilySpec(name="none", tokens=(), unk=None, single=None, pair=None)

FAMILIES: dict[str, FamilySpec] = {
    "bert": _BERT,
    "albert": _BERT,
    "electra": _BERT,
    "roberta": _ROBERTA,
    "bart": _ROBERTA,
    "gpt": _GPT2,
    "gpt2": _GPT2,
    "gpt3": _GPT2,
    "t5": _T5,
    "none": _NONE,
}


def family_spec(family: str) -> FamilySpec:
    """The :class:`FamilySpec` of ``family`` (aliases: albert/electra -> bert, bart -> roberta,
    gpt/gpt3 -> gpt2); a :class:`ConfigError` for an unknown name."""
    try:
        return FAMILIES[family.lower()]
    except KeyError:
        raise ConfigError(
            f"unknown tokenizer family {family!r}; choose one of {', '.join(FAMILIES)}"
        ) from None


def family_special_tokens(family: str) -> list[str]:
    """All special-token strings ``family`` registers, in id order of registration: the
    family's own tokens (ids ``0..k-1``), then T5's sentinels (the last ids)."""
    spec = family_spec(family)
    return list(spec.tokens) + spec.sentinel_tokens()


def build_post_processor(
    spec: FamilySpec, vocab: dict[str, int], byte_level: bool
) -> processors.PostProcessor | None:
    """The post-processor that frames sequences as ``spec`` says (and trims byte-level
    offsets); ``None`` when nothing is needed."""
    steps: list[processors.PostProcessor] = []
    if byte_level:
        steps.append(processors.ByteLevel(trim_offsets=True))
    if spec.single is not None:
        used = {t for t in (spec.single + " " + (spec.pair or "")).split() if not t.startswith("$")}
        names = sorted({t.split(":")[0] for t in used})
        steps.append(
            processors.TemplateProcessing(
                single=spec.single,
                pair=spec.pair,
                special_tokens=[(name, vocab[name]) for name in names],
            )
        )
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else processors.Sequence(steps)


def _first_present(vocab: dict[str, int], names: tuple[str, ...]) -> int | None:
    for name in names:
        if name in vocab:
            return vocab[name]
    return None


@dataclass
class SpecialTokens:
    """The ids of the special roles in one tokenizer (``None`` where the tokenizer has none).

    ``sentinel_ids[i]`` is the id of ``<extra_id_i>`` (T5 span corruption); empty otherwise.
    """

    pad_id: int | None = None
    unk_id: int | None = None
    cls_id: int | None = None
    sep_id: int | None = None
    mask_id: int | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    sentinel_ids: list[int] = field(default_factory=list)

    @classmethod
    def from_tokenizer(cls, tok: tokenizers.Tokenizer) -> SpecialTokens:
        """Find the roles by their conventional token strings, so that any HuggingFace
        ``tokenizer.json`` works: ``[PAD]``/``<pad>``, ``[UNK]``/``<unk>``, ``[MASK]``/``<mask>``,
        ``[CLS]``/``[SEP]`` (BERT), ``<s>``/``</s>`` (RoBERTa/BART: also cls/sep),
        ``</s>`` alone (T5: eos), ``<|endoftext|>`` (GPT-2: bos and eos) and ``<extra_id_i>``."""
        vocab = tok.get_vocab(with_added_tokens=True)
        roberta_like = "<s>" in vocab and "</s>" in vocab
        sentinels: list[int] = []
        while f"<extra_id_{len(sentinels)}>" in vocab:
            sentinels.append(vocab[f"<extra_id_{len(sentinels)}>"])
        cls_id = _first_present(vocab, ("[CLS]",))
        sep_id = _first_present(vocab, ("[SEP]",))
        if roberta_like:
            cls_id = vocab["<s>"] if cls_id is None else cls_id
            sep_id = vocab["</s>"] if sep_id is None else sep_id
        return cls(
            pad_id=_first_present(vocab, ("[PAD]", "<pad>")),
            unk_id=_first_present(vocab, ("[UNK]", "<unk>")),
            cls_id=cls_id,
            sep_id=sep_id,
            mask_id=_first_present(vocab, ("[MASK]", "<mask>")),
            bos_id=_first_present(vocab, ("<s>", "<|endoftext|>")),
            eos_id=_first_present(vocab, ("</s>", "<|endoftext|>")),
            sentinel_ids=sentinels,
        )

    @property
    def all_special_ids(self) -> list[int]:
        """Every special id (roles and sentinels), sorted, without duplicates."""
        roles = (
            self.pad_id,
            self.unk_id,
            self.cls_id,
            self.sep_id,
            self.mask_id,
            self.bos_id,
            self.eos_id,
        )
        return sorted({i for i in roles if i is not None} | set(self.sentinel_ids))

    def to_dict(self) -> dict[str, int | None | list[int]]:
        """A JSON-friendly dict of the ids."""
        return {
            "pad_id": self.pad_id,
            "unk_id": self.unk_id,
            "cls_id": self.cls_id,
            "sep_id": self.sep_id,
            "mask_id": self.mask_id,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "sentinel_ids": list(self.sentinel_ids),
        }


def fit_to_tokenizer(config: ModelConfig, tokenizer: tokenizers.Tokenizer) -> ModelConfig:
    """``config`` with the vocabulary size and special ids of ``tokenizer``: what every run
    (pretraining, fine-tuning from a preset) sets before building a model."""
    special = SpecialTokens.from_tokenizer(tokenizer)
    updates: dict = {"vocab_size": tokenizer.get_vocab_size(with_added_tokens=True)}
    for field_name, token_id in (
        ("pad_token_id", special.pad_id),
        ("bos_token_id", special.bos_id if special.bos_id is not None else special.cls_id),
        ("eos_token_id", special.eos_id if special.eos_id is not None else special.sep_id),
    ):
        if token_id is not None:
            updates[field_name] = token_id
    if config.form == "encoder-decoder":
        start = special.pad_id if config.family == "t5" else updates.get("eos_token_id")
        if start is not None:
            updates["decoder_start_token_id"] = start
    return config.replace(**updates)
