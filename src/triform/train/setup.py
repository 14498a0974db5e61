"""Getting a run ready: its tokenizer, its model config fitted to that tokenizer, its shards."""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path
from typing import Any

import tokenizers

from triform.config import ModelConfig
from triform.data import Corpus, default_corpus
from triform.data.shards import ShardSet, prepare_shards
from triform.errors import ConfigError, TriformError
from triform.objectives.seq2seq import read_pairs
from triform.runs import (
    CHECKPOINTS,
    MODEL_JSON,
    STEP_DIR,
    TOKENIZER_JSON,
    list_checkpoints,
    read_model_config,
)
from triform.runtime.distributed import barrier, broadcast_object, is_main_process
from triform.tokenizers import (
    FAMILIES,
    fit_to_tokenizer,
    load_tokenizer,
    save_tokenizer,
    tokenizer_from_str,
    tokenizer_hash,
    train_tokenizer,
)
from triform.train.init import fit_init_config
from triform.train.run_config import RunConfig

# Model families the tokenizer module has no special-token convention of its own for.
TOKENIZER_FAMILY_FALLBACK = {"transformer": "bart"}


def tokenizer_family(model_family: str) -> str:
    """The tokenizer family (special tokens, templates) a model family trains with."""
    if model_family in FAMILIES:
        return model_family
    return TOKENIZER_FAMILY_FALLBACK.get(model_family, "gpt2")


def load_validation(config: RunConfig) -> Corpus | None:
    """The run's validation corpus (``data.validation``), or None to hold out a share."""
    if config.data.validation is None:
        return None
    return Corpus.from_paths(
        config.data.validation,
        text_field=config.data.text_field,
        split_documents=config.data.split_documents,
    )


def load_corpus(config: RunConfig) -> Corpus:
    """The run's corpus: the embedded default or the configured paths."""
    paths = config.data.corpus
    if paths == ["default"]:
        return default_corpus()
    if "default" in paths:
        raise ConfigError("data.corpus: 'default' cannot be mixed with paths")
    missing = [p for p in paths if not glob.glob(p)]
    if missing and config.data.if_missing == "default":
        if is_main_process():
            print(f"corpus {missing[0]} not found: using the embedded default corpus instead")
        return default_corpus()
    return Corpus.from_paths(
        paths, text_field=config.data.text_field, split_documents=config.data.split_documents
    )


def prepare_tokenizer(
    config: RunConfig, out_dir: Path, fresh: bool = False
) -> tuple[tokenizers.Tokenizer, list[Path]]:
    """The run's tokenizer, and the files it must still be saved to; nothing is written.

    ``tokenizer.path`` names a ``tokenizer.json`` that must exist: a missing one is an
    error naming it, never a new tokenizer trained in its place. Without a path, the run
    folder's own ``tokenizer.json`` is used (a resumed run's; not when ``fresh``: an earlier
    run's, being moved aside), else a tokenizer of ``tokenizer.kind`` is trained on the
    corpus. The run folder always gets its own copy.
    """
    section = config.tokenizer
    own = out_dir / TOKENIZER_JSON
    if section.path is not None:
        path = Path(section.path)
        if not path.is_file():
            raise ConfigError(
                f"tokenizer.path: {path} does not exist (leave tokenizer.path out to train a "
                "tokenizer of tokenizer.kind for the run)"
            )
        return load_tokenizer(path), [own]
    if own.is_file() and not fresh:
        return load_tokenizer(own), []
    return train_run_tokenizer(config), [own]


def train_run_tokenizer(config: RunConfig) -> tokenizers.Tokenizer:
    """A tokenizer of the run's ``[tokenizer]`` section trained on its corpus (on rank 0,
    shared with the other ranks)."""
    section = config.tokenizer
    text = None
    if is_main_process():
        tokenizer = train_tokenizer(
            _tokenizer_corpus(config),
            kind=section.kind,
            vocab_size=section.vocab_size,
            family=section.family or tokenizer_family(config.model.family),
            lowercase=section.lowercase,
        )
        text = tokenizer.to_str()
    # as a saved file reads back, on every rank
    return tokenizer_from_str(broadcast_object(text))


def save_run_tokenizer(tokenizer: tokenizers.Tokenizer, paths: list[Path]) -> None:
    """Write the tokenizer where :func:`prepare_tokenizer` said (rank 0 only)."""
    if is_main_process():
        for path in paths:
            save_tokenizer(tokenizer, path)


def check_resume(run_dir: Path, model_config: ModelConfig, tokenizer: tokenizers.Tokenizer) -> None:
    """Refuse to resume a run folder with another model or tokenizer, before anything is
    written: the error names the first setting that differs."""
    if not (run_dir / MODEL_JSON).is_file():
        raise TriformError(f"cannot resume {run_dir}: it is not a run folder (no {MODEL_JSON})")
    own = run_dir / TOKENIZER_JSON
    if own.is_file() and tokenizer_hash(load_tokenizer(own)) != tokenizer_hash(tokenizer):
        raise TriformError(
            f"cannot resume {run_dir}: its tokenizer.json differs from this config's tokenizer"
        )
    saved = read_model_config(run_dir).to_dict()
    for key, value in model_config.to_dict().items():
        if saved.get(key) != value:
            raise TriformError(
                f"cannot resume {run_dir}: model.{key} is {saved.get(key)!r} in the run, "
                f"{value!r} in this config"
            )


