"""Scaling sweeps: a base run config plus a ``[sweep]`` section, run as one pretraining per
(model size, budget) point, each appending one line to ``results.jsonl``.

```toml
[sweep]
out_dir = "runs/scaling"              # results.jsonl, the shared tokenizer and shards, points/
tokens = [1e6, 3e6]                   # token budgets D: every model trains on each
flops = [1e13, 3e13]                  # and/or compute budgets C (IsoFLOP curves)
models = [{ num_layers = 2, hidden_size = 64, num_heads = 4 }, ...]  # ffn_size: ffn_ratio x hidden
# or a depth rule: hidden = aspect_ratio x depth, rounded to a multiple of head_dim
depths = [1, 2, 4]
aspect_ratio = 32
head_dim = 16
ffn_ratio = 4
warmup_fraction = 0.05                # warm-up steps as a fraction of each point's steps
```

Every point is an ordinary pretraining run (:func:`triform.train.loop.pretrain`) of the base
config with the point's model shape, ``train.steps`` = its budget in tokens over
``batch_size × seq_len`` (``batch_size`` is the global batch), a learning-rate schedule sized
to those steps, one evaluation at the end (its ``loss``: the validation loss over
``train.eval_batches`` batches of windows spread evenly across the split, or every window with
``"all"``, the rule of every evaluation; the row says how many, ``eval_windows`` of
``split_windows``), and its own folder under ``points/``. All points share one tokenizer
(trained once, before the first point, unless the base config names one) and one shard
folder, so the corpus is tokenized once. A point whose id is already in ``results.jsonl`` is
skipped and a point killed after its checkpoint resumes from it: a killed sweep resumes where
it stopped. One sweep at a time writes a sweep folder, and a line of ``results.jsonl`` torn by
a kill is dropped (with a warning) before the next row is appended.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from triform.config import ModelConfig, apply_overrides, from_dict, load_toml
from triform.errors import ConfigError, TriformError, warn
from triform.models import build_model
from triform.outputs import claim_run_folder, read_jsonl_records, repair_jsonl
from triform.runs import latest_checkpoint
from triform.scaling import toml_writer
from triform.scaling.laws import flops_per_token, training_flops
from triform.tokenizers import save_tokenizer
from triform.train.metrics import read_metrics
from triform.train.run_config import RunConfig, build_run_config, resolve_input_paths
from triform.train.setup import train_run_tokenizer

RESULTS_FILE = "results.jsonl"


@dataclass
class SweepSection:
    """The ``[sweep]`` section (see the module docstring)."""

    out_dir: str = "runs/scaling"
    """The sweep folder: ``results.jsonl``, the shared tokenizer and shards, ``points/``."""
    tokens: list[float] = field(default_factory=list)
    """Token budgets D: every model trains on each."""
    flops: list[float] = field(default_factory=list)
    """Compute budgets C: every model gets the tokens that spend each (IsoFLOP curves)."""
    models: list[dict] = field(default_factory=list)
    """Model sizes, one table each (keys below); or give ``depths``."""
    depths: list[int] = field(default_factory=list)
    """A depth rule instead of ``models``: one model per depth, hidden = ``aspect_ratio``
    × depth rounded to a multiple of ``head_dim``."""
    aspect_ratio: int = 64
    """Depth rule: hidden size per layer."""
    head_dim: int = 64
    """Depth rule: the width of one head."""
    ffn_ratio: int = 4
    """Feed-forward size as a multiple of the hidden size, where a size does not give it."""
    warmup_fraction: float = 0.05
    """Warm-up steps as a fraction of each point's steps."""


