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

from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from triform.errors import ConfigError, TriformError
from triform.finetune.config import FinetuneConfig
from triform.finetune.tasks import FinetuneModel
from triform.loading import ADAPTERS, ADAPTERS_FORMAT, BaseModel, read_adapter_weights
from triform.models import TransformerModel
from triform.nn.embeddings import Embeddings
from triform.nn.lora import apply_lora
from triform.nn.positions import RelativePositionBias
from triform.nn.stack import Stack
from triform.runs import (
    ADAPTERS_JSON,
    load_weights,
    write_json,
    write_weights,
)


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
            model = config.model
            self.base = BaseModel.of(
                model.source, model.tokenizer, model.overrides, body, train.seed
            )
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
        spec = {"format": ADAPTERS_FORMAT, "kind": "lora", "lora": asdict(self.lora),
                "base": asdict(self.base.placed(folder))}  # fmt: skip
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
