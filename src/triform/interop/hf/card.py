"""The model card (``README.md``) of a HuggingFace folder written by ``triform convert --to hf``.

Everything in it is read from the run folder the model came from, nothing is made up:

- the YAML header model hubs read: ``library_name: triform``, ``pipeline_tag`` (from the
  exported class's head), ``base_model`` (when the start of a fine-tuning run is a hub
  checkpoint whose id is known), ``tags``, ``metrics`` and a ``model-index`` of the final
  validation (and test) metrics;
- the model: family, form, class, parameters (as stored), sizes;
- its base checkpoint: the ``model.source`` a fine-tuning run started from (and, when that is
  a triform pretraining run, what it was pretrained on);
- the data: corpus and validation file names with the documents and tokens their shards hold
  (``data/meta.json``), the steps and batches of the run; a fine-tuning run's train /
  validation / test files (rows counted when the card is written, when the files are there);
- the final metrics (``metrics.jsonl``, ``results.json``);
- how it was made: the command lines recorded in ``commands.jsonl`` when the run was started
  from the ``triform`` command, and always the resolved config (``run.json`` /
  ``finetune_config.json``) as the TOML file that remakes it with ``triform pretrain`` /
  ``triform finetune``.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path
from typing import Any

from triform.errors import TriformError
from triform.finetune.data import read_rows
from triform.finetune.metrics import format_metric
from triform.loading import read_model_config_of
from triform.runs import FINETUNE_JSON, MODEL_JSON, RUN_JSON, read_run_init, stored_shapes
from triform.scaling import toml_writer
from triform.train.metrics import read_commands, read_metrics
from triform.train.run_config import SECTIONS as RUN_SECTIONS

CARD = "README.md"
FINETUNE_CONFIG = "finetune_config.json"
RESULTS = "results.json"
# The exported class's head -> the hub's pipeline tag (checked in order, on the class name).
PIPELINES = (
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForConditionalGeneration", "text2text-generation"),
    ("LMHeadModel", "text-generation"),
    ("ForCausalLM", "text-generation"),
    ("ForMaskedLM", "fill-mask"),
    ("BertForPreTraining", "fill-mask"),
    ("AlbertForPreTraining", "fill-mask"),
    ("ElectraForPreTraining", None),  # a replaced-token detector: no pipeline of its own
    ("Model", "feature-extraction"),
)
AUTO_CLASSES = {
    "text-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "text2text-generation": "AutoModelForSeq2SeqLM",
    "text-generation": "AutoModelForCausalLM",
    "fill-mask": "AutoModelForMaskedLM",
    "feature-extraction": "AutoModel",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_PLAIN = re.compile(r"^[A-Za-z][\w./-]*$")
_NOT_PLAIN = {"true", "false", "yes", "no", "on", "off", "null", "none", "y", "n"}


# ---------------------------------------------------------------------------------------
# Reading what the run folder records
# ---------------------------------------------------------------------------------------
def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def pipeline_tag(architecture: str) -> str | None:
    """The hub pipeline of an exported class (``BertForSequenceClassification`` ->
    ``text-classification``)."""
    for suffix, tag in PIPELINES:
        if architecture.endswith(suffix):
            return tag
    return None


def hub_id(source: str | None) -> str | None:
    """The hub id of a checkpoint folder when it is known: a folder of the HuggingFace cache
    (``models--owner--name/snapshots/...``) or one whose ``config.json`` names a hub id
    (``_name_or_path``); ``None`` for other folders (triform's among them) and presets."""
    if not source or source.startswith("preset:"):
        return None
    path = Path(source)
    for part in path.parts:
        if part.startswith("models--"):
            return "/".join(part.split("--")[1:])
    if path.is_dir():
        if (path / MODEL_JSON).is_file():
            return None  # a triform run or model folder
        named = (_json(path / "config.json") or {}).get("_name_or_path")
        if isinstance(named, str) and _HUB_ID.match(named) and not Path(named).exists():
            return named
    return None


def _parameters(out: Path) -> int | None:
    weights = out / "model.safetensors"
    if not weights.is_file():
        return None
    try:
        return sum(math.prod(shape) for shape in stored_shapes(weights).values())
    except TriformError:
        return None


def _final(records: list[dict[str, Any]], split: str) -> dict[str, float]:
    """The numbers of the last ``split`` record (what an evaluation read left out)."""
    last = [r for r in records if r.get("split") == split]
    if not last:
        return {}
    skip = {"step", "split", "time", "eval_windows", "split_windows", "tokens_per_s", "lr"}
    return {
        k: v
        for k, v in last[-1].items()
        if k not in skip and isinstance(v, (int, float)) and math.isfinite(v)
    }


def _commands(*run_dirs: Path) -> list[str]:
    """The recorded command lines of the run folders that were the ``triform`` command
    (``triform ...`` or ``python -m triform ...``), in order, each after a ``# in <folder>``
    line when its working folder changes; starts from Python (the API, a test) are left
    out."""
    found, where = [], None
    for start in [s for run_dir in run_dirs for s in read_commands(run_dir)]:
        argv, orig = start.get("argv") or [], start.get("orig_argv") or []
        if argv and Path(argv[0]).name == "triform":
            line = shlex.join(["triform", *argv[1:]])
        elif "-m" in orig and orig[orig.index("-m") + 1 : orig.index("-m") + 2] == ["triform"]:
            line = shlex.join(["python", "-m", "triform", *argv[1:]])
        else:
            continue
        if start.get("cwd") != where:
            where = start.get("cwd")
            found.append(f"# in {where}")
        found.append(line)
    return found


def _names(paths: Any) -> str:
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        return "none"
    if list(paths) == ["default"]:
        return "the embedded default corpus (Python's own documentation and sources)"
    return ", ".join(f"`{Path(p).name}`" for p in paths)


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def _rows(path: str | None) -> str:
    """``name`` with its row count when the file is still there."""
    if not path:
        return ""
    try:
        count = f" ({len(read_rows(path)):,} rows)"
    except TriformError:
        count = ""
    return f"`{Path(path).name}`{count}"


# ---------------------------------------------------------------------------------------
# The parts of a card
# ---------------------------------------------------------------------------------------
def _model_section(out: Path, hf_config: dict[str, Any], model: dict[str, Any]) -> list[str]:
    architecture = (hf_config.get("architectures") or ["?"])[0]
    parameters = _parameters(out)
    rows = [
        ("family", model.get("family")),
        ("form", model.get("form")),
        ("HuggingFace class", f"`{architecture}`"),
        ("parameters (as exported)", f"{parameters:,}" if parameters is not None else None),
        ("layers", model.get("num_layers")),
        ("hidden size", model.get("hidden_size")),
        ("attention heads", model.get("num_heads")),
        ("vocabulary", model.get("vocab_size")),
        ("positions", model.get("position")),
    ]
    lines = ["## Model", "", "| | |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows if value is not None]
    return lines


def _pretraining_facts(run_dir: Path) -> dict[str, Any]:
    """What a triform pretraining run folder records about its data and training."""
    run = _json(run_dir / RUN_JSON) or {}
    data, train = run.get("data") or {}, run.get("train") or {}
    shards = Path(data.get("shards_dir") or run_dir / "data")
    meta = _json(shards / "meta.json") or {}
    records = read_metrics(run_dir)
    steps = max((r.get("step", 0) for r in records if r.get("split") == "train"), default=0)
    return {
        "run": run,
        "objective": (run.get("objective") or {}).get("name"),
        "corpus": data.get("corpus"),
        "validation": data.get("validation"),
        "splits": meta.get("splits") or {},
        "tokenizer": run.get("tokenizer") or {},
        "steps": steps,
        "batch_size": train.get("batch_size"),
        "seq_len": data.get("seq_len"),
        "val": _final(records, "val"),
        "train_loss": _final(records, "train").get("loss"),
    }


def _pretraining_lines(facts: dict[str, Any], heading: str) -> list[str]:
    lines = [heading, ""]
    splits = facts["splits"]
    held_out = "held out" if not facts["validation"] else f"from {_names(facts['validation'])}"
    lines.append(f"- corpus: {_names(facts['corpus'])}")
    for split, counts in splits.items():
        what = "train split" if split == "train" else f"validation split ({held_out})"
        lines.append(
            f"- {what}: {counts.get('tokens', 0):,} tokens in {counts.get('documents', 0):,} "
            f"documents"
        )
    if facts["objective"]:
        lines.append(f"- objective: `{facts['objective']}`")
    tok = facts["tokenizer"]
    if tok.get("kind") and not tok.get("path"):
        lines.append(f"- tokenizer: {tok['kind']}, trained on the corpus")
    if facts["steps"] and facts["batch_size"] and facts["seq_len"]:
        seen = facts["steps"] * facts["batch_size"] * facts["seq_len"]
        lines.append(
            f"- training: {facts['steps']:,} steps of {facts['batch_size']} sequences of "
            f"{facts['seq_len']} tokens (up to {seen:,} tokens read)"
        )
    return lines


def _metrics_table(title: str, metrics: dict[str, float], scaled: bool = False) -> list[str]:
    """A table of metrics; ``scaled``: fine-tuning's, percentages marked ``%``."""
    if not metrics:
        return []
    lines = [title, "", "| metric | value |", "| --- | --- |"]
    shown = {
        k: format_metric(k, v)[len(k) + 1 :] if scaled else _number(v) for k, v in metrics.items()
    }
    return lines + [f"| {k} | {v} |" for k, v in shown.items()]


def _howto(kind: str, run_dir: Path, config: dict[str, Any], base: Path | None = None) -> list[str]:
    """The recorded commands (those of the triform run ``base`` it started from first) and
    the resolved config as TOML."""
    lines = ["## How it was made", ""]
    commands = _commands(run_dir)
    if base is not None and commands:
        commands = _commands(base, run_dir)
    name = "run.toml" if kind == "pretrain" else "finetune.toml"
    if commands:
        lines += ["The commands that made it, as recorded in the run folders:", "", "```bash"]
        lines += commands + ["```", ""]
    lines.append(
        f"The run folder records its resolved config; saved as `{name}`, "
        f"`triform {kind} {name}` trains the same model again:"
    )
    try:
        text = toml_writer.dumps(config)
    except TriformError:  # a value TOML cannot hold: the JSON as recorded
        text = json.dumps(config, indent=2)
    return [*lines, "", "```toml", text.rstrip("\n"), "```"]


def _usage(name: str, pipeline: str | None) -> list[str]:
    auto = AUTO_CLASSES.get(pipeline or "", "AutoModel")
    lines = ["## Use it", "", "```python", "import transformers", ""]
    if pipeline and pipeline != "feature-extraction":
        lines.append(f'pipe = transformers.pipeline("{pipeline}", model="{name}")')
    else:
        lines.append(f'model = transformers.{auto}.from_pretrained("{name}")')
        lines.append(f'tokenizer = transformers.AutoTokenizer.from_pretrained("{name}")')
    lines += ["```", "", f"Back to triform: `triform convert {name} model --to triform`."]
    return lines


# ---------------------------------------------------------------------------------------
# YAML front matter (a small writer: the standard library has none)
# ---------------------------------------------------------------------------------------
def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _NOT_PLAIN:
        return text
    return json.dumps(text, ensure_ascii=False)  # a YAML double-quoted scalar


def yaml_lines(value: Any, indent: int = 0) -> list[str]:
    """Block-style YAML of nested dicts, lists and scalars."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)):
                lines += [f"{pad}{key}:", *yaml_lines(item, indent + 1)]
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    else:
        for item in value:
            if isinstance(item, (dict, list)):
                nested = yaml_lines(item, indent + 1)
                lines += [f"{pad}- {nested[0].lstrip()}", *nested[1:]]
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    return lines


def _model_index(
    name: str, pipeline: str | None, task: str, results: list[tuple[str, str, dict]]
) -> list[dict[str, Any]]:
    entries = []
    for dataset, split, metrics in results:
        if metrics:
            entries.append(
                {
                    "task": {"type": pipeline or task, "name": task},
                    "dataset": {"name": dataset, "type": dataset, "split": split},
                    "metrics": [{"type": k, "value": v, "name": k} for k, v in metrics.items()],
                }
            )
    return [{"name": name, "results": entries}] if entries else []


# ---------------------------------------------------------------------------------------
# The card
# ---------------------------------------------------------------------------------------
def _chosen(folder: Path, meta: dict[str, Any], results: dict[str, Any]) -> str:
    """Which model of the run this is: ``best/`` (by which metric) or ``final/``."""
    step, steps = meta.get("step"), results.get("steps", "?")
    value, metric = results.get("best_value"), results.get("metric")
    if folder.name == "best" and metric and isinstance(value, (int, float)):
        best = format_metric(metric, value)
        return f"the model of step {step} of {steps}, its best validation {best}."
    return f"the model of step {step} of {steps} (`{folder.name}/`)."


def _base_lines(source: str, base: str | None) -> list[str]:
    """Where a fine-tuning run's body came from (and what it was pretrained on, when that is
    a triform run whose folder is still there)."""
    if source.startswith("preset:"):
        return [f"None: the body was initialised at random from the preset `{source[7:]}`."]
    folder = Path(source)
    if (folder / RUN_JSON).is_file():
        facts = _pretraining_facts(folder)
        lines = [f"`{folder.name}`, a triform pretraining run (`model.source`).", ""]
        lines += _pretraining_lines(facts, "It was pretrained with triform on:")
        if facts["val"]:
            shown = ", ".join(f"{k} {_number(v)}" for k, v in facts["val"].items())
            lines.append(f"- its final validation: {shown}")
        return lines
    what = "a HuggingFace checkpoint" if base or (folder / "config.json").is_file() else "a model"
    return [f"`{base or folder.name}`, {what} (`model.source`)."]


def _init_lines(init: dict[str, Any], base: str | None) -> list[str]:
    """The checkpoint a continued-pretraining run started from (``run.json``'s ``init``)."""
    source = Path(str(init.get("source", "?")))
    what = "a HuggingFace checkpoint" if init.get("format") == "huggingface" else "a triform run"
    arch = f", `{init['architecture']}`" if init.get("architecture") else ""
    lines = ["## Base checkpoint", "", f"`{base or source.name}`, {what}{arch} (`model.init`)."]
    if init.get("weights_sha256"):
        lines.append(f"Its weights' SHA-256: `{init['weights_sha256']}`.")
    if init.get("new"):
        lines.append(f"New in this model: {', '.join(f'`{n}`' for n in init['new'])}.")
    return [*lines, ""]


def _run_dirs(src: Path) -> tuple[str, Path, Path | None]:
    """(``finetune`` | ``pretrain`` | ``model``, the run folder, the fine-tuned model
    folder)."""
    for folder in (src, src / "best", src / "final"):
        if (folder / FINETUNE_JSON).is_file():
            run_dir = folder if (folder / FINETUNE_CONFIG).is_file() else folder.parent
            return "finetune", run_dir, folder
    if (src / RUN_JSON).is_file():
        return "pretrain", src, None
    return "model", src, None


def model_card(src: Path, out: Path, part: str | None = None, name: str | None = None) -> str:
    """The card of ``out`` (a HuggingFace folder just written from ``src``; ``part``: the
    model of a run that trained several, as ``convert --part`` names it; ``name``: the
    folder's name, when ``out`` is written under a temporary one)."""
    src, out = Path(src), Path(out)
    name = name or out.name
    hf_config = _json(out / "config.json") or {}
    architecture = (hf_config.get("architectures") or ["?"])[0]
    pipeline = pipeline_tag(architecture)
    kind, run_dir, finetuned = _run_dirs(src)
    if finetuned is not None:
        model = _json(finetuned / MODEL_JSON) or {}
    elif (src / MODEL_JSON).is_file():
        model = read_model_config_of(src, part).to_dict()
    else:
        model = {}
    family = model.get("family", hf_config.get("model_type", "?"))
    header: dict[str, Any] = {"library_name": "triform"}
    if pipeline:
        header["pipeline_tag"] = pipeline
    tags = ["triform", family]
    body: list[str] = []
    index: list[dict[str, Any]] = []
    metric_names: list[str] = []

    if kind == "finetune":
        config = _json(run_dir / FINETUNE_CONFIG) or {}
        results = _json(run_dir / RESULTS) or {}
        meta = _json(finetuned / FINETUNE_JSON) or {}  # type: ignore[operator]
        task = config.get("task") or meta.get("task") or {}
        task_kind = meta.get("kind") or task.get("kind", "?")
        source = (config.get("model") or {}).get("source", "")
        base = hub_id(source)
        if base:
            header["base_model"] = base
        tags += [task_kind, "fine-tuned"]
        validation = {
            k: v
            for k, v in (meta.get("metrics") or {}).items()
            if isinstance(v, (int, float)) and math.isfinite(v)
        }
        test = {k: v for k, v in (results.get("test") or {}).items() if isinstance(v, float)}
        metric_names = [k for k in validation if k != "loss"]
        index = _model_index(
            name,
            pipeline,
            task_kind,
            [
                (Path(task.get("validation") or "validation").name, "validation", validation),
                (Path(task.get("test") or "test").name, "test", test),
            ],
        )
        body += [
            f"# {name}",
            "",
            f"A {family} {model.get('form', '')} model fine-tuned with triform for "
            f"**{task_kind}**, exported as `{architecture}`: {_chosen(finetuned, meta, results)}",
            "",
            *_model_section(out, hf_config, model),
            "",
            "## Base checkpoint",
            "",
        ]
        body += _base_lines(source, base)
        body += ["", "## Fine-tuning data", ""]
        for role in ("train", "validation", "test"):
            if task.get(role):
                body.append(f"- {role}: {_rows(task[role])}")
        labels = _json(finetuned / "labels.json") or task.get("labels")  # type: ignore[operator]
        if labels:
            body.append(f"- labels: {', '.join(f'`{x}`' for x in labels)}")
        train = config.get("train") or {}
        if train:
            body.append(
                f"- training: {results.get('steps', '?')} steps of {train.get('batch_size')} "
                f"examples (epochs {train.get('epochs')}, learning rate "
                f"{(config.get('optim') or {}).get('lr')})"
            )
        title = f"## Results (validation, step {meta.get('step')})"
        body += ["", *_metrics_table(title, validation, scaled=True)]
        if test:
            body += ["", *_metrics_table("## Results (test)", test, scaled=True)]
        if isinstance(results.get("train_loss"), float):
            body += ["", f"Final training loss: {results['train_loss']:.4g}."]
        base_run = Path(source) if (Path(source) / RUN_JSON).is_file() else None
        body += ["", *_howto("finetune", run_dir, config, base_run)]
    elif kind == "pretrain":
        facts = _pretraining_facts(run_dir)
        init = read_run_init(run_dir)  # continued pretraining: the checkpoint it started from
        base = hub_id(init.get("source")) if init else None
        if base:
            header["base_model"] = base
        how = "pretrained from scratch" if init is None else "further pretrained"
        tags += [t for t in (facts["objective"], "pretrained") if t]
        metric_names = list(facts["val"])
        index = _model_index(name, pipeline, facts["objective"] or "pretraining",
                             [("validation", "validation", facts["val"])])  # fmt: skip
        body += [
            f"# {name}",
            "",
            f"A {family} {model.get('form', '')} model {how} with triform "
            f"(objective `{facts['objective']}`), exported as `{architecture}`.",
            "",
            *_model_section(out, hf_config, model),
            "",
            *(_init_lines(init, base) if init else []),
            *_pretraining_lines(facts, "## Pretraining data"),
            "",
            *_metrics_table(f"## Results (validation, step {facts['steps']})", facts["val"]),
        ]
        if isinstance(facts["train_loss"], float):
            body += ["", f"Final training loss: {facts['train_loss']:.4g}."]
        config = {k: v for k, v in facts["run"].items() if k in RUN_SECTIONS}  # not "init"
        body += ["", *_howto("pretrain", run_dir, config)]
    else:
        body += [
            f"# {name}",
            "",
            f"A {family} {model.get('form', '')} model, exported by triform as "
            f"`{architecture}`. Its folder records no training run.",
            "",
            *_model_section(out, hf_config, model),
        ]
    header["tags"] = list(dict.fromkeys(str(t) for t in tags if t))
    if metric_names:
        header["metrics"] = metric_names
    if index:
        header["model-index"] = index
    body += ["", *_usage(name, pipeline)]
    front = ["---", *yaml_lines(header), "---", ""]
    return "\n".join(front + body).replace("\n\n\n", "\n\n").rstrip("\n") + "\n"


def write_model_card(
    src: str | Path, out: str | Path, part: str | None = None, name: str | None = None
) -> Path:
    """Write ``out/README.md``, the model card of the HuggingFace folder ``out`` written from
    the triform folder ``src`` (``part``: as ``convert --part``; ``name``: the folder's name
    when ``out`` is a temporary one; see the module docstring)."""
    path = Path(out) / CARD
    path.write_text(model_card(Path(src), Path(out), part, name), encoding="utf-8")
    return path