@dataclass(frozen=True)
class ModelShape:
    """One model size of a sweep; ``lr`` overrides ``optim.lr`` for it when set."""

    num_layers: int
    """Blocks of the model. Required."""
    hidden_size: int
    """Its hidden size. Required."""
    num_heads: int
    """Its attention heads. Required."""
    ffn_size: int
    """Its feed-forward size; default: ``ffn_ratio`` × ``hidden_size``."""
    lr: float | None = None
    """A learning rate for this size; unset: ``optim.lr``."""

    @property
    def name(self) -> str:
        return f"l{self.num_layers}-h{self.hidden_size}-a{self.num_heads}-f{self.ffn_size}"


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: a shape trained for ``steps`` steps (``tokens`` tokens)."""

    shape: ModelShape
    budget_kind: str  # "tokens" or "flops": which list of [sweep] the budget comes from
    budget: float
    steps: int
    tokens: int
    params: int  # non-embedding, as Kaplan et al. count
    flops: float

    @property
    def id(self) -> str:
        budget = f"{self.budget:.4g}".replace("+", "")
        return f"{self.shape.name}_{self.budget_kind}{budget}"


class Sweep:
    """A loaded sweep: the base run tree, the ``[sweep]`` section, and its points."""

    def __init__(self, base: dict[str, Any], section: SweepSection, source: Path | None = None):
        self.base = base
        self.section = section
        self.source = source
        self.config = build_run_config(copy.deepcopy(base), source)  # validates the base
        self.out_dir = Path(section.out_dir)
        self.shapes = _shapes(section, self.config.model)
        train = self.config.train
        self.tokens_per_step = train.batch_size * self.config.data.seq_len
        self.points = self._points()

    @property
    def results_path(self) -> Path:
        return self.out_dir / RESULTS_FILE

    def _points(self) -> list[SweepPoint]:
        seq_len = self.config.data.seq_len
        points = []
        for shape in self.shapes:
            model = _model_config(self.config.model, shape)
            if model.max_positions < seq_len and model.position == "learned":
                raise ConfigError(
                    f"model.max_positions ({model.max_positions}) < data.seq_len ({seq_len})"
                )
            params = build_model(model, device="meta").num_parameters(non_embedding=True)
            width = model.num_heads * model.head_size
            per_token = flops_per_token(params, model.num_layers, seq_len, width)
            budgets = [("tokens", float(d), float(d)) for d in self.section.tokens]
            budgets += [("flops", float(c), float(c) / per_token) for c in self.section.flops]
            for kind, budget, tokens in budgets:
                steps = max(1, round(tokens / self.tokens_per_step))
                actual = steps * self.tokens_per_step
                flops = training_flops(params, actual, model.num_layers, seq_len, width)
                points.append(SweepPoint(shape, kind, budget, steps, actual, params, flops))
        ids = [p.id for p in points]
        duplicate = next((i for i in ids if ids.count(i) > 1), None)
        if duplicate is not None:
            raise ConfigError(f"sweep: point {duplicate} appears twice (a repeated size or budget)")
        return points

    def point_dir(self, point: SweepPoint) -> Path:
        return self.out_dir / "points" / point.id

    def point_tree(self, point: SweepPoint) -> dict[str, Any]:
        """The run tree of one point: the base with the point's shape, steps and schedule."""
        tree = copy.deepcopy(self.base)
        model = tree.setdefault("model", {})
        model.pop("head_dim", None)
        model.update(
            num_layers=point.shape.num_layers,
            hidden_size=point.shape.hidden_size,
            num_heads=point.shape.num_heads,
            ffn_size=point.shape.ffn_size,
        )
        if point.shape.lr is not None:
            tree.setdefault("optim", {})["lr"] = point.shape.lr
        train = tree.setdefault("train", {})
        train.pop("max_minutes", None)  # a point trains its whole budget
        train.update(
            out_dir=str(self.point_dir(point)),
            steps=point.steps,
            eval_every=point.steps,  # one evaluation, at the end
            checkpoint_every=point.steps,
            keep_last=1,
            progress=False,  # the sweep shows its own bar over points
        )
        schedule = tree.setdefault("schedule", {})
        schedule.pop("total_steps", None)  # decays over this point's steps
        schedule["warmup_steps"] = min(
            point.steps, max(1, round(self.section.warmup_fraction * point.steps))
        )
        tokenizer = tree.setdefault("tokenizer", {})
        tokenizer.setdefault("path", str(self.out_dir / "tokenizer.json"))
        tree.setdefault("data", {}).setdefault("shards_dir", str(self.out_dir / "data"))
        return tree

    def point_config(self, point: SweepPoint) -> RunConfig:
        return build_run_config(self.point_tree(point), self.source)

    @staticmethod
    def torchrun_command(
        nproc: int, config_path: str | Path, resume: str | Path | None = None
    ) -> list[str]:
        """The command that runs a point (its config written to ``config_path``, see
        :meth:`point_tree`) as its own ``torchrun`` job of ``nproc`` processes (continuing
        the checkpoint in ``resume``, when given)."""
        command = [
            "torchrun",
            "--nproc_per_node",
            str(nproc),
            "-m",
            "triform.cli",
            "pretrain",
            str(config_path),
        ]
        return command + (["--resume", str(resume)] if resume is not None else [])

    def train_tokenizer(self) -> None:
        """Train the tokenizer the points share, once, unless the base config names one
        (which must then exist: see :func:`~triform.train.setup.prepare_tokenizer`)."""
        if "path" in self.base.get("tokenizer", {}) or not self.points:
            return
        path = self.out_dir / "tokenizer.json"
        if not path.is_file():
            save_tokenizer(train_run_tokenizer(self.point_config(self.points[0])), path)


