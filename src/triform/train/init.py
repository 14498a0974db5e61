"""Continued pretraining: a run that starts from a checkpoint's weights (``[model] init``).

Most pretraining starts from a published checkpoint and goes on over the text of one domain
("don't stop pretraining", Gururangan et al. 2020). ``model.init`` names that checkpoint: a
triform run folder (its latest checkpoint), a model folder (``triform convert``), a
fine-tuned model folder (its body) or a HuggingFace checkpoint folder, each read through the
one loader, :mod:`triform.loading`.

- **The architecture is the checkpoint's.** Its model config is the run's; a ``[model]``
  key that would change it (sizes, layers, heads, positions, norms, activation, vocabulary,
  ...) must equal the checkpoint's value, else a one-line :class:`ConfigError` names the
  key. The keys in :data:`FREE_KEYS` change no weight of the checkpoint and may be set:
  dropout, the initialisation of what is new, the special ids (taken from the tokenizer, as
  in every run) and the heads (the objective decides them).
- **The tokenizer is the checkpoint's** ``tokenizer.json`` unless ``tokenizer.path`` names
  another. A tokenizer of another vocabulary is refused; with ``model.resize_vocab = true``
  the token table and the vocabulary projection (tied or not, its bias too) take the
  tokenizer's size instead: the row of every token both vocabularies hold (matched by its
  text) comes from the checkpoint, the other rows keep the new model's initialisation.
- **The weights.** The run's model is built as in any run (the heads its objective trains,
  ELECTRA's generator, SpanBERT's boundary head), then every weight the checkpoint holds
  under the same name is copied into it; for a module of several parts, into the first
  (ELECTRA: the discriminator), and a triform run of the same parts (an ELECTRA run) gives
  every part its weights (the generator too). The rest keeps its initialisation, and what
  the checkpoint holds that the run does not train is left out: :class:`InitPlan` says
  which, in the run's first line and in ``run.json`` (``"init"``: the source, the SHA-256
  of its weights, what was loaded, what is new, what was left out).
- **A fresh run**: step 0, a new optimizer and a new schedule. ``--resume`` then continues
  it like any run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tokenizers
import torch
from torch import nn

from triform import presets
from triform.config import ModelConfig
from triform.errors import ConfigError, TriformError
from triform.loading import read_model, read_model_config_of, weights_sha256
from triform.runs import (
    MODEL_JSON,
    PARTS_JSON,
    TOKENIZER_JSON,
    alias_groups,
    latest_checkpoint,
    read_json,
)
from triform.tokenizers import fit_to_tokenizer, load_tokenizer

# ModelConfig fields that change no weight of a checkpoint: a run may set them.
FREE_KEYS = frozenset(
    {
        "dropout",
        "attention_dropout",
        "init_std",  # only what is new is initialised
        "scaled_residual_init",
        "pad_token_id",  # the special ids come from the tokenizer, as in every run
        "bos_token_id",
        "eos_token_id",
        "decoder_start_token_id",
        "encoder_head",  # the heads are the objective's (Objective.fit_model_config)
        "pair_head",
        "pooler",
    }
)
# Parts of a trained module besides the model a checkpoint initialises, in words.
EXTRA_PARTS = {"generator": "ELECTRA generator", "sbo_head": "span boundary head"}


@dataclass
class ModelInit:
    """The ``[model]`` keys of continued pretraining (every other ``[model]`` key is a
    :class:`~triform.config.ModelConfig` field)."""

    init: str | None = None
    """Start from this checkpoint's weights: a triform run folder (its latest checkpoint), a
    model folder, a fine-tuned model folder (its body) or a HuggingFace checkpoint folder.
    Its architecture is the run's (other ``[model]`` keys that change it must equal the
    checkpoint's; dropout and the like may be set), and so is its tokenizer unless
    ``tokenizer.path``. The objective's head comes from it when it has one, else is new. A
    fresh run: step 0, a new optimizer and schedule."""
    resize_vocab: bool = False
    """With ``init``: fit the token table and vocabulary projection to a tokenizer of another
    vocabulary (rows of the tokens both hold are kept, the others are new) instead of
    refusing it."""


def init_folder(path: str) -> Path:
    """The folder ``model.init`` names; a missing one is a one-line error."""
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(
            f"model.init: no such folder {path} (expected a triform run or model folder, or a "
            "HuggingFace checkpoint folder)"
        )
    return folder


def init_model_config(path: str, table: dict[str, Any], preset: str | None) -> ModelConfig:
    """The checkpoint's model config with the ``[model]`` keys of ``table`` that change no
    weight (:data:`FREE_KEYS`); every other key must equal the checkpoint's. ``preset``, when
    given, must be of the checkpoint's family (its values are the checkpoint's)."""
    folder = init_folder(path)
    try:
        base = read_model_config_of(folder)
    except TriformError as err:
        raise ConfigError(f"model.init: {err}") from None
    if preset is not None:
        family = presets.get(preset).family
        if family != base.family:
            raise ConfigError(
                f"model.preset {preset!r} is a {family} model, but model.init {path} holds a "
                f"{base.family} model (leave model.preset out: the checkpoint is the base)"
            )
    known = base.to_dict()
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"unknown key model.{key}")
        if key not in FREE_KEYS and value != known[key]:
            raise ConfigError(
                f"model.{key} = {value!r}, but model.init {path} has {known[key]!r}: the "
                f"checkpoint fixes the architecture (leave model.{key} out)"
            )
    return base.replace(**{key: value for key, value in table.items() if key in FREE_KEYS})


def init_tokenizer_path(path: str) -> str:
    """The ``tokenizer.json`` of the checkpoint ``model.init`` names (the run's tokenizer
    unless ``tokenizer.path`` is set); a checkpoint without one is a one-line error."""
    own = init_folder(path) / TOKENIZER_JSON
    if not own.is_file():
        raise ConfigError(
            f"model.init {path} has no {TOKENIZER_JSON}: set tokenizer.path to its tokenizer"
        )
    return str(own)


def fit_init_config(
    config: ModelConfig, tokenizer: tokenizers.Tokenizer, resize_vocab: bool, path: str
) -> ModelConfig:
    """The run's model config from the checkpoint's (``config``): the tokenizer's special
    ids, as in every run, and the checkpoint's vocabulary size, or with ``resize_vocab`` the
    tokenizer's. Without ``resize_vocab``, a tokenizer of another vocabulary than the
    checkpoint's (:func:`vocabulary_rows`), or with more tokens, is refused."""
    vocabulary_rows(path, tokenizer, resize_vocab, config.vocab_size)  # refuses another one
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > config.vocab_size and not resize_vocab:
        raise ConfigError(
            f"tokenizer: {size} tokens, but model.init {path} has a vocabulary of "
            f"{config.vocab_size}: use its own tokenizer, or set model.resize_vocab = true"
        )
    fitted = fit_to_tokenizer(config, tokenizer)
    return fitted.replace(vocab_size=size if resize_vocab else config.vocab_size)


