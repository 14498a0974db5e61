"""A metric of your own: ``task.metric = "my_metrics.py:macro_f1"`` (a file, relative to the
config file's folder) or ``"my_package.metrics:macro_f1"`` (an importable module).

The function takes ``(predictions, references)``, two lists with one item per validation
row, as ``triform predict`` shows them: label names (classification kinds), numbers
(regression), lists of tags (tagging), answer texts (qa: each reference is the list of
accepted answers), generated texts (text-to-text), choice indices (multiple choice). It
returns a number, or a dict of numbers. It is computed at every evaluation beside the
kind's built-in metrics and logged under the function's name (a dict: under its keys); that
value (a dict: ``task.metric_key``, by default its first key) picks ``best/`` and drives early
stopping, larger being better unless ``task.metric_mode = "min"``.

Everything that can go wrong is a one-line error naming the metric, found before step 1
where possible: the module or file or function is not there or not callable when the config
is read; the function raises, returns something that is not a number or a dict of numbers,
or a name that is a built-in metric, when it is first called on the validation references
(as predictions too) before training starts.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from triform.errors import ConfigError, TriformError

_LOADED: dict[str, Callable[..., Any]] = {}


def is_custom(metric: str | None) -> bool:
    """Whether ``task.metric`` names a function (``module:function``) rather than a
    built-in metric."""
    return metric is not None and ":" in metric


def split_spec(spec: str) -> tuple[str, str]:
    """``(module or file, function)`` of ``module:function`` / ``path/file.py:function``."""
    where, _, name = spec.rpartition(":")
    if not where or not name.isidentifier():
        raise ConfigError(
            f"task.metric {spec!r} must be 'module:function' or 'path/to/file.py:function'"
        )
    return where, name


def _module(spec: str, where: str) -> Any:
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ConfigError(f"task.metric {spec!r}: no file {path}")
        module_spec = importlib.util.spec_from_file_location(f"triform_metric_{path.stem}", path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:
            message = f"task.metric {spec!r}: importing {path} raised {_said(err)}"
            raise ConfigError(message) from None
        return module
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as err:
        hint = ""
        if Path(where.replace(".", "/") + ".py").is_file():
            hint = f"; for the file here, write '{where.replace('.', '/')}.py:...'"
        raise ConfigError(f"task.metric {spec!r}: no module {err.name!r}{hint}") from None
    except Exception as err:
        raise ConfigError(f"task.metric {spec!r}: importing {where} raised {_said(err)}") from None


def load_function(spec: str) -> Callable[..., Any]:
    """The callable ``spec`` names (imported once per process), or a one-line
    :class:`ConfigError` naming the metric."""
    if spec not in _LOADED:
        where, name = split_spec(spec)
        module = _module(spec, where)
        function = getattr(module, name, None)
        if function is None:
            raise ConfigError(f"task.metric {spec!r}: {where} has no {name!r}")
        if not callable(function):
            raise ConfigError(f"task.metric {spec!r}: {name} is not callable")
        _LOADED[spec] = function
    return _LOADED[spec]


def _said(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [""])[0][:200]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass
class CustomMetric:
    """A loaded ``task.metric`` function, what it is logged as and which value decides."""

    spec: str
    function: Callable[..., Any]
    key: str | None = None  # task.metric_key; None: the first key of a dict
    builtin: Sequence[str] = ()  # the kind's own metric names, which it may not reuse

    @classmethod
    def load(cls, spec: str, key: str | None = None, builtin: Sequence[str] = ()) -> CustomMetric:
        return cls(spec, load_function(spec), key, tuple(builtin))

    @property
    def name(self) -> str:
        """The function's name: what a single number is logged as."""
        return split_spec(self.spec)[1]

    def __call__(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        """The function's values as ``{name: float}``; a one-line :class:`TriformError`
        naming the metric when it raises or returns anything else."""
        try:
            result = self.function(predictions, references)
        except Exception as err:
            raise TriformError(f"task.metric {self.spec!r} raised {_said(err)}") from None
        if _number(result):
            values = {self.name: float(result)}
        elif isinstance(result, dict) and result and all(_number(v) for v in result.values()):
            values = {str(k): float(v) for k, v in result.items()}
        else:
            shown = repr(result)
            shown = shown if len(shown) < 80 else shown[:77] + "..."
            raise TriformError(
                f"task.metric {self.spec!r} returned {shown}, not a number or a dict of numbers"
            )
        clash = [name for name in values if name in self.builtin]
        if clash:
            raise TriformError(
                f"task.metric {self.spec!r} reports {clash[0]!r}, a built-in metric of the "
                "task: rename the function (or the key)"
            )
        if self.key is not None and self.key not in values:
            raise TriformError(
                f"task.metric {self.spec!r} returned no {self.key!r} (task.metric_key); "
                f"it has {', '.join(values)}"
            )
        return {k: (v if math.isfinite(v) else math.nan) for k, v in values.items()}

    def chosen(self, values: dict[str, float]) -> str:
        """The name of the value that picks ``best/``: ``key``, or the first one."""
        return self.key if self.key is not None else next(iter(values))


def shown(task: Any, predictions: list[Any], rows: list[Any]) -> tuple[list[Any], list[Any]]:
    """Predictions and the rows' references as ``triform predict`` shows them (label names
    rather than indices)."""
    references = [task.show(r) for r in task.references(rows)]
    return [task.show(p) for p in predictions], references


def start_custom_metric(
    cfg: Any, task: Any, rows: list[Any], builtin: Sequence[str]
) -> tuple[CustomMetric, str]:
    """The ``task.metric`` function of a run (``cfg``: its ``[task]``; ``builtin``: the kind's
    own metric names) and the name of the value that picks ``best/``. It is called once on
    the validation ``rows``' references (as predictions too: for qa, each row's first answer)
    so that a function that fails says so before step 1."""
    metric = CustomMetric.load(cfg.metric, cfg.metric_key, [*builtin, "loss"])
    if not rows or not task.has_targets(rows):
        return metric, cfg.metric_key or metric.name
    references = [task.show(r) for r in task.references(rows)]
    predictions = [r[0] if isinstance(r, list) and task.kind == "qa" else r for r in references]
    return metric, metric.chosen(metric(predictions, references))
