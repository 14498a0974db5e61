"""Writing run configs back as TOML (the standard library only reads it): a sweep point's
config for a ``torchrun`` job, and the config ``triform scaling plan`` proposes."""

from __future__ import annotations

import json
import math
from typing import Any

from triform.errors import TriformError


def _value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TriformError(f"{where}: {value} cannot be written as TOML")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v, where) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{k} = {_value(v, f'{where}.{k}')}" for k, v in value.items() if v is not None)
        return "{ " + ", ".join(items) + " }"
    raise TriformError(f"{where}: a {type(value).__name__} cannot be written as TOML")


def dumps(tree: dict[str, Any]) -> str:
    """TOML text of ``tree``: top-level tables become ``[sections]`` (nested ones
    ``[a.b]``), other values ``key = value``; ``None`` values are left out (TOML has none)."""
    lines: list[str] = []
    _table(tree, [], lines)
    return "\n".join(lines).strip() + "\n"


def _table(table: dict[str, Any], path: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict) and v is not None}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    if path and scalars:
        lines += ["", f"[{'.'.join(path)}]"]
    for key, value in scalars.items():
        lines.append(f"{key} = {_value(value, '.'.join([*path, key]))}")
    for key, value in tables.items():
        _table(value, [*path, key], lines)
