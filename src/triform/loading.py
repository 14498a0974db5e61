"""The one loader every command uses: a model (and its tokenizer) from whatever a folder or
source is —

- a triform run folder (its latest checkpoint), model folder or fine-tuned model folder
  (:mod:`triform.runs`);
- a HuggingFace checkpoint folder (:mod:`triform.interop.hf`);
- a LoRA run's model folder (``adapters.json`` + ``adapters.safetensors``): its base loaded
  again, checked against the SHA-256 recorded when the adapters were trained, and the
  adapters merged into it, so that every reader gets a plain model;
- as a source string (:func:`load_source`, what ``model.source`` of a fine-tuning run names):
  any of those folders, or ``preset:<name>`` (a new model of that preset, fitted to a
  tokenizer).

It sits above both :mod:`triform.runs` and :mod:`triform.interop.hf`, so neither knows the
other: ``generate``, ``features``, ``evaluate``, ``attention``, ``convert``, fine-tuning
bodies and distillation teachers all read a model through it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import tokenizers
import torch
from safetensors.torch import load_file
from torch import nn

from triform import presets
from triform.config import ModelConfig
from triform.errors import ConfigError, TriformError
from triform.interop import hf
from triform.models import TransformerModel, build_model
from triform.nn.lora import LoRAConfig, apply_lora, merge_lora
from triform.runs import (
    ADAPTERS_JSON,
    HF_CONFIG,
    MODEL_JSON,
    TOKENIZER_JSON,
    alias_groups,
    check_finite,
    read_json,
    read_model_config,
    read_run_model,
    read_run_model_config,
    read_tokenizer,
)
from triform.tokenizers import fit_to_tokenizer, load_tokenizer

ADAPTERS = "adapters.safetensors"
ADAPTERS_FORMAT = 1


def _is_dir(folder: Path) -> Path:
    if not folder.is_dir():
        raise TriformError(f"model folder not found: {folder}")
    return folder


def read_model_config_of(folder: str | Path, part: str | None = None) -> ModelConfig:
    """The config of the model :func:`read_model` would load from ``folder``, read without
    the weights (a HuggingFace folder: its ``config.json`` for the class it names)."""
    folder = _is_dir(Path(folder))
    if (folder / MODEL_JSON).is_file():
        return read_run_model_config(folder, part)
    if (folder / HF_CONFIG).is_file():
        hf_config = hf.read_config(folder)
        architectures = hf_config.get("architectures") or []
        if architectures:
            return hf.config_from_hf(hf_config, architectures[0])
    return read_model(folder, part).config  # the class follows from the weights, or an error


def read_model(folder: str | Path, part: str | None = None) -> nn.Module:
    """The model (eval mode, on the CPU) of a run folder (its latest checkpoint), a model
    folder, a LoRA run's model folder or a HuggingFace checkpoint folder. ``part`` picks one
    model of a run that trained several (ELECTRA: ``"discriminator"``, the default, or
    ``"generator"``)."""
    folder = _is_dir(Path(folder))
    if is_adapter_folder(folder):  # LoRA adapters: their base, merged with them
        read_run_model_config(folder, part)  # refuses a part other than the body
        return check_finite(read_adapted_body(folder), folder)
    if (folder / MODEL_JSON).is_file():
        return read_run_model(folder, part)
    if (folder / HF_CONFIG).is_file():
        if part is not None:
            raise TriformError(f"{folder} is a HuggingFace checkpoint; it has no parts")
        return check_finite(hf.load(folder), folder)
    raise TriformError(
        f"{folder} is neither a triform run or model folder ({MODEL_JSON}) nor a "
        f"HuggingFace checkpoint folder ({HF_CONFIG})"
    )


def load_model(
    folder: str | Path, part: str | None = None, tokenizer: str | Path | None = None
) -> tuple[nn.Module, tokenizers.Tokenizer]:
    """:func:`read_model` and the folder's tokenizer (or the ``tokenizer.json`` at
    ``tokenizer``, used instead). A tokenizer with more tokens than the model's vocabulary
    is refused."""
    model = read_model(folder, part)
    tok = read_tokenizer(folder) if tokenizer is None else load_tokenizer(tokenizer)
    size = tok.get_vocab_size(with_added_tokens=True)
    if size > model.config.vocab_size:
        raise TriformError(
            f"the tokenizer has {size} tokens but the model only {model.config.vocab_size}"
        )
    return model, tok


def load_source(
    source: str, tokenizer: str | None = None, overrides: dict[str, Any] | None = None
) -> tuple[TransformerModel, tokenizers.Tokenizer]:
    """The model and tokenizer a source names: a folder :func:`load_model` reads (with
    ``tokenizer``, a ``tokenizer.json`` used instead of the folder's), or ``preset:<name>``:
    a new model of that preset (drawn from the global RNG) with ``overrides`` (ModelConfig
    fields), fitted to ``tokenizer`` (required then)."""
    if source.startswith("preset:"):
        if not tokenizer:
            raise ConfigError(f"{source} needs a tokenizer (model.tokenizer)")
        tok = load_tokenizer(tokenizer)
        config = presets.get(source.removeprefix("preset:"), **(overrides or {}))
        return build_model(fit_to_tokenizer(config, tok)), tok
    path = Path(source)
    if not path.is_dir():
        raise TriformError(
            f"model.source {source}: no such folder (expected a triform run folder, an HF "
            "checkpoint folder or preset:<name>)"
        )
    if tokenizer is None and not (path / TOKENIZER_JSON).is_file():
        raise TriformError(f"{path} has no tokenizer.json; set model.tokenizer")
    return load_model(path, tokenizer=tokenizer)  # a given tokenizer replaces the folder's


# --------------------------------------------------------------------------------------
# LoRA adapter folders
# --------------------------------------------------------------------------------------


def is_adapter_folder(folder: str | Path) -> bool:
    """Whether a fine-tuned model folder holds adapters (on a base model) instead of a model."""
    return (Path(folder) / ADAPTERS_JSON).is_file()


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's weights: every tensor's name, dtype, shape and bytes, in name
    order (tied tensors once). The same weights give the same hash whatever file they came
    from."""
    state = model.state_dict()
    for group in alias_groups(model, set(state)):
        for alias in group[1:]:
            state.pop(alias, None)
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # no copy
    return digest.hexdigest()


@dataclass
class BaseModel:
    """The base model adapters were trained on: how to load it again, and the hash of its
    weights as loaded (before the task grew any table)."""

    source: str
    tokenizer: str | None
    overrides: dict[str, Any]
    seed: int
    sha256: str
    relative_source: str | None = None
    """``source`` relative to the adapters' folder: where the base is looked for when
    ``source`` is gone (the base and the run moved together)."""
    relative_tokenizer: str | None = None
    """``tokenizer`` relative to the adapters' folder, looked for the same way."""

    @classmethod
    def of(
        cls,
        source: str,
        tokenizer: str | None,
        overrides: dict[str, Any],
        body: TransformerModel,
        seed: int,
    ) -> BaseModel:
        """The base at ``source`` (see :func:`load_source`), loaded as ``body`` (a preset
        drawn from ``seed``); paths are kept absolute."""
        if not source.startswith("preset:"):
            source = str(Path(source).resolve())
        tokenizer = str(Path(tokenizer).resolve()) if tokenizer else None
        return cls(source, tokenizer, dict(overrides), seed, weights_sha256(body))

    def placed(self, folder: Path) -> BaseModel:
        """This base as the adapters in ``folder`` record it: with its paths relative to
        ``folder`` too."""
        return replace(
            self,
            relative_source=_relative(self.source, folder),
            relative_tokenizer=_relative(self.tokenizer, folder),
        )

    def load(self, folder: Path) -> TransformerModel:
        """The base model, checked against its hash, from where it was or, when it is gone,
        from the same place relative to the adapters' ``folder``."""
        source = _found(self.source, self.relative_source, folder) or self.source
        tokenizer = _found(self.tokenizer, self.relative_tokenizer, folder)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)  # a preset base is drawn as the run drew it
                body, _ = load_source(source, tokenizer, self.overrides)
        except TriformError as err:
            moved = "" if source.startswith("preset:") else (
                f" (if it moved, set \"source\" in {folder / ADAPTERS_JSON} to where it is now:"
                " its weights' SHA-256 is checked)"
            )  # fmt: skip
            raise TriformError(
                f"{folder}: cannot load the base of its adapters: {err}{moved}"
            ) from None
        found = weights_sha256(body)
        if found != self.sha256:
            raise TriformError(
                f"{folder}: its adapters were trained on {self.source} with weights sha256 "
                f"{self.sha256[:12]}, but it now holds other weights (sha256 {found[:12]})"
            )
        return body


