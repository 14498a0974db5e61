"""The run-folder format: reading and writing triform's folders (the one loader every command
uses, which also reads HuggingFace folders, is :mod:`triform.loading`, above this).

A folder triform reads a model from is one of:

- a **run folder** (``triform pretrain``): ``run.json`` (the resolved run config),
  ``model.json`` (the config of the model used for inference), ``tokenizer.json``,
  ``checkpoints/step-000123/`` (``model.safetensors`` + trainer state, see
  :mod:`triform.train.checkpoint`), ``metrics.jsonl``, ``data/`` (shards) and, when the trained
  module holds several models (ELECTRA's generator and discriminator), ``parts.json``;
- a **model folder** (``triform convert --to triform``): ``model.json`` +
  ``model.safetensors`` + ``tokenizer.json``;
- a **fine-tuned model folder** (``best/`` or ``final/`` of ``triform finetune``): the same
  plus ``finetune.json``; its weights are ``body.*`` and ``head.*``, and the loader here reads
  the body (:func:`triform.finetune.load_finetuned` reads both). A LoRA run's folder holds
  ``adapters.json`` and ``adapters.safetensors`` instead of the weights: the loader reads its
  base and merges the adapters into it (:mod:`triform.finetune.adapters`);
- a **HuggingFace checkpoint folder**: ``config.json`` + weights (+ ``tokenizer.json``).

``parts.json`` maps each part's name to the prefix of its weights in the checkpoint, its
model config and the tied tensors it shares with other parts (stored once, under another
name); the first part listed is the one loaded by default.

Weights are safetensors files written atomically (temporary file, fsync, rename); tied
tensors are stored once under their first name; :func:`save_weights` and
:func:`load_weights` also take a wrapped or sharded model (gathering or scattering its
weights). Optimizer state and trainer state are :mod:`triform.train.checkpoint`'s.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import tokenizers
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)

from triform.config import ModelConfig
from triform.errors import TriformError
from triform.models import build_model
from triform.models.sizing import check_model_fits
from triform.outputs import (  # noqa: F401
    LOCK_FILE,
    TEMPORARY,
    RunLock,
    fsync,
    remove_stale_files,
)
from triform.runtime.distributed import is_fsdp, is_main_process, unwrap_model
from triform.tokenizers import load_tokenizer

RUN_JSON = "run.json"
FINETUNE_JSON = "finetune.json"
ADAPTERS_JSON = "adapters.json"
MODEL_JSON = "model.json"
PARTS_JSON = "parts.json"
TOKENIZER_JSON = "tokenizer.json"
HF_CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CHECKPOINTS = "checkpoints"
STATE_JSON = "trainer_state.json"
STEP_DIR = re.compile(r"^step-(\d+)$")


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------


def write_json(path: str | Path, value: Any) -> Path:
    """Write ``value`` as indented JSON, atomically (temporary file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(value, indent=2, default=str) + "\n", encoding="utf-8")
        fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``; a malformed file is a :class:`TriformError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TriformError(f"{path}: malformed JSON: {err}") from None
    except UnicodeDecodeError:
        raise TriformError(f"{path}: not UTF-8 text") from None


def read_model_config(folder: str | Path) -> ModelConfig:
    """The ``model.json`` of a run or model folder."""
    return ModelConfig.from_dict(read_json(Path(folder) / MODEL_JSON))


def read_tokenizer(folder: str | Path) -> tokenizers.Tokenizer:
    """The ``tokenizer.json`` of a folder."""
    path = Path(folder) / TOKENIZER_JSON
    if not path.is_file():
        raise TriformError(f"{folder} has no {TOKENIZER_JSON}")
    return load_tokenizer(path)


# --------------------------------------------------------------------------------------
# Checkpoint folders
# --------------------------------------------------------------------------------------


def step_dir_name(step: int) -> str:
    """``step-000123``."""
    return f"step-{step:06d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints of a run folder (or of its ``checkpoints`` folder), oldest
    first. Hidden temporary folders are never listed."""
    root = Path(run_dir)
    if root.name != CHECKPOINTS and (root / CHECKPOINTS).is_dir():
        root = root / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / STATE_JSON).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint folder with the highest step, or ``None`` if there is none."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A step folder from a step folder, a run folder or its ``checkpoints`` folder."""
    path = Path(path)
    if not path.exists():
        raise TriformError(f"no checkpoint at {path} (it does not exist)")
    if path.is_dir() and (path / WEIGHTS).is_file():
        return path
    found = latest_checkpoint(path) if path.is_dir() else None
    if found is None:
        raise TriformError(f"no checkpoint in {path}")
    return found


def weights_file(path: str | Path) -> Path:
    """The safetensors file of ``path``: the file itself, a model folder's, or the latest
    checkpoint's of a run folder."""
    path = Path(path)
    if path.is_dir():
        return resolve_checkpoint(path) / WEIGHTS
    if not path.is_file():
        raise TriformError(f"no weights at {path} (it does not exist)")
    return path


# --------------------------------------------------------------------------------------
# Owning a run folder
# --------------------------------------------------------------------------------------


# The lock (RunLock), the kinds of folders and the clean-up of temporaries
# (remove_stale_files) live in triform.outputs, the rules every command that writes
# follows; they are imported here too, where run folders have always named them.


# --------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------


def alias_groups(model: nn.Module, keys: set[str]) -> list[list[str]]:
    """State-dict names that refer to one tensor (tied weights), each group sorted."""
    groups: dict[int, list[str]] = defaultdict(list)
    named = [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]
    for name, tensor in named:
        if name in keys and name not in groups[id(tensor)]:
            groups[id(tensor)].append(name)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def unique_state_dict(model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict:
    """``state`` (default: ``model.state_dict()``) with every tied tensor once, under the
    first of its names, detached and contiguous."""
    state = dict(model.state_dict() if state is None else state)
    for group in alias_groups(model, set(state)):
        for alias in group[1:]:
            state.pop(alias, None)
    return {k: v.detach().contiguous() for k, v in state.items()}


def write_weights(
    state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Write a state dict to a safetensors file, atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        save_file(state, str(tmp), metadata={"format": "pt", **(metadata or {})})
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors creates its files 0600
        fsync(tmp)
        os.replace(tmp, path)
        fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The full (unsharded) state dict of a plain, DDP-wrapped or FSDP2-sharded model on
    the main process, tied tensors once; ``None`` on other ranks. Collective under FSDP2."""
    model = unwrap_model(model)
    if is_fsdp(model):
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(model, options=options)
    else:
        state = model.state_dict()
    if not is_main_process():
        return None
    return unique_state_dict(model, state)


def save_weights(
    model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Write ``model``'s weights to a safetensors file, atomically, tied tensors once. A
    wrapped or sharded model too: under FSDP2 call it on every rank; rank 0 writes."""
    state = full_state_dict(model)
    if state is not None:
        write_weights(state, path, metadata)
    return Path(path)


def stored_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file (nothing loaded)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises several types for a damaged file
        raise TriformError(f"cannot read weights {path}: {err}") from None


def check_fits(
    model: nn.Module, path: Path, prefix: str = "", shared: dict[str, str] | None = None
) -> dict[str, str]:
    """Raise :class:`TriformError` naming the first key of ``path`` that does not fit
    ``model``; return ``{model key: stored name}`` for every key.

    ``prefix`` selects one part of a checkpoint (``"discriminator."``): stored keys outside it
    are ignored. ``shared`` maps stored names of that part tied to a tensor stored under
    another name (see ``parts.json``).
    """
    stored = stored_shapes(path)
    shared = shared or {}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    names = {}
    for key in expected:
        name = prefix + key
        names[key] = name if name in stored else shared.get(name, name)
    for group in alias_groups(model, set(expected)):  # tied inside the model: stored once
        present = [names[k] for k in group if names[k] in stored]
        for key in group:
            if present and names[key] not in stored:
                names[key] = present[0]
    where = f"checkpoint {path} does not fit this {type(model).__name__}"
    missing = [k for k in expected if names[k] not in stored]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise TriformError(f"{where}: missing key {prefix + missing[0]!r}{more}")
    for key, shape in expected.items():
        got = stored[names[key]]
        if got != shape:
            raise TriformError(
                f"{where}: {prefix + key!r} has shape {list(got)} in the checkpoint, "
                f"{list(shape)} in the model"
            )
    used = set(names.values()) | set(shared.values())
    unexpected = [k for k in stored if k.startswith(prefix) and k not in used]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise TriformError(f"{where}: unexpected key {unexpected[0]!r}{more}")
    return names


def read_weights(
    model: nn.Module, path: str | Path, prefix: str = "", shared: dict[str, str] | None = None
) -> dict[str, torch.Tensor]:
    """The state dict for ``model`` from a safetensors file (on the CPU), checked to fit
    first (see :func:`check_fits`)."""
    path = weights_file(path)
    names = check_fits(model, path, prefix, shared)
    stored = load_file(str(path), device="cpu")
    return {key: stored[name] for key, name in names.items()}


def load_weights(
    model: nn.Module, path: str | Path, prefix: str = "", shared: dict[str, str] | None = None
) -> Path:
    """Load safetensors weights into ``model`` (plain, DDP-wrapped or FSDP2-sharded) in
    place, on any device and dtype.

    ``path`` is a ``.safetensors`` file, a model folder or a run folder (its latest
    checkpoint). Weights of another model raise :class:`TriformError` naming the first key
    that does not fit, before anything is changed. Returns the file read.
    """
    file = weights_file(path)
    model = unwrap_model(model)
    state = read_weights(model, file, prefix, shared)
    if is_fsdp(model):
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
    else:
        model.load_state_dict(state, strict=True)
    return file


# --------------------------------------------------------------------------------------
# Parts of a trained module (ELECTRA: generator and discriminator)
# --------------------------------------------------------------------------------------


def parts_table(module: nn.Module) -> dict[str, dict[str, Any]] | None:
    """``parts.json`` for a trained module that holds several models (``module.parts``:
    name -> attribute, the default first), else ``None``."""
    parts = getattr(module, "parts", None)
    if not parts:
        return None
    state = module.state_dict()
    groups = alias_groups(module, set(state))
    table = {}
    for name, attribute in parts.items():
        prefix = f"{attribute}."
        shared = {
            alias: group[0]
            for group in groups
            for alias in group[1:]
            if alias.startswith(prefix) and not group[0].startswith(prefix)
        }
        config = getattr(module, attribute).config
        table[name] = {"prefix": prefix, "config": config.to_dict(), "shared": shared}
    return table


def write_run_metadata(
    out_dir: str | Path, run: dict[str, Any], model_config: ModelConfig, module: nn.Module
) -> None:
    """``run.json``, ``model.json`` (and ``parts.json``) of a run folder, each atomically."""
    out_dir = Path(out_dir)
    write_json(out_dir / RUN_JSON, run)
    write_json(out_dir / MODEL_JSON, model_config.to_dict())
    parts = parts_table(module)
    if parts is not None:
        write_json(out_dir / PARTS_JSON, parts)


def read_run_init(folder: str | Path) -> dict[str, Any] | None:
    """Where a pretraining run's weights started: ``run.json``'s ``init`` record (the
    checkpoint's path, format, HF class, the SHA-256 of its weights, what was loaded, new and
    left out: see :mod:`triform.train.init`), or ``None`` for a run from random
    initialisation (or a folder without ``run.json``)."""
    path = Path(folder) / RUN_JSON
    if not path.is_file():
        return None
    run = read_json(path)
    record = run.get("init") if isinstance(run, dict) else None
    return record if isinstance(record, dict) else None


# --------------------------------------------------------------------------------------
# Reading a model from a triform folder (any folder: triform.loading)
# --------------------------------------------------------------------------------------


def _run_part(folder: Path, part: str | None) -> tuple[ModelConfig, str, dict[str, str] | None]:
    """(config, weight prefix, shared names) of the part of a run folder to load."""
    if (folder / FINETUNE_JSON).is_file():  # a fine-tuned model: its body (weights body.*)
        if part not in (None, "body"):
            raise TriformError(f"{folder} is a fine-tuned model; its part is 'body'")
        return read_model_config(folder), "body.", None
    parts_file = folder / PARTS_JSON
    if not parts_file.is_file():
        if part is not None:
            raise TriformError(f"{folder} holds one model; it has no part {part!r}")
        return read_model_config(folder), "", None
    parts = read_json(parts_file)
    name = part or next(iter(parts))
    if name not in parts:
        raise TriformError(f"{folder} has no part {name!r}; it has {', '.join(parts)}")
    entry = parts[name]
    return ModelConfig.from_dict(entry["config"]), entry["prefix"], entry.get("shared", {})


def read_run_model_config(folder: str | Path, part: str | None = None) -> ModelConfig:
    """The config of the model :func:`read_run_model` would load from a triform folder."""
    return _run_part(Path(folder), part)[0]


def read_run_model(folder: str | Path, part: str | None = None) -> nn.Module:
    """The model (eval mode, on the CPU) of a triform run folder (its latest checkpoint) or
    model folder; ``part`` picks one model of a run that trained several (ELECTRA:
    ``"discriminator"``, the default, or ``"generator"``). Any folder, HuggingFace ones
    included: :func:`triform.loading.read_model`."""
    folder = Path(folder)
    config, prefix, shared = _run_part(folder, part)
    if (folder / CHECKPOINTS).is_dir() and latest_checkpoint(folder) is None:
        raise TriformError(f"{folder} has no checkpoint yet")
    check_model_fits(config)
    model = build_model(config)
    load_weights(model, folder, prefix, shared)
    return check_finite(model.eval(), folder)


def check_finite(model: nn.Module, source: str | Path) -> nn.Module:
    """``model``, or a :class:`TriformError` when a weight is NaN or infinite (a diverged run
    saved by an older version, a damaged file): such a model would answer silently wrong."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise TriformError(f"{source}: weight {name!r} holds NaN or infinite values")
    return model
