"""HuggingFace checkpoint folders: reading ``config.json`` and the weights (safetensors, sharded
or not; else ``pytorch_model.bin``, read without unpickling code), and writing them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from triform.errors import TriformError
from triform.interop.hf.rules import StateDict


def read_config(directory: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of an HF checkpoint folder."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise TriformError(f"{directory} has no config.json")
    return read_json(path)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file of an HF folder (``config.json``, ``generation_config.json``)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TriformError(f"{path}: malformed JSON: {err}") from None
    if not isinstance(value, dict):
        raise TriformError(f"{path}: expected a JSON object")
    return value


def read_weights(directory: str | Path) -> StateDict:
    """All tensors of an HF checkpoint folder (safetensors preferred; pickles are read with
    ``torch.load(weights_only=True)``, which loads tensors and never code)."""
    directory = Path(directory)
    for index_name, reader in (
        ("model.safetensors.index.json", _read_safetensors),
        ("pytorch_model.bin.index.json", _read_bin),
    ):
        single = directory / index_name.removesuffix(".index.json")
        if single.is_file():
            return reader(single)
        index = directory / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError) as err:
                raise TriformError(f"{index}: malformed index: {err}") from None
            state: StateDict = {}
            for shard in shards:
                state.update(reader(directory / shard))
            return state
    raise TriformError(f"{directory} has no model.safetensors or pytorch_model.bin")


def _read_safetensors(path: Path) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError) as err:
        raise TriformError(f"{path}: unreadable safetensors file: {err}") from None


def _read_bin(path: Path) -> StateDict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several kinds for a bad or unsafe pickle
        reason = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise TriformError(f"{path}: unreadable weights file: {reason}") from None
    if not isinstance(state, dict):
        raise TriformError(f"{path}: expected a dict of tensors")
    return state


def write_checkpoint(
    directory: str | Path, hf_config: dict[str, Any], state: StateDict, dtype: torch.dtype
) -> Path:
    """Write ``config.json`` (with ``dtype``) and ``model.safetensors`` into ``directory``."""
    from safetensors.torch import save_file

    hf_config = {**hf_config, "dtype": str(dtype).removeprefix("torch.")}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.cpu().clone(memory_format=torch.contiguous_format) for k, v in state.items()}
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    write_json(directory / "config.json", hf_config)
    return directory


def write_json(path: Path, value: Any) -> None:
    """``value`` as indented, key-sorted JSON (the way transformers writes its files)."""
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")
