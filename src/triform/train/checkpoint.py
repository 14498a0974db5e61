"""Checkpoints: written atomically, weights as safetensors, nothing that loads pickled code.

A run folder holds ``checkpoints/step-000123/`` folders, each with

- ``model.safetensors``  the weights (tied tensors stored once, under their first name)
- ``optimizer.pt``       the optimizer state, keyed by parameter name (tensors and numbers)
- ``trainer.pt``         scheduler, RNG states (torch, CUDA, numpy, python), step, data
                         position and the caller's ``extra`` dict
- ``trainer_state.json`` the same step / data position / extra, for people

Under FSDP2 the training state is saved sharded instead: ``sharded/`` is a
``torch.distributed.checkpoint`` folder in which every rank writes its own shards of the
weights and the optimizer state (nothing is gathered on one rank), and ``model.safetensors``
is a full export of the weights alone, for ``generate``, ``convert`` and fine-tuning. A
sharded checkpoint loads on any number of processes, with or without FSDP, and an unsharded
one into an FSDP model; so a run can continue on another world size.

A checkpoint is built in a hidden ``.tmp-step-000123-<pid>`` folder next to the others,
fsynced, then renamed into place, so a crash mid-save leaves the previous checkpoint
intact and never a half-written ``step-*`` folder. Older folders beyond ``keep_last`` are
deleted only after the new one is in place. ``.pt`` files are read with
``torch.load(weights_only=True)``.

Under FSDP2, call :func:`save_checkpoint` and :func:`load_checkpoint` on every rank (all
ranks write their shards; the run folder must be on a file system every node sees).
Otherwise calling them on rank 0 alone is enough for saving.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from triform.errors import TriformError
from triform.runs import (
    CHECKPOINTS,
    STATE_JSON,
    STEP_DIR,
    WEIGHTS,
    check_fits,
    fsync,
    full_state_dict,
    list_checkpoints,
    load_weights,
    resolve_checkpoint,
    step_dir_name,
    write_weights,
)
from triform.runtime.distributed import barrier, is_fsdp, is_main_process, unwrap_model

FORMAT = 1
OPTIMIZER = "optimizer.pt"
TRAINER = "trainer.pt"
SHARDED = "sharded"


@dataclass
class CheckpointState:
    """What :func:`load_checkpoint` restored besides the tensors it loaded in place."""

    step: int
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    data_position: Any = None


# --------------------------------------------------------------------------------------
# RNG states as tensors and plain numbers (loadable with weights_only=True)
# --------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """The torch (CPU and, if in use, CUDA), numpy and python RNG states."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(cuda),
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {
            "version": int(py_version),
            "state": torch.tensor(py_internal, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        count = min(len(cuda), torch.cuda.device_count())
        torch.cuda.set_rng_state_all(cuda[:count])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))


# --------------------------------------------------------------------------------------
# Saving and loading whole checkpoints
# --------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """``value`` as plain data that ``torch.load(weights_only=True)`` and JSON accept
    (tensors are kept for torch; anything unknown becomes its ``str``)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.item() if value.ndim == 0 else value.detach().cpu()
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return str(value)