def vocabulary_rows(
    path: str, tokenizer: tokenizers.Tokenizer, resize_vocab: bool, checkpoint_vocab: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """How the checkpoint's vocabulary rows map onto the run's tokenizer: ``None`` when its
    ids are the checkpoint's own (the same vocabulary), else ``(run ids, checkpoint rows)``
    to copy (with ``resize_vocab``; refused without). Tokens are matched by their text
    against the checkpoint's ``tokenizer.json``; without one, ids are taken to be the
    checkpoint's (the tokenizer named by ``tokenizer.path`` is its vocabulary)."""
    own_file = Path(path) / TOKENIZER_JSON
    mine = tokenizer.get_vocab(with_added_tokens=True)
    theirs = None
    if own_file.is_file():
        theirs = load_tokenizer(own_file).get_vocab(with_added_tokens=True)
    if theirs is not None and mine != theirs and not resize_vocab:
        moved = sum(1 for token, i in mine.items() if theirs.get(token) != i)
        raise ConfigError(
            f"tokenizer.path: another vocabulary than model.init {path}'s {TOKENIZER_JSON} "
            f"({moved} of its {len(mine)} tokens are not at their id among the checkpoint's "
            f"{len(theirs)}): leave tokenizer.path out, or set model.resize_vocab = true to "
            "fit the embeddings to it"
        )
    if not resize_vocab:
        return None
    if theirs is None:  # ids are the checkpoint's: the rows both have
        pairs = [(i, i) for i in range(min(len(mine), checkpoint_vocab))]
    else:
        kept = range(checkpoint_vocab)
        pairs = sorted((i, theirs[t]) for t, i in mine.items() if theirs.get(t, -1) in kept)
    ids = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    rows = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    return ids, rows


def is_vocabulary_key(key: str) -> bool:
    """Whether a state-dict name is a tensor with one row per token: a token table, the
    vocabulary projection or its bias."""
    return key.endswith(".token.weight") or key.startswith("lm_head.decoder.")


def init_part(module: nn.Module) -> nn.Module:
    """The model of a trained module that a checkpoint initialises: the module, or for one
    of several parts (``module.parts``, see :mod:`triform.runs`) the first, which every
    command loads by default (ELECTRA: the discriminator)."""
    parts = getattr(module, "parts", None)
    return getattr(module, next(iter(parts.values()))) if parts else module


def _unique_keys(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict with each tied tensor once, under the first of its names."""
    state = model.state_dict()
    for group in alias_groups(model, set(state)):
        for alias in group[1:]:
            state.pop(alias, None)
    return state


def component(key: str, config: ModelConfig) -> str:
    """The part of a model a state-dict name belongs to, in words (``body``, ``MLM head``,
    ``LM head``, ``replaced-token head``, ``NSP head``, ``pooler``)."""
    if key.startswith("lm_head."):
        return "MLM head" if config.form == "encoder" else "LM head"
    if key.startswith("rtd_head."):
        return "replaced-token head"
    if key.startswith("pair_head."):
        return f"{config.pair_head.upper()} head"
    if key.startswith("pooler."):
        return "pooler"
    return "body"


def _and(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


@dataclass
class InitPlan:
    """What a run takes from the checkpoint ``model.init`` names, found before anything is
    written: the checkpoint's model (until :meth:`apply`), the run model's weights copied
    from it (``copies``: run name -> checkpoint name), the vocabulary rows when resized,
    and what it says of it (``line``, the run's first; ``record``, kept in ``run.json``)."""

    source: str
    model: nn.Module | None
    copies: dict[str, str]
    rows: tuple[torch.Tensor, torch.Tensor] | None
    line: str
    record: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, tuple[nn.Module, dict[str, str]]] = field(default_factory=dict)
    """The other parts of a module of several (ELECTRA's generator) that the checkpoint
    holds too: attribute -> (the checkpoint's part, run name -> checkpoint name)."""

    @torch.no_grad()
    def apply(self, module: nn.Module) -> None:
        """Copy the checkpoint's weights into ``module`` (as the objective built it, before
        it is moved or wrapped), in place: tied tensors stay tied, and parts that share
        tensors with the initialised model (ELECTRA's generator) see them."""
        if self.model is None:
            raise TriformError(f"model.init {self.source}: the weights were applied already")
        self._copy(init_part(module).state_dict(), self.model.state_dict(), self.copies)
        for attribute, (part, copies) in self.parts.items():
            self._copy(getattr(module, attribute).state_dict(), part.state_dict(), copies)
        self.model, self.parts = None, {}  # the checkpoint's copies are no longer needed

    def _copy(
        self, state: dict[str, torch.Tensor], source: dict[str, torch.Tensor], copies: dict
    ) -> None:
        for key, name in copies.items():
            value = source[name].to(state[key].dtype)
            if self.rows is not None and is_vocabulary_key(key):
                ids, rows = self.rows
                state[key][ids] = value[rows]
            else:
                state[key].copy_(value)


def plan_init(
    path: str,
    module: nn.Module,
    tokenizer: tokenizers.Tokenizer,
    tokenizer_path: str | None,
    resize_vocab: bool,
    objective: str,
) -> InitPlan:
    """Load the checkpoint ``path`` names and match it against ``module``, the run's trained
    module as its objective builds it (on the meta device: only names and shapes are read):
    which weights come from the checkpoint, which are new, which of the checkpoint's are left
    out. A weight of the same name and another shape (other than a resized vocabulary) is an
    error."""
    folder = init_folder(path)
    try:
        source = read_model(folder)
    except TriformError as err:
        raise TriformError(f"model.init: {err}") from None
    target = init_part(module)
    config, source_config = target.config, source.config
    rows = vocabulary_rows(path, tokenizer, resize_vocab, source_config.vocab_size)
    wanted = _unique_keys(target)
    copies = _matching(path, wanted, source, rows, config.pair_head)
    parts = _other_parts(path, folder, module, target, rows)

    # what each part of the run's model is: from the checkpoint, new, or partly both (a
    # part whose weights are all tied to another's, GPT-2's LM head, is what those are)
    every = target.state_dict()
    canonical = {alias: g[0] for g in alias_groups(target, set(every)) for alias in g}
    own: dict[str, list[bool]] = {}
    tied: dict[str, list[bool]] = {}
    for key in every:
        into = own if key in wanted else tied
        into.setdefault(component(key, config), []).append(canonical.get(key, key) in copies)
    order = list(dict.fromkeys(component(key, config) for key in every))
    found = {name: own.get(name) or tied[name] for name in order}
    loaded = [n for n in order if all(found[n])]
    new = [n for n in order if not any(found[n])]
    partly = [n for n in order if any(found[n]) and not all(found[n])]
    used = set(copies.values())
    left: list[str] = []
    for key in _unique_keys(source):
        name = component(key, source_config)
        if key not in used and name not in left:
            left.append(name)
    extras, target_ids = [], {id(p) for p in target.parameters()}
    for attribute, child in module.named_children() if module is not target else ():
        if child is target or attribute in parts or not any(True for _ in child.parameters()):
            continue
        what = EXTRA_PARTS.get(attribute, attribute.replace("_", " "))
        shares = any(id(p) in target_ids for p in child.parameters())
        extras.append(f"{what} (sharing the checkpoint's embeddings)" if shares else what)
    loaded += [EXTRA_PARTS.get(attribute, attribute) for attribute in parts]

    words = []
    if loaded:
        words.append(f"{_and(loaded)} from the checkpoint")
    if partly:
        words.append(f"{_and(partly)} partly from the checkpoint")
    if new or extras:
        names = new + extras
        words.append(f"the {_and(names)} {'is' if len(names) == 1 else 'are'} new")
    if left:
        pronoun = "it" if len(left) == 1 else "them"
        words.append(
            f"left out: the checkpoint's {_and(left)} (objective {objective} does not train "
            f"{pronoun})"
        )
    vocabulary = None
    if rows is not None:
        vocabulary = {
            "checkpoint": source_config.vocab_size,
            "run": config.vocab_size,
            "rows_from_checkpoint": len(rows[0]),
        }
        words.append(
            f"vocabulary resized from {source_config.vocab_size} to {config.vocab_size} "
            f"tokens ({len(rows[0])} rows from the checkpoint, "
            f"{config.vocab_size - len(rows[0])} new)"
        )
    resolved = folder.resolve()
    kind = "triform" if (folder / MODEL_JSON).is_file() else "huggingface"
    checkpoint = latest_checkpoint(folder) if kind == "triform" else None
    record = {
        "source": str(resolved),
        "format": kind,
        "architecture": getattr(source, "hf_architecture", None),
        "checkpoint": str(checkpoint.resolve()) if checkpoint is not None else None,
        "weights_sha256": weights_sha256(source),
        "tokenizer": str(Path(tokenizer_path).resolve()) if tokenizer_path else None,
        "from_checkpoint": loaded + [f"{n} (partly)" for n in partly],
        "new": new + extras,
        "left_out": left,
        "vocabulary": vocabulary,
    }
    line = f"init from {path}: " + "; ".join(words)
    return InitPlan(path, source, copies, rows, line, record, parts)


def _matching(
    path: str,
    wanted: dict[str, torch.Tensor],
    source: nn.Module,
    rows: tuple[torch.Tensor, torch.Tensor] | None,
    pair_head: str,
) -> dict[str, str]:
    """Run name -> checkpoint name of every weight in ``wanted`` that ``source`` holds under
    the same name; one of another shape (other than a resized vocabulary) is an error."""
    available = source.state_dict()  # every name, tied ones included
    copies: dict[str, str] = {}
    for key, tensor in wanted.items():
        if key not in available:
            continue
        if key.startswith("pair_head.") and source.config.pair_head != pair_head:
            continue  # an NSP head is no SOP head
        shape = tuple(available[key].shape)
        if rows is not None and is_vocabulary_key(key):
            fits = shape[1:] == tuple(tensor.shape[1:])
        else:
            fits = shape == tuple(tensor.shape)
        if not fits:
            raise TriformError(
                f"model.init {path}: {key!r} has shape {list(shape)} in the checkpoint, "
                f"{list(tensor.shape)} in the run's model"
            )
        copies[key] = key
    return copies


def _other_parts(
    path: str,
    folder: Path,
    module: nn.Module,
    target: nn.Module,
    rows: tuple[torch.Tensor, torch.Tensor] | None,
) -> dict[str, tuple[nn.Module, dict[str, str]]]:
    """The parts of ``module`` besides ``target`` that a triform run of the same parts holds
    (an ELECTRA run for an ELECTRA run: its generator), each with its copies; tensors the
    part shares with ``target`` (the embeddings) come with the target's."""
    parts = getattr(module, "parts", None) or {}
    held = read_json(folder / PARTS_JSON) if (folder / PARTS_JSON).is_file() else {}
    found: dict[str, tuple[nn.Module, dict[str, str]]] = {}
    shared = {id(p) for p in target.parameters()}
    for name, attribute in parts.items():
        child = getattr(module, attribute)
        if child is target or name not in held:
            continue
        source = read_model(folder, part=name)
        mine = {n for n, p in child.named_parameters(remove_duplicate=False) if id(p) in shared}
        wanted = {k: v for k, v in _unique_keys(child).items() if k not in mine}
        found[attribute] = (source, _matching(path, wanted, source, rows, child.config.pair_head))
    return found
