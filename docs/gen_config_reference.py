"""Write ``docs/configuration.md``, the reference of every config key, from the config classes.

    python docs/gen_config_reference.py           # rewrite docs/configuration.md
    python docs/gen_config_reference.py --check   # exit 1 if it is stale or a key is undescribed

Every section of a run file is a dataclass, and every key one of its fields. A key's
description is the field's attribute docstring, the string literal right below it::

    batch_size: int = 16
    \"\"\"The global batch: examples per optimizer step over all processes.\"\"\"

The sections are found by walking the run classes (``RunConfig``, ``FinetuneConfig``, the
sweep's ``SweepSection``) and each objective's options class in the registry, so a new field
or section shows up here by itself and needs only its docstring (``tests/test_docs.py`` fails
while one is missing or this page is stale).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal

from triform import presets
from triform.config import ModelConfig
from triform.finetune import config as finetune_config
from triform.objectives import OBJECTIVES
from triform.scaling.sweep import ModelShape, SweepSection
from triform.train import run_config
from triform.train.init import ModelInit

OUT = Path(__file__).resolve().parent / "configuration.md"
COMMAND = "python docs/gen_config_reference.py"


# -- reading the classes ------------------------------------------------------------------
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstring of every field of dataclass ``cls``; a field a subclass
    redefines without one keeps its base class's."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for stmt, after in zip(body, body[1:], strict=False):
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            doc = after.value.value if isinstance(after, ast.Expr) else None
            if isinstance(doc, str):
                docs[stmt.target.id] = " ".join(doc.split())
    return docs


@dataclasses.dataclass
class Key:
    name: str
    type: str
    default: str
    allowed: str
    meaning: str


def keys_of(cls: type, prefix: str = "") -> tuple[list[Key], list[tuple[str, type]]]:
    """The keys of dataclass ``cls`` and the nested dataclass tables it holds."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    keys, nested = [], []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(_bare(hints[f.name])):
            nested.append((prefix + f.name, _bare(hints[f.name])))
            continue
        type_text, allowed = describe_type(hints[f.name])
        meaning = docs.get(f.name, "")
        keys.append(Key(f.name, type_text, render_default(f, meaning), allowed, meaning))
    return keys, nested


def _bare(annotation: Any) -> Any:
    """``X`` of ``X | None``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


NAMES = {int: "integer", float: "number", bool: "boolean", str: "string", Any: "any"}


def describe_type(annotation: Any) -> tuple[str, str]:
    """(the TOML type in words, the allowed values) of a field annotation."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        values = typing.get_args(annotation)
        kind = "string" if all(isinstance(v, str) for v in values) else "value"
        return kind, ", ".join(f"`{_toml(v)}`" for v in values)
    if origin in (typing.Union, types.UnionType):
        parts = [describe_type(a) for a in typing.get_args(annotation) if a is not type(None)]
        allowed = "; ".join(a for _, a in parts if a)
        return " or ".join(t for t, _ in parts), allowed
    if origin in (list, tuple):
        (item, *_) = typing.get_args(annotation) or (Any,)
        text, allowed = describe_type(item)
        return f"list of {text}s" if not text.endswith("s") else f"list of {text}", allowed
    if origin is dict or annotation is dict:
        return "table", ""
    if origin is list or annotation is list:
        return "list", ""
    return NAMES.get(annotation, getattr(annotation, "__name__", str(annotation))), ""


def render_default(f: dataclasses.Field, meaning: str) -> str:
    if "Required." in meaning:
        return "required"
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "—"
    return "unset" if value is None else f"`{_toml(value)}`"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e6:
            return f"{value:.1f}"
        if 0 < abs(value) < 1e-3:
            mantissa, exponent = f"{value:e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


# -- writing the page ---------------------------------------------------------------------
def _cell(text: str) -> str:
    """Markdown of a docstring fragment in a table cell (RST ``code`` to Markdown)."""
    return text.replace("``", "`").replace("|", "\\|")