def _json_ready(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value


def _optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state keyed by parameter name ("fqn"), so that it loads into the same
    model under any wrapping (plain, DDP, FSDP2)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return {"format": "fqn", "state_dict": get_optimizer_state_dict(model, optimizer)}


def _save(obj: Any, path: Path) -> None:
    torch.save(obj, path)
    fsync(path)


def _prune(root: Path, keep_last: int | None, current: Path) -> None:
    """Delete all but the newest ``keep_last`` checkpoints, and stale temporary folders."""
    for child in root.iterdir():
        if child.name.startswith((".tmp-step-", ".old-step-")) and not child.name.endswith(
            f"-{os.getpid()}"
        ):
            shutil.rmtree(child, ignore_errors=True)
    prune_checkpoints(root, keep_last, keep=current)


def prune_checkpoints(run_dir: str | Path, keep_last: int | None, keep: Path | None = None) -> None:
    """Delete all but the newest ``keep_last`` (None or 0: all kept) complete checkpoints of
    a run folder (or of its ``checkpoints`` folder), never ``keep``, and the step folders a
    kill left incomplete. Run after each save and when a run starts, so a run killed while
    pruning is pruned by the next start. Each folder is first renamed to a temporary name,
    so a kill mid-delete leaves nothing that looks like a checkpoint."""
    root = Path(run_dir)
    if root.name != CHECKPOINTS:
        root = root / CHECKPOINTS
    if not root.is_dir():
        return
    complete = list_checkpoints(root)
    doomed = [c for c in root.iterdir() if STEP_DIR.match(c.name) and c.is_dir()]
    doomed = [c for c in doomed if c not in complete]  # no trainer state: never loadable
    if keep_last is not None and keep_last > 0:
        doomed += complete[:-keep_last]
    for folder in doomed:
        if keep is not None and folder.resolve() == Path(keep).resolve():
            continue
        gone = folder.with_name(f".tmp-pruned-{folder.name}-{os.getpid()}")
        os.replace(folder, gone)
        shutil.rmtree(gone, ignore_errors=True)


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    *,
    extra: Mapping[str, Any] | None = None,
    keep_last: int | None = None,
    data_position: Any = None,
) -> Path:
    """Write ``run_dir/checkpoints/step-<step>/`` atomically and return its path.

    ``extra`` (config, metrics, ...) and ``data_position`` are stored as plain data
    (unknown objects as strings) and come back in :class:`CheckpointState`. The RNG states
    saved are this process's. ``keep_last`` (None or 0 = all) prunes older checkpoints
    after the new one is in place. Saving the same step again replaces that checkpoint.

    Without FSDP only rank 0 writes, and it may be called on rank 0 alone (no collective,
    no barrier). Under FSDP2 every rank must call it: each writes its shards of weights and
    optimizer state to ``sharded/`` (``torch.distributed.checkpoint``), the weights alone are
    gathered for the ``model.safetensors`` export, and it returns once rank 0 has renamed
    the folder into place.
    """
    model = unwrap_model(model)
    final = Path(run_dir) / CHECKPOINTS / step_dir_name(step)
    trainer = {
        "format": FORMAT,
        "step": int(step),
        "data_position": _plain(data_position),
        "extra": _plain(dict(extra or {})),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state(),
    }
    if is_fsdp(model):
        _save_sharded(final, model, optimizer, trainer, keep_last)
        return final
    if is_main_process():
        weights = full_state_dict(model)
        assert weights is not None
        optim_state = _optimizer_state(model, optimizer) if optimizer is not None else None
        _write_checkpoint(
            final, lambda tmp, step: _write_full(tmp, weights, optim_state, step), trainer
        )
        _prune(final.parent, keep_last, final)
    return final


def _write_full(
    tmp: Path, weights: dict[str, torch.Tensor], optim_state: dict | None, step: int
) -> None:
    write_weights(weights, tmp / WEIGHTS, {"step": str(step)})
    if optim_state is not None:
        _save(optim_state, tmp / OPTIMIZER)