def _relative(path: str | None, folder: Path) -> str | None:
    """``path`` relative to ``folder`` (None for no path or a preset)."""
    if path is None or path.startswith("preset:"):
        return None
    return os.path.relpath(Path(path).resolve(), Path(folder).resolve())


def _found(path: str | None, relative: str | None, folder: Path) -> str | None:
    """``path`` if it is there (or a preset), else ``relative`` to ``folder`` if that is
    there, else ``path`` (whose absence the loader names)."""
    if path is None or path.startswith("preset:") or Path(path).exists() or relative is None:
        return path
    moved = Path(folder) / relative
    return str(moved.resolve()) if moved.exists() else path


@dataclass
class AdapterSpec:
    """``adapters.json``: the LoRA settings and the base model."""

    lora: LoRAConfig
    base: BaseModel

    @classmethod
    def read(cls, folder: Path) -> AdapterSpec:
        data = read_json(folder / ADAPTERS_JSON)
        if (
            not isinstance(data, dict)
            or data.get("format") != ADAPTERS_FORMAT
            or data.get("kind") != "lora"
        ):
            raise TriformError(f"{folder / ADAPTERS_JSON}: not a LoRA adapter description")
        try:
            return cls(LoRAConfig(**data["lora"]), BaseModel(**data["base"]))
        except (KeyError, TypeError, ConfigError) as err:
            raise TriformError(f"{folder / ADAPTERS_JSON}: malformed: {err}") from None


