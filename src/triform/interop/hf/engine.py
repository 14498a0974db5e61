"""The generic engine: applies a family's tables in both directions, to configs
(:func:`config_from_hf`, :func:`config_to_hf`) and to state dicts (:func:`build`,
:func:`export_state`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from triform.config import ModelConfig
from triform.errors import TriformError
from triform.interop.hf.families import FAMILIES
from triform.interop.hf.rules import (
    UNSUPPORTED,
    Compiled,
    Family,
    Match,
    StateDict,
    apply_codec,
)
from triform.models import TransformerModel, build_model
from triform.presets import PRESETS


# =========================================================================================
# Configs
# =========================================================================================
def family_named(model_type: Any) -> Family:
    if model_type not in FAMILIES:
        raise TriformError(
            f"unsupported HuggingFace model_type {model_type!r} (supported: {', '.join(FAMILIES)})"
        )
    return FAMILIES[model_type]


def family_of(config: ModelConfig) -> Family:
    for family in FAMILIES.values():
        if family.triform_family == config.family:
            return family
    supported = ", ".join(f.triform_family for f in FAMILIES.values())
    raise TriformError(
        f"triform family {config.family!r} has no HuggingFace equivalent (supported: {supported})"
    )


def _architecture_name(family: Family, name: Any) -> str:
    if name not in family.architectures:
        body = list(family.architectures)[-1]  # base models come last
        raise TriformError(
            f"unsupported HuggingFace class {name!r} for {family.model_type} "
            f"(supported: {', '.join(family.architectures)}; "
            f"hf.load(..., architecture={body!r}) loads the body alone)"
        )
    return name


def config_from_hf(hf: Mapping[str, Any], architecture: str) -> ModelConfig:
    """The :class:`ModelConfig` of an HF config dict (``config.json``) for class
    ``architecture``."""
    family = family_named(hf.get("model_type"))
    arch = family.architectures[_architecture_name(family, architecture)]
    values: dict[str, Any] = {}
    for f in family.fields:
        raw = hf.get(f.hf, f.default)
        value = raw if f.codec is None else apply_codec(f.codec.inward, raw)
        if value is UNSUPPORTED:
            raise TriformError(f"{family.model_type} config: {f.hf}={raw!r} is not supported")
        values[f.ours] = value
    values.update(arch.heads)
    family.adjust_in(hf, values)
    return ModelConfig.from_dict({**PRESETS[family.preset], **values})


def config_to_hf(config: ModelConfig, architecture: str) -> dict[str, Any]:
    """The HF config dict (``config.json``) of ``config`` as class ``architecture``; raises
    :class:`TriformError` naming the first setting HF cannot express."""
    family = family_of(config)
    _architecture_name(family, architecture)
    hf: dict[str, Any] = {"model_type": family.model_type, "architectures": [architecture]}
    for f in family.fields:
        value = getattr(config, f.ours)
        hf_value = value if f.codec is None else apply_codec(f.codec.outward, value)
        if hf_value is UNSUPPORTED:
            raise TriformError(
                f"model.{f.ours}={value!r} has no HuggingFace {family.model_type} equivalent"
            )
        hf[f.hf] = hf_value
    family.adjust_out(config, hf)
    ours, back = _architectural(config), _architectural(config_from_hf(hf, architecture))
    for key, value in ours.items():
        if back.get(key) != value:
            raise TriformError(
                f"model.{key}={value!r} cannot be expressed as a HuggingFace {architecture} "
                f"(it would become {back.get(key)!r})"
            )
    return hf


# Settings that do not change what a trained model computes.
_NOT_ARCHITECTURAL = (
    "family",
    "dropout",
    "attention_dropout",
    "init_std",
    "scaled_residual_init",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "decoder_start_token_id",
)


def _architectural(config: ModelConfig) -> dict[str, Any]:
    """The settings of ``config`` that change its outputs, with defaults made explicit and
    settings that are inert for this config (local_window of a dense model, ...) left out."""
    d = {k: v for k, v in config.to_dict().items() if k not in _NOT_ARCHITECTURAL}
    d.update(embedding_size=config.embed_size, head_dim=config.head_size)
    d["attention_pattern"] = sorted(set(config.attention_pattern))
    if config.positions_from_padding:
        d["pad_token_id"] = config.pad_token_id
    if config.form == "encoder-decoder":
        d["num_decoder_layers"] = config.decoder_layers
    else:
        del d["num_decoder_layers"], d["tie_encoder_decoder_embeddings"]
    if config.form != "encoder":
        del d["encoder_head"], d["pair_head"], d["pooler"]
    if "local" not in config.attention_pattern:
        del d["local_window"]
    if config.position != "relative":
        del d["relative_buckets"], d["relative_max_distance"]
    if config.position != "rotary":
        del d["rotary_fraction"], d["rotary_base"]
    if config.position not in ("learned", "sinusoidal"):
        del d["max_positions"], d["position_offset"], d["positions_from_padding"]
    if config.form == "encoder" and config.encoder_head != "mlm":
        for key in ("tie_embeddings", "lm_head_bias", "lm_head_transform", "scale_tied_logits"):
            del d[key]
    return d


def _export_architecture(model: TransformerModel, family: Family) -> str:
    """The HF class to write: ``model.hf_architecture`` if the config still has its heads,
    else the first class whose head settings the config has."""
    name = getattr(model, "hf_architecture", None)
    if name in family.architectures and _fits(model.config, family, name):
        return name
    for name in family.architectures:
        if _fits(model.config, family, name):
            return name
    raise TriformError(f"no HuggingFace {family.model_type} class has this model's heads")


def _fits(config: ModelConfig, family: Family, name: str) -> bool:
    """Does ``config`` have the head settings HF class ``name`` implies?"""
    return all(getattr(config, k) == v for k, v in family.architectures[name].heads.items())


# =========================================================================================
# State dicts
# =========================================================================================
def _resolve(rules: list[Compiled], name: str) -> Match:
    """The HF names of triform tensor ``name`` (first matching rule)."""
    for compiled in rules:
        m = compiled.ours.fullmatch(name)
        if m is None:
            continue
        index, leaf = m.groupdict().get("i"), m["leaf"]
        rule = compiled.rule
        theirs = [_hf_name(t, index, leaf) for t in rule.theirs]
        return Match(theirs, [_hf_name(a, index, leaf) for a in rule.aliases], rule.kind, leaf)
    raise TriformError(f"triform parameter {name} has no HuggingFace equivalent")


def _hf_name(name: str, index: str | None, leaf: str | None) -> str:
    name = name if index is None else name.replace("{i}", index)
    return f"{name}.{leaf}" if leaf else name


def _to_hf_parts(match: Match, tensor: torch.Tensor) -> list[torch.Tensor]:
    """Triform tensor -> the HF tensors of ``match.theirs``, in order."""
    if match.kind == "conv" and match.leaf == "weight":
        return [tensor.t()]  # (out, in) -> Conv1D (in, out)
    if match.kind == "row":
        return [tensor.reshape(1, -1)]  # (n,) -> (1, n)
    return list(tensor.chunk(len(match.theirs), dim=0))


def _from_hf_parts(match: Match, parts: list[torch.Tensor]) -> torch.Tensor:
    """The HF tensors of ``match.theirs`` -> one triform tensor."""
    if match.kind == "conv" and match.leaf == "weight":
        return parts[0].t()
    if match.kind == "row":
        return parts[0].reshape(-1)
    return torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]


_LEGACY = ((".LayerNorm.gamma", ".LayerNorm.weight"), (".LayerNorm.beta", ".LayerNorm.bias"))


def _canonical(family: Family, state: Mapping[str, torch.Tensor]) -> StateDict:
    """Checkpoint keys as the rules spell them: body keys under the family prefix (base-model
    checkpoints leave it out) and TF-era ``LayerNorm.gamma/beta`` as ``weight/bias``."""
    out = {}
    for key, value in state.items():
        for old, new in _LEGACY:
            key = key[: -len(old)] + new if key.endswith(old) else key
        prefixed = f"{family.prefix}.{key}"
        if family.prefix and not family.knows(key) and family.knows(prefixed):
            key = prefixed
        out[key] = value
    return out


def _tied_groups(model: TransformerModel) -> list[tuple[torch.Tensor, list[str]]]:
    """Every distinct tensor of ``model`` with all its names (tied weights have several)."""
    groups: dict[int, tuple[torch.Tensor, list[str]]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), (tensor, []))[1].append(name)
    return list(groups.values())


def _untie(family: Family, model: TransformerModel, state: StateDict) -> TransformerModel:
    """``model`` (on meta) rebuilt with an untied LM head if the checkpoint holds different
    values for the head and the embedding (T5 v1.1, any tie_word_embeddings=false model)."""
    rules = family.rules(model.config)
    for _, names in _tied_groups(model):
        if "lm_head.decoder.weight" not in names or len(names) < 2:
            continue
        values = [state[n] for name in names for n in _resolve(rules, name).names if n in state]
        if any(not torch.equal(values[0], v) for v in values[1:]):
            return build_model(model.config.replace(tie_embeddings=False), device="meta")
    return model


def _fill(family: Family, model: TransformerModel, state: StateDict, copy: bool) -> set[str]:
    """Give every tensor of ``model`` (built on the meta device, so never initialised) its
    checkpoint value, keeping tied tensors tied. Returns the HF keys used; raises on a missing
    key or a shape mismatch. ``copy``: never share memory with ``state``."""
    rules = family.rules(model.config)
    used: set[str] = set()
    for tensor, names in _tied_groups(model):
        match = _resolve(rules, names[0])
        keys = _present(match, state, names[0])
        parts = [state[k].detach() for k in keys]
        for key, part, want in zip(keys, parts, _to_hf_parts(match, tensor), strict=True):
            if part.shape != want.shape:
                raise TriformError(
                    f"checkpoint tensor {key} has shape {tuple(part.shape)}, "
                    f"the config implies {tuple(want.shape)}"
                )
        value = _from_hf_parts(match, parts).to(device="cpu", dtype=torch.float32)
        value = value.clone(memory_format=torch.contiguous_format) if copy else value.contiguous()
        if isinstance(tensor, torch.nn.Parameter):
            value = torch.nn.Parameter(value, requires_grad=tensor.requires_grad)
        for name in names:
            owner, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(owner), leaf, value)
            used.update(k for k in _resolve(rules, name).names if k in state)
    return used


def _present(match: Match, state: StateDict, ours: str) -> list[str]:
    """The HF keys to read: all of ``match.theirs``, or else one alias."""
    if all(k in state for k in match.theirs):
        return match.theirs
    for alias in match.aliases:
        if alias in state:
            return [alias]
    missing = next(k for k in match.theirs if k not in state)
    raise TriformError(f"checkpoint lacks {missing} (needed for triform {ours})")


def _check_unexpected(
    family: Family, config: ModelConfig, state: StateDict, used: set[str]
) -> None:
    """Raise naming the first checkpoint key no rule of the family knows."""
    layers = max(config.num_layers, config.decoder_layers)
    unexpected = [
        key
        for key in state
        if key not in used and not family.ignores(key) and not family.knows(key, layers)
    ]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise TriformError(f"unexpected key {unexpected[0]} in the checkpoint{more}")


def build(
    hf_config: Mapping[str, Any],
    architecture: str,
    state: Mapping[str, torch.Tensor],
    copy: bool = False,
    heads: Mapping[str, Any] | None = None,
) -> TransformerModel:
    """A triform model holding checkpoint ``state`` of HF class ``architecture``; ``heads``
    overrides head settings the class implies (a task class's body has no pooler)."""
    family = family_named(hf_config.get("model_type"))
    config = config_from_hf(hf_config, architecture)
    if heads:
        config = config.replace(**heads)
    state = _canonical(family, state)
    model = build_model(config, device="meta")
    if config.tie_embeddings:
        model = _untie(family, model, state)
    used = _fill(family, model, state, copy)
    _check_unexpected(family, model.config, state, used)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:  # a module with a tensor that is not in the state dict (not an HF family)
        raise TriformError(f"triform tensor {left[0]} has no HuggingFace equivalent")
    model.hf_architecture = architecture
    return model


def export_state(
    model: TransformerModel, architecture: str | None = None
) -> tuple[dict[str, Any], StateDict]:
    """The HF config dict and HF state dict (names of the HF class) of a triform model, as
    class ``architecture`` (default: :func:`_export_architecture`'s choice)."""
    family = family_of(model.config)
    if architecture is None:
        architecture = _export_architecture(model, family)
    elif not _fits(model.config, family, _architecture_name(family, architecture)):
        raise TriformError(f"this model's heads do not make a HuggingFace {architecture}")
    hf_config = config_to_hf(model.config, architecture)
    rules = family.rules(model.config)
    state: StateDict = {}
    for tensor, names in _tied_groups(model):  # tied copies are written once, as HF does
        match = _resolve(rules, names[0])
        state.update(zip(match.theirs, _to_hf_parts(match, tensor.detach()), strict=True))
    if family.prefix and not family.architectures[architecture].prefixed:
        start = len(family.prefix) + 1
        state = {k[start:] if k.startswith(family.prefix + ".") else k: v for k, v in state.items()}
    return hf_config, state


# triform modules that are pretraining heads, not part of a body a task head sits on
PRETRAINING_HEADS = ("lm_head.", "pair_head.", "rtd_head.")


def export_body(model: TransformerModel, pooler: bool) -> tuple[dict[str, Any], StateDict]:
    """The HF config dict of ``model``'s base class and the HF state dict of its body (names
    under the family prefix, as a task-head class holds them): pretraining heads left out,
    and the pooler too unless ``pooler``."""
    family = family_of(model.config)
    base = list(family.architectures)[-1]  # base models come last
    body_config = model.config.replace(**family.architectures[base].heads)
    hf_config = config_to_hf(body_config, base)
    skip = PRETRAINING_HEADS if pooler else (*PRETRAINING_HEADS, "pooler.")
    rules = family.rules(model.config)
    state: StateDict = {}
    for tensor, names in _tied_groups(model):
        kept = [n for n in names if not n.startswith(skip)]
        if kept:
            match = _resolve(rules, kept[0])
            state.update(zip(match.theirs, _to_hf_parts(match, tensor.detach()), strict=True))
    return hf_config, state


def hf_name(config: ModelConfig, name: str) -> str:
    """The HF name (under the family prefix) of triform tensor ``name`` of a ``config`` model."""
    match = _resolve(family_of(config).rules(config), name)
    if len(match.theirs) != 1:
        raise TriformError(f"triform tensor {name} is split in HuggingFace checkpoints")
    return match.theirs[0]