def _model_config(base: ModelConfig, shape: ModelShape) -> ModelConfig:
    return base.replace(
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        num_heads=shape.num_heads,
        ffn_size=shape.ffn_size,
        head_dim=None,
    )


SHAPE_KEYS = {"num_layers", "hidden_size", "num_heads", "ffn_size", "lr"}


def _shapes(section: SweepSection, base: ModelConfig) -> list[ModelShape]:
    if section.models and section.depths:
        raise ConfigError("sweep: give either models or depths (a width rule), not both")
    if not section.tokens and not section.flops:
        raise ConfigError(
            "sweep: give token budgets (sweep.tokens) or compute budgets (sweep.flops)"
        )
    for key in ("tokens", "flops"):
        bad = [v for v in getattr(section, key) if not v > 0]
        if bad:
            raise ConfigError(f"sweep.{key} must be positive numbers, got {bad[0]!r}")
    for key in ("aspect_ratio", "head_dim", "ffn_ratio"):
        if getattr(section, key) <= 0:
            raise ConfigError(f"sweep.{key} must be positive, got {getattr(section, key)}")
    if not 0 <= section.warmup_fraction < 1:
        raise ConfigError(f"sweep.warmup_fraction must be in [0, 1), got {section.warmup_fraction}")
    shapes = []
    for i, table in enumerate(section.models):
        unknown = set(table) - SHAPE_KEYS
        if unknown:
            raise ConfigError(f"sweep.models[{i}]: unknown key {sorted(unknown)[0]}")
        missing = {"num_layers", "hidden_size", "num_heads"} - set(table)
        if missing:
            raise ConfigError(f"sweep.models[{i}] needs {', '.join(sorted(missing))}")
        hidden = table["hidden_size"]
        shape = ModelShape(
            table["num_layers"],
            hidden,
            table["num_heads"],
            table.get("ffn_size", section.ffn_ratio * hidden if isinstance(hidden, int) else 0),
            table.get("lr"),
        )
        _model_config(base, shape)  # validates the sizes
        shapes.append(shape)
    for depth in section.depths:
        if depth <= 0:
            raise ConfigError(f"sweep.depths must be positive, got {depth}")
        hidden = max(1, round(section.aspect_ratio * depth / section.head_dim)) * section.head_dim
        heads = hidden // section.head_dim
        shapes.append(ModelShape(depth, hidden, heads, section.ffn_ratio * hidden))
    if not shapes:
        raise ConfigError("sweep: give model sizes (sweep.models) or a depth rule (sweep.depths)")
    return shapes