def read_adapter_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an adapter folder (``body.*`` and ``head.*``)."""
    path = Path(folder) / ADAPTERS
    if not path.is_file():
        raise TriformError(f"{folder} has {ADAPTERS_JSON} but no {ADAPTERS}")
    return load_file(str(path))


def read_adapted_body(folder: str | Path) -> TransformerModel:
    """The fine-tuned body of an adapter folder (eval mode, on the CPU): its base loaded
    again and checked against the recorded hash, the adapters (and any table the task grew)
    loaded, and merged into the weights: a plain model with the base's structure."""
    folder = Path(folder)
    spec = AdapterSpec.read(folder)
    base = spec.base.load(folder)
    config = read_model_config(folder)  # the fine-tuned body's: the base's, or a grown vocabulary
    body = base if base.config.to_dict() == config.to_dict() else build_model(config)
    apply_lora(body, spec.lora)
    expected = body.state_dict()
    stored = {
        name.removeprefix("body."): tensor
        for name, tensor in read_adapter_weights(folder).items()
        if name.startswith("body.")
    }
    state = {k: v for k, v in base.state_dict().items() if k not in stored}
    state.update(stored)
    for group in alias_groups(body, set(expected)):  # a grown tied table is stored once
        present = [state[k] for k in group if k in state and state[k].shape == expected[k].shape]
        for key in group:
            if present:
                state[key] = present[0]
    for key, tensor in expected.items():
        if key not in state:
            raise TriformError(f"{folder}: the adapters and their base have no {key!r}")
        if state[key].shape != tensor.shape:
            raise TriformError(
                f"{folder}: {key!r} has shape {list(state[key].shape)} in the adapters or base, "
                f"{list(tensor.shape)} in the model"
            )
    unknown = sorted(set(stored) - set(expected))
    if unknown:
        raise TriformError(f"{folder / ADAPTERS}: unexpected key {'body.' + unknown[0]!r}")
    body.load_state_dict({k: state[k] for k in expected}, strict=True)
    merge_lora(body)
    body.requires_grad_(True)  # as any loaded model
    return body.eval()