def _tokenizer_corpus(config: RunConfig):
    if config.data.sources is not None:
        pairs = read_pairs(config.data.sources)
        return [[source, target] for source, target in pairs]
    return load_corpus(config)


def resolve_model_config(config: RunConfig, tokenizer: tokenizers.Tokenizer) -> ModelConfig:
    """The run's model config with vocabulary size and special ids taken from the
    tokenizer; a run from a checkpoint (``model.init``) keeps the checkpoint's vocabulary
    size unless ``model.resize_vocab`` (see :func:`~triform.train.init.fit_init_config`)."""
    init = config.init
    if init.init is not None:
        return fit_init_config(config.model, tokenizer, init.resize_vocab, init.init)
    return fit_to_tokenizer(config.model, tokenizer)


def prepare_data(
    config: RunConfig, tokenizer: tokenizers.Tokenizer, out_dir: Path, overwrite: bool = False
):
    """Tokenize the corpus (and ``data.validation``) into shards once; returns (train, val)
    shard sets. Shards of another corpus or tokenizer in ``data.shards_dir`` are refused
    unless ``overwrite`` (they are then moved aside, see :func:`prepare_shards`).

    Sequence-to-sequence runs read their TSV directly and return ``None``.
    """
    if config.data.sources is not None:
        return None
    shards_dir = Path(config.data.shards_dir) if config.data.shards_dir else out_dir / "data"
    if is_main_process():
        prepare_shards(
            load_corpus(config),
            tokenizer,
            shards_dir,
            validation=load_validation(config),
            val_fraction=config.data.val_fraction or 0.0,
            progress=config.train.progress,
            workers=config.data.workers,
            seed=config.train.seed,
            overwrite=overwrite,
        )
    barrier()
    train = ShardSet(shards_dir, split="train", tokenizer=tokenizer)
    val = ShardSet(shards_dir, split="val", tokenizer=tokenizer)
    return train, val


def check_positions(config: RunConfig, objective: Any, model_config: ModelConfig) -> None:
    """Refuse sequences longer than a model with a position table can read."""
    if model_config.position not in ("learned", "sinusoidal"):
        return  # relative and rotary positions have no table
    seq_len = config.data.seq_len
    lengths = {"data.seq_len": seq_len}
    target = objective.target_length(seq_len)
    if target is not None:
        lengths["the decoder length"] = target
    for what, length in lengths.items():
        if length > model_config.max_positions:
            raise ConfigError(
                f"{what} ({length}) is longer than the model's positions "
                f"(model.max_positions = {model_config.max_positions})"
            )


def check_sampling(
    config: RunConfig, objective: Any, model_config: ModelConfig, tokenizer: tokenizers.Tokenizer
) -> None:
    """Refuse, before step 1, an evaluation-time sample that cannot fit the model: the
    prompt's tokens (at least one) plus ``train.sample_tokens`` new ones must fit a model
    with a position table."""
    train = config.train
    if not objective.generative or train.sample_tokens <= 0:
        return
    if model_config.position not in ("learned", "sinusoidal"):
        return  # relative and rotary positions have no table
    prompt = train.sample_prompt
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids if prompt else []
    room = model_config.max_positions - max(len(ids), 1)
    if train.sample_tokens > room:
        raise ConfigError(
            f"train.sample_tokens ({train.sample_tokens}) after the sample prompt's "
            f"{max(len(ids), 1)} tokens is longer than the model's positions "
            f"(model.max_positions = {model_config.max_positions}): set it to at most {room}, "
            "or 0 for no samples"
        )


def set_aside_newer_checkpoints(run_dir: Path, resume_from: Path, force: bool) -> None:
    """Resuming from an older checkpoint starts a new branch: the run's newer checkpoints
    are refused (``force=False``) or moved to ``checkpoints/abandoned-<time>/``."""
    step = int(STEP_DIR.match(resume_from.name).group(1))
    newer = [p for p in list_checkpoints(run_dir) if int(STEP_DIR.match(p.name).group(1)) > step]
    if not newer:
        return
    names = ", ".join(p.name for p in newer)
    if not force:
        raise TriformError(
            f"{run_dir} has checkpoints newer than step {step} ({names}); resuming from it "
            "would mix two branches: add --force to move them aside"
        )
    aside = run_dir / CHECKPOINTS / f"abandoned-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir(parents=True, exist_ok=True)
    for path in newer:
        os.replace(path, aside / path.name)
    print(f"moved {names} to {aside}")
