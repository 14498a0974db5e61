"""The run-folder format, and the one loader every command uses to read a model from a folder.

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
tensors are stored once under their first name. Nothing here knows about optimizers,
processes or FSDP: that is :mod:`triform.train.checkpoint`.
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

from triform.config import ModelConfig
from triform.errors import TriformError
from triform.models.sizing import check_model_fits

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


def fsync(path: Path) -> None:
    """Flush ``path`` (a file or a folder) to disk; a no-op where the OS cannot."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. folders on Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
    from triform.tokenizers import load_tokenizer

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


LOCK_FILE = ".lock"
TEMPORARY = (".tmp-", ".old-")  # prefixes of files and folders being written


class RunLock:
    """An exclusive lock on a run folder for as long as a run writes to it.

    ``fcntl.flock`` on ``<run>/.lock``, which holds the owner's pid: a second run on the
    folder is refused naming that pid, and the lock goes away with its process however it
    ends (even ``kill -9``), so a stale lock file never blocks anything. Where ``fcntl``
    does not exist (Windows) the lock is a no-op.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise TriformError(
                f"run folder {self.path.parent} is in use by another run (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_stale_files(run_dir: str | Path) -> list[Path]:
    """Delete what killed runs left half-written in a run folder we hold the lock of
    (temporary checkpoint folders, temporary weight, JSON and shard files); returns them."""
    import shutil

    root = Path(run_dir)
    removed = []
    for folder in (root, root / CHECKPOINTS, root / "data"):
        if not folder.is_dir():
            continue
        for child in folder.iterdir():
            if child.name.startswith(TEMPORARY) or (
                child.name.startswith(".") and child.name.endswith(".tmp")
            ):
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
                removed.append(child)
    return removed


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


def save_weights(
    model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Write a (single-process) model's weights to ``path``, tied tensors once."""
    return write_weights(unique_state_dict(model), path, metadata)


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
    """Load safetensors weights into a (single-process) ``model`` in place.

    ``path`` is a ``.safetensors`` file, a model folder or a run folder (its latest
    checkpoint). Weights of another model raise :class:`TriformError` naming the first key
    that does not fit, before anything is changed. Returns the file read.
    """
    file = weights_file(path)
    model.load_state_dict(read_weights(model, file, prefix, shared), strict=True)
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


# --------------------------------------------------------------------------------------
# The one loader
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


def read_model_config_of(folder: str | Path, part: str | None = None) -> ModelConfig:
    """The config of the model :func:`read_model` would load from ``folder``, read without
    the weights (a HuggingFace folder: its ``config.json`` for the class it names)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TriformError(f"model folder not found: {folder}")
    if (folder / MODEL_JSON).is_file():
        return _run_part(folder, part)[0]
    if (folder / HF_CONFIG).is_file():
        from triform.interop import hf

        hf_config = hf.read_config(folder)
        architectures = hf_config.get("architectures") or []
        if architectures:
            return hf.config_from_hf(hf_config, architectures[0])
    return read_model(folder, part).config  # the class follows from the weights, or an error


def read_model(folder: str | Path, part: str | None = None) -> nn.Module:
    """The model (eval mode, on the CPU) of a run folder (its latest checkpoint), a model
    folder or a HuggingFace checkpoint folder; see the module docstring. ``part`` picks one
    model of a run that trained several (ELECTRA: ``"discriminator"``, the default, or
    ``"generator"``)."""
    from triform.models import build_model

    folder = Path(folder)
    if not folder.is_dir():
        raise TriformError(f"model folder not found: {folder}")
    if (folder / ADAPTERS_JSON).is_file():  # LoRA adapters: their base, merged with them
        from triform.finetune.adapters import read_adapted_body

        _run_part(folder, part)  # refuses a part other than the body
        return check_finite(read_adapted_body(folder), folder)
    if (folder / MODEL_JSON).is_file():
        config, prefix, shared = _run_part(folder, part)
        if (folder / CHECKPOINTS).is_dir() and latest_checkpoint(folder) is None:
            raise TriformError(f"{folder} has no checkpoint yet")
        check_model_fits(config)
        model = build_model(config)
        load_weights(model, folder, prefix, shared)
        return check_finite(model.eval(), folder)
    if (folder / HF_CONFIG).is_file():
        from triform.interop import hf

        if part is not None:
            raise TriformError(f"{folder} is a HuggingFace checkpoint; it has no parts")
        return check_finite(hf.load(folder), folder)
    raise TriformError(
        f"{folder} is neither a triform run or model folder ({MODEL_JSON}) nor a "
        f"HuggingFace checkpoint folder ({HF_CONFIG})"
    )


def check_finite(model: nn.Module, source: str | Path) -> nn.Module:
    """``model``, or a :class:`TriformError` when a weight is NaN or infinite (a diverged run
    saved by an older version, a damaged file): such a model would answer silently wrong."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise TriformError(f"{source}: weight {name!r} holds NaN or infinite values")
    return model


def load_model(
    folder: str | Path, part: str | None = None, tokenizer: str | Path | None = None
) -> tuple[nn.Module, tokenizers.Tokenizer]:
    """:func:`read_model` and the folder's tokenizer (or the ``tokenizer.json`` at
    ``tokenizer``, used instead). A tokenizer with more tokens than the model's vocabulary
    is refused."""
    from triform.tokenizers import load_tokenizer

    model = read_model(folder, part)
    tok = read_tokenizer(folder) if tokenizer is None else load_tokenizer(tokenizer)
    size = tok.get_vocab_size(with_added_tokens=True)
    if size > model.config.vocab_size:
        raise TriformError(
            f"the tokenizer has {size} tokens but the model only {model.config.vocab_size}"
        )
    return model, tok