def _save_sharded(
    final: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    trainer: dict,
    keep_last: int | None,
) -> None:
    """FSDP2: every rank writes its shards into one temporary folder (a name all ranks
    agree on), rank 0 adds the weights export and the trainer state and renames it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    root = final.parent
    tmp = root / f".tmp-{final.name}-sharded"
    if is_main_process():
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier()
    try:
        model_state, optim_state = get_state_dict(model, [optimizer] if optimizer else [])
        state = {"model": model_state}
        if optimizer is not None:
            state["optimizer"] = optim_state
        dcp.save(state, checkpoint_id=str(tmp / SHARDED))  # collective; files fsynced
        weights = full_state_dict(model)  # the export for generate / convert (collective)
        if is_main_process():
            assert weights is not None
            _write_checkpoint(
                final, lambda t, step: _write_full(t, weights, None, step), trainer, tmp
            )
            _prune(root, keep_last, final)
    finally:
        barrier()


def _write_checkpoint(final: Path, write_tensors, trainer: dict, tmp: Path | None = None) -> None:
    """Build the folder under a hidden temporary name (``tmp``, else a new one), with
    ``write_tensors(tmp, step)`` and the trainer state, fsync it, rename it to ``final``."""
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    if tmp is None:
        tmp = root / f".tmp-{final.name}-{pid}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    try:
        write_tensors(tmp, trainer["step"])
        _save(trainer, tmp / TRAINER)
        summary = {
            "format": FORMAT,
            "step": trainer["step"],
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "data_position": trainer["data_position"],
            "extra": trainer["extra"],
        }
        (tmp / STATE_JSON).write_text(json.dumps(_json_ready(summary), indent=2) + "\n")
        fsync(tmp / STATE_JSON)
        fsync(tmp)
        if final.exists():  # re-saving a step: move the old one aside, then swap
            old = root / f".old-{final.name}-{pid}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TriformError(f"incomplete checkpoint: {path} is missing") from None
    except Exception as err:  # unpickling errors, truncated files, ...
        raise TriformError(f"cannot read {path}: {str(err).splitlines()[0]}") from None


def _load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    saved = _torch_load(path)
    kind, state = saved.get("format"), saved.get("state_dict")
    fsdp = is_fsdp(model)
    if kind != "fqn" and fsdp:
        raise TriformError(f"{path}: an optimizer state saved by index cannot be resumed with FSDP")
    try:
        if kind == "fqn":
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_optimizer_state_dict,
            )

            # The file holds full tensors: FSDP takes its shards of them. Not strict: a
            # parameter that never had a gradient (a head the loss does not use) has no
            # state; the weights were checked against the model, strictly, before this.
            options = StateDictOptions(full_state_dict=fsdp, strict=False)
            set_optimizer_state_dict(model, optimizer, state, options=options)
        else:  # older checkpoints: the optimizer's own state dict
            optimizer.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError) as err:
        raise TriformError(
            f"{path}: optimizer state does not fit this optimizer: {str(err).splitlines()[0]}"
        ) from None


def _load_sharded(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Read a sharded (FSDP2) checkpoint into ``model`` and ``optimizer`` on any number of
    processes, each reading the parts of the saved shards it holds now."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    optimizers = [optimizer] if optimizer is not None else []
    model_state, optim_state = get_state_dict(model, optimizers)
    state = {"model": model_state}
    if optimizer is not None:
        state["optimizer"] = optim_state
    try:
        with warnings.catch_warnings():  # one process reading a sharded checkpoint: intended
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load")
            dcp.load(state, checkpoint_id=str(path))
    except Exception as err:  # a damaged or foreign folder: DCP raises several types
        raise TriformError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
    set_state_dict(
        model,
        optimizers,
        model_state_dict=state["model"],
        optim_state_dict=state.get("optimizer", {}),
    )


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    restore_rng: bool = True,
) -> CheckpointState:
    """Restore a checkpoint in place and return its step, extra dict and data position.

    ``path`` is a step folder, or a run folder (its latest checkpoint). The model's
    weights are checked before anything is loaded: a checkpoint of another model raises
    :class:`TriformError` naming the first key that does not fit. The optimizer and
    scheduler are restored when given; RNG states last (``restore_rng``), so call this
    after everything that draws random numbers (model init, data set-up) and right
    before the first step.
    """
    folder = resolve_checkpoint(path)
    model = unwrap_model(model)
    trainer = _torch_load(folder / TRAINER)
    if (folder / SHARDED).is_dir():
        check_fits(model, folder / WEIGHTS)  # the export names every tensor: check first
        _load_sharded(folder / SHARDED, model, optimizer)
    else:
        load_weights(model, folder / WEIGHTS)  # also checks that the checkpoint fits
        if optimizer is not None:
            _load_optimizer(model, optimizer, folder / OPTIMIZER)
    if scheduler is not None:
        if trainer.get("scheduler") is None:
            raise TriformError(f"{folder} has no scheduler state")
        scheduler.load_state_dict(trainer["scheduler"])
    if restore_rng:
        set_rng_state(trainer["rng"])
    return CheckpointState(
        step=int(trainer["step"]),
        extra=trainer.get("extra") or {},
        path=folder,
        data_position=trainer.get("data_position"),
    )