def table(rows: list[Key], lines: list[str]) -> None:
    if not rows:
        lines += ["No keys.", ""]
        return
    lines += ["| key | type | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
    for k in rows:
        meaning = k.meaning.replace(" Required.", "").replace("Required.", "").strip()
        cells = [f"`{k.name}`", k.type, k.default, k.allowed, _cell(meaning)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")


def section(title: str, cls: type, lines: list[str], missing: list[str], extra=()) -> None:
    """A ``[title]`` table of ``cls`` (plus ``extra`` rows first), and its nested tables."""
    keys, nested = keys_of(cls)
    rows = [*extra, *keys]
    missing += [
        f"{title}.{k.name} ({cls.__module__}.{cls.__qualname__})" for k in rows if not k.meaning
    ]
    lines += [f"### `[{title}]`", "", f"Defined by `{cls.__module__}.{cls.__qualname__}`.", ""]
    table(rows, lines)
    for name, sub in nested:
        section(f"{title}.{name}", sub, lines, missing)


def run_sections(
    top: type, names: tuple[str, ...], lines: list[str], missing: list[str], special: dict
) -> None:
    """Every section ``names`` of run class ``top``: its dataclass field of that name, or a
    ``special`` writer (``[objective]``, whose keys depend on its ``name``)."""
    hints = typing.get_type_hints(top)
    for name in names:
        cls = _bare(hints.get(name))
        if name in special:
            special[name](lines, missing)
        elif dataclasses.is_dataclass(cls):
            section(name, cls, lines, missing)
        else:
            missing.append(f"[{name}]: {top.__qualname__}.{name} is not a dataclass")


def generate() -> tuple[str, list[str]]:
    """The page's text and the keys that have no description."""
    lines: list[str] = []
    missing: list[str] = []

    def model_section(lines: list[str], missing: list[str]) -> None:
        preset = Key(
            "preset",
            "string",
            "unset",
            "see `triform models --all`",
            "A named architecture ("
            + ", ".join(f"`{n}`" for n in presets.names() if not n.endswith("-tiny"))
            + ", and `*-tiny` ones for tests) as the base of the other keys; unset: the "
            "defaults below.",
        )
        init_keys, _ = keys_of(ModelInit)
        missing.extend(f"model.{k.name} (ModelInit)" for k in init_keys if not k.meaning)
        section("model", ModelConfig, lines, missing, extra=[preset, *init_keys])

    def objective_section(lines: list[str], missing: list[str]) -> None:
        lines += [
            "### `[objective]`",
            "",
            "`name` picks the objective; its other keys are that objective's options. Ids "
            "marked *from the tokenizer* are filled in from the run's tokenizer and rarely set.",
            "",
            "| key | type | default | allowed | meaning |",
            "| --- | --- | --- | --- | --- |",
            "| `name` | string | required | "
            + ", ".join(f'`"{n}"`' for n in OBJECTIVES)
            + " | The pretraining objective. |",
            "",
        ]
        for name, objective in OBJECTIVES.items():
            cls = objective.config_class
            keys, _ = keys_of(cls)
            missing.extend(f"objective.{k.name} ({name})" for k in keys if not k.meaning)
            summary = _first_paragraph(objective)
            lines += [
                f'#### `name = "{name}"`',
                "",
                _cell(summary),
                "",
                f"Options: `{cls.__module__}.{cls.__qualname__}`.",
                "",
            ]
            table(keys, lines)

    lines += [
        "# Configuration reference",
        "",
        f"<!-- Generated by `{COMMAND}` from the config classes; do not edit by hand. -->",
        "",
        "One run is one TOML file. `--set section.key=value` (TOML syntax; a bare word is a "
        "string) overrides any key on the command line, e.g. `--set train.steps=500` or "
        "`--set 'data.corpus=[\"my_texts/\"]'`. An unknown section or key, or a value of the "
        "wrong type or out of range, stops the command with one line naming the key, before "
        "anything is written. Relative input paths in a file are read from the file's folder; "
        "`train.out_dir` and paths given with `--set` from the working directory.",
        "",
        "*unset* means the key is absent (TOML has no null); the meaning column says what "
        "unset does.",
        "",
        "## Pretraining runs",
        "",
        "`triform pretrain CONFIG.toml` (see `configs/`). Sections: "
        + ", ".join(f"`[{s}]`" for s in run_config.SECTIONS)
        + ". An objective may set defaults of other sections under yours (distillation takes "
        "the teacher's tokenizer and shape); a `[model]` preset is a whole base of its own.",
        "",
    ]
    run_sections(
        run_config.RunConfig,
        run_config.SECTIONS,
        lines,
        missing,
        {"model": model_section, "objective": objective_section},
    )
    lines += [
        "## Fine-tuning runs",
        "",
        "`triform finetune CONFIG.toml` (see `configs/finetune/`). Sections: "
        + ", ".join(f"`[{s}]`" for s in finetune_config.SECTIONS)
        + ".",
        "",
    ]
    run_sections(finetune_config.FinetuneConfig, finetune_config.SECTIONS, lines, missing, {})
    lines += [
        "## Scaling sweeps",
        "",
        "`triform scaling sweep CONFIG.toml`: a pretraining run file (every section above) "
        "plus `[sweep]`. Every point is that run with the point's model shape and "
        "`train.steps` = its tokens / (`batch_size` × `seq_len`).",
        "",
    ]
    section("sweep", SweepSection, lines, missing)
    keys, _ = keys_of(ModelShape)
    missing.extend(f"sweep.models[].{k.name}" for k in keys if not k.meaning)
    lines += [
        "#### `[sweep]` `models` entries",
        "",
        f"Defined by `{ModelShape.__module__}.{ModelShape.__qualname__}`.",
        "",
    ]
    table(keys, lines)
    return "\n".join(lines).rstrip() + "\n", missing


def _first_paragraph(objective: type) -> str:
    """What an objective does: its class docstring, or its module's where the class defers."""
    text = inspect.getdoc(objective) or ""
    if "module docstring" in text:
        text = sys.modules[objective.__module__].__doc__ or ""
    return " ".join(text.strip().split("\n\n")[0].split())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args(argv)
    text, missing = generate()
    if missing:
        print("keys without a description (add a docstring below the field):", file=sys.stderr)
        for key in missing:
            print(f"  {key}", file=sys.stderr)
    if args.check:
        stale = not OUT.is_file() or OUT.read_text(encoding="utf-8") != text
        if stale:
            print(f"{OUT} is stale: run {COMMAND}", file=sys.stderr)
        return 1 if stale or missing else 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
