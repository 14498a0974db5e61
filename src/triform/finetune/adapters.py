"""Parameter-efficient fine-tuning: what of the model trains, and folders of adapters.

By default every parameter trains. Three keys train less:

- ``train.freeze = "body"``: only the new head trains; the body keeps its weights.
- ``train.freeze_layers = N``: the embeddings (token, segment and position tables, T5's
  relative position bias; a tied output projection with its table) and the lowest N blocks
  of every stack keep theirs; the blocks above, the final norm, the pooler and the head
  train.
- ``[lora]``: every weight of the body is frozen and LoRA adapters
  (:mod:`triform.nn.lora`) on its linears train with the head.

Frozen parameters have ``requires_grad=False``: they get no gradient, no optimizer state and
no gradient reduction under DDP.

A LoRA run's model folders (``best/``, ``final/``) hold the adapters instead of the model:
``adapters.safetensors`` (the adapters, the head, and any body table the task grew, such as
the GPT kinds' new tokens) and ``adapters.json`` (the LoRA settings and the base model: its
source, tokenizer, overrides, the seed a preset base was drawn with, and the SHA-256 of its
weights as loaded), beside the usual ``finetune.json``, ``model.json``, ``tokenizer.json``
and ``labels.json``. :func:`read_adapted_body` loads the base again, checks its hash (a base
that changed since is a one-line error), adds the adapters and merges them into the weights,
so that everything that reads a fine-tuned folder (``triform predict``, ``generate``,
``features``, ``convert --to hf``) gets a plain model.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from triform.errors import ConfigError, TriformError
from triform.finetune.body import load_body
from triform.finetune.config import FinetuneConfig, ModelSection
from triform.finetune.tasks import FinetuneModel
from triform.models import TransformerModel, build_model
from triform.nn.embeddings import Embeddings
from triform.nn.lora import LoRAConfig, apply_lora, merge_lora
from triform.nn.positions import RelativePositionBias
from triform.nn.stack import Stack
from triform.runs import (
    ADAPTERS_JSON,
    alias_groups,
    load_weights,
    read_json,
    read_model_config,
    write_json,
    write_weights,
)

ADAPTERS = "adapters.safetensors"
FORMAT = 1


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

    @classmethod
    def of(cls, section: ModelSection, body: TransformerModel, seed: int) -> BaseModel:
        """The base ``section`` describes, loaded as ``body`` (a preset drawn from ``seed``);
        paths are kept absolute."""
        source = section.source
        if not source.startswith("preset:"):
            source = str(Path(source).resolve())
        tokenizer = str(Path(section.tokenizer).resolve()) if section.tokenizer else None
        return cls(source, tokenizer, dict(section.overrides), seed, weights_sha256(body))

    def load(self, folder: Path) -> TransformerModel:
        """The base model, checked against its hash; ``folder`` names the adapters in
        errors."""
        section = ModelSection(self.source, self.tokenizer, dict(self.overrides))
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)  # a preset base is drawn as the run drew it
                body, _ = load_body(section)
        except TriformError as err:
            raise TriformError(f"{folder}: cannot load the base of its adapters: {err}") from None
        found = weights_sha256(body)
        if found != self.sha256:
            raise TriformError(
                f"{folder}: its adapters were trained on {self.source} with weights sha256 "
                f"{self.sha256[:12]}, but it now holds other weights (sha256 {found[:12]})"
            )
        return body


class Adaptation:
    """What of a fine-tuned model trains (see the module docstring), set up around the
    task's preparation of the body: made from the body as loaded (the base, whose hash a
    LoRA run records), then :meth:`apply`-ed to the model with its head."""

    def __init__(self, config: FinetuneConfig, body: TransformerModel) -> None:
        train = config.train
        self.freeze, self.freeze_layers, self.lora = train.freeze, train.freeze_layers, config.lora
        self.base: BaseModel | None = None
        self.base_shapes: dict[str, tuple[int, ...]] = {}
        if self.lora is not None:
            self.base = BaseModel.of(config.model, body, train.seed)
            self.base_shapes = {k: tuple(v.shape) for k, v in body.state_dict().items()}
        self.trainable = self.total = 0

    def apply(self, model: FinetuneModel) -> None:
        """Freeze what does not train and add the LoRA adapters, in place; a setting the
        model cannot take is a :class:`ConfigError`."""
        body = model.body
        if self.lora is not None:
            apply_lora(body, self.lora)
        elif self.freeze == "body":
            body.requires_grad_(False)
        elif self.freeze_layers:
            freeze_lower(body, self.freeze_layers)
        params = {id(p): p for p in model.parameters()}.values()
        self.total = sum(p.numel() for p in params)
        self.trainable = sum(p.numel() for p in params if p.requires_grad)
        if not self.trainable:
            raise ConfigError(
                f'train.freeze = "{self.freeze}" leaves nothing to train: the task has no head '
                "of its own (the body's LM head writes its output)"
            )

    def describe(self) -> str:
        """What trains, for the run's banner ("" when everything does)."""
        if self.lora is not None:
            what = f"LoRA r={self.lora.r} on {', '.join(self.lora.targets)}"
        elif self.freeze == "body":
            what = "the body frozen"
        elif self.freeze_layers:
            what = f"the embeddings and {self.freeze_layers} lowest blocks frozen"
        else:
            return ""
        share = 100 * self.trainable / max(self.total, 1)
        return f"; {what}: {self.trainable:,} of {self.total:,} parameters train ({share:.2f}%)"

    # -- model folders ---------------------------------------------------------------------
    @property
    def saves_adapters(self) -> bool:
        """Whether the model folders hold adapters (LoRA) rather than the whole model."""
        return self.lora is not None

    def write(self, folder: Path, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Write the adapters part of ``state`` (the model's state dict, tied tensors once)
        and ``adapters.json`` into ``folder``: the head, every trainable tensor, and every
        body tensor the base does not have in that shape."""
        assert self.lora is not None and self.base is not None
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        kept = {
            name: tensor
            for name, tensor in state.items()
            if name.startswith("head.")
            or name in trainable
            or self.base_shapes.get(name.removeprefix("body.")) != tuple(tensor.shape)
        }
        write_weights(kept, folder / ADAPTERS)
        spec = {"format": FORMAT, "kind": "lora", "lora": asdict(self.lora),
                "base": asdict(self.base)}  # fmt: skip
        write_json(folder / ADAPTERS_JSON, spec)

    def load_saved(self, model: nn.Module, folder: Path) -> None:
        """Load a model folder this run wrote into its (unmerged) model."""
        if not self.saves_adapters:
            load_weights(model, folder / "model.safetensors")
            return
        stored = load_file(str(folder / ADAPTERS))
        unexpected = model.load_state_dict(stored, strict=False).unexpected_keys
        if unexpected:
            raise TriformError(f"{folder / ADAPTERS}: unexpected key {unexpected[0]!r}")


def freeze_lower(body: TransformerModel, layers: int) -> None:
    """Freeze the embeddings and the lowest ``layers`` blocks of every stack of ``body``."""
    for module in body.modules():
        if isinstance(module, (Embeddings, RelativePositionBias)):
            module.requires_grad_(False)
        if not isinstance(module, Stack):
            continue
        if module.config.share_layers:
            raise ConfigError(
                "train.freeze_layers needs distinct layers, but this model shares one block "
                f'across its {module.num_layers} layers (ALBERT); use train.freeze = "body"'
            )
        if layers > module.num_layers:
            raise ConfigError(
                f"train.freeze_layers = {layers}, but the body has a stack of "
                f"{module.num_layers} layers"
            )
        for block in module.layers[:layers]:
            block.requires_grad_(False)


# -- reading an adapter folder ---------------------------------------------------------------
@dataclass
class AdapterSpec:
    """``adapters.json``: the LoRA settings and the base model."""

    lora: LoRAConfig
    base: BaseModel

    @classmethod
    def read(cls, folder: Path) -> AdapterSpec:
        data = read_json(folder / ADAPTERS_JSON)
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("kind") != "lora":
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


def load_adapted_head(model: FinetuneModel, folder: str | Path) -> None:
    """Load the head of an adapter folder into ``model.head``."""
    stored = {
        name.removeprefix("head."): tensor
        for name, tensor in read_adapter_weights(folder).items()
        if name.startswith("head.")
    }
    try:
        model.head.load_state_dict(stored, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise TriformError(f"{Path(folder) / ADAPTERS}: the head does not fit: {first}") from None