def load_tree(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """A run TOML as a tree, input paths resolved against its folder (as
    :func:`~triform.train.run_config.load_run_config` does) and ``overrides`` applied;
    a ``[sweep]`` section, if any, is kept."""
    tree = load_toml(path)
    resolve_input_paths(tree, Path(path).resolve().parent)
    apply_overrides(tree, overrides or [])
    return tree


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read a sweep TOML: a run config plus ``[sweep]``; ``overrides`` (``section.key=value``,
    ``sweep.*`` included) are applied first."""
    tree = load_tree(path, overrides)
    if "sweep" not in tree:
        raise ConfigError(f"{path}: a sweep config needs a [sweep] section")
    section = from_dict(SweepSection, dict(tree.pop("sweep")), "sweep")
    return Sweep(tree, section, Path(path))


def read_results(path: str | Path, quiet: bool = False) -> list[dict[str, Any]]:
    """The rows of a ``results.jsonl`` (or of the one in a sweep folder). A torn last line
    (a sweep killed mid-write) is left out, with a warning unless ``quiet``; a malformed
    line elsewhere is an error naming the file and line."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    rows, torn = read_jsonl_records(path)
    if torn is not None and not quiet:
        warn(f"{path}: left out its torn last line (a sweep was killed while writing it)")
    return rows


def _append(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _final_validation(out_dir: Path, val_metrics: dict[str, float]) -> dict[str, Any]:
    """The run's last validation metrics: ``val_metrics``, else its last recorded ones."""
    if val_metrics.get("loss") is None:
        records = [r for r in read_metrics(out_dir, split="val") if "loss" in r]
        if not records:
            raise TriformError(f"{out_dir}: the run recorded no validation loss")
        val_metrics = records[-1]
    return val_metrics


def run_point(sweep: Sweep, point: SweepPoint, torchrun: int | None = None) -> dict[str, Any]:
    """Train one point (in this process, or as a ``torchrun`` job of ``torchrun`` processes)
    and return its results row."""
    out_dir = sweep.point_dir(point)
    # a point killed before its row was written: from its checkpoint, else from the start
    resume = out_dir if latest_checkpoint(out_dir) is not None else None
    started = time.perf_counter()
    if torchrun is None:
        from triform.train.loop import pretrain

        result = pretrain(sweep.point_config(point), resume=resume)
        steps, train_loss = result.steps, result.train_loss
        validation = _final_validation(out_dir, result.val_metrics)
    else:
        sweep.point_config(point)  # validate before launching
        out_dir.mkdir(parents=True, exist_ok=True)
        config_path = out_dir / "point.toml"
        config_path.write_text(toml_writer.dumps(sweep.point_tree(point)), encoding="utf-8")
        command = sweep.torchrun_command(torchrun, config_path, resume)
        try:
            done = subprocess.run(command, check=False)
        except FileNotFoundError:
            raise TriformError("--torchrun: the torchrun command is not on PATH") from None
        if done.returncode != 0:
            raise TriformError(f"point {point.id}: {' '.join(command)} exited {done.returncode}")
        train = [r for r in read_metrics(out_dir, split="train") if "loss" in r]
        steps = int(train[-1]["step"]) if train else point.steps
        train_loss = float(train[-1]["loss"]) if train else math.nan
        validation = _final_validation(out_dir, {})
    wall = time.perf_counter() - started
    model = ModelConfig.from_dict(json.loads((out_dir / "model.json").read_text()))
    tokens = steps * sweep.tokens_per_step
    seq_len = sweep.config.data.seq_len
    width = model.num_heads * model.head_size
    return {
        "id": point.id,
        "num_layers": point.shape.num_layers,
        "hidden_size": point.shape.hidden_size,
        "num_heads": point.shape.num_heads,
        "ffn_size": point.shape.ffn_size,
        "params": point.params,
        "params_total": build_model(model, device="meta").num_parameters(),
        "tokens": tokens,
        "steps": steps,
        "batch_size": sweep.config.train.batch_size,
        "seq_len": seq_len,
        "flops": training_flops(point.params, tokens, model.num_layers, seq_len, width),
        "budget_kind": point.budget_kind,
        "budget": point.budget,
        "loss": float(validation["loss"]),
        "eval_windows": validation.get("eval_windows"),
        "split_windows": validation.get("split_windows"),
        "train_loss": None if math.isnan(train_loss) else train_loss,
        "wall_seconds": round(wall, 3),
        "out_dir": str(out_dir),
    }


def pending(sweep: Sweep) -> list[SweepPoint]:
    """The points without a row in the sweep's ``results.jsonl``."""
    done = {row.get("id") for row in read_results(sweep.results_path, quiet=True)}
    return [p for p in sweep.points if p.id not in done]


def run_sweep(
    sweep: Sweep,
    torchrun: int | None = None,
    progress: bool = True,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every point not yet in ``results.jsonl`` (appending a row after each) and
    return all rows of the file. The sweep folder is locked meanwhile."""
    from tqdm.auto import tqdm

    with claim_run_folder(sweep.out_dir, "sweep", sources=sweep.config.data.corpus):
        repair_jsonl(sweep.results_path)
        sweep.train_tokenizer()
        todo = pending(sweep)
        done = len(sweep.points) - len(todo)
        bar = tqdm(
            total=len(sweep.points), initial=done, desc="sweep", unit="point", disable=not progress
        )
        with bar:
            for point in _smallest_first(todo):
                bar.set_postfix_str(point.id)
                row = run_point(sweep, point, torchrun)
                _append(sweep.results_path, row)
                if on_row is not None:
                    on_row(row)
                bar.update(1)
        return read_results(sweep.results_path)


def _smallest_first(points: list[SweepPoint]) -> Iterator[SweepPoint]:
    """Cheapest points first: a sweep cut short still has a spread of sizes."""
    yield from sorted(points, key=lambda p: (p.flops, p.id))
