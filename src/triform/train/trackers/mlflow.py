"""MLflow (``pip install 'triform[mlflow]'``): one MLflow run per training run.

The run goes to the tracking server or store of ``$MLFLOW_TRACKING_URI`` (MLflow's own
default when unset), in the experiment ``$MLFLOW_EXPERIMENT_NAME`` (default ``triform``,
created when missing), named after the run folder. Metrics are logged as ``<split>/<name>``
at their step; the run config as parameters (``section.key``, values cut to 500 characters)
and whole as the artifact ``run_config.json``; samples as ``text/<tag>/step-N.txt``
artifacts. A resumed run is a new MLflow run that starts at its checkpoint's step.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from triform.errors import TriformError
from triform.train.trackers.base import flat_config, numbers, run_name

DEFAULT_EXPERIMENT = "triform"
PARAM_CHARS = 500  # the shortest parameter value every MLflow version stores
PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch call


def _first_sentence(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {text.split('; ')[0].split('. ')[0][:200]}"


class MlflowTracker:
    """An MLflow run, written through ``MlflowClient`` (no global active run)."""

    package = "mlflow"
    extra = "mlflow"
    required = True

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    @classmethod
    def open(cls, run_dir: Path, initial_step: int = 0) -> MlflowTracker:
        from mlflow.tracking import MlflowClient

        name = run_name(run_dir, initial_step)
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)
        try:
            client = MlflowClient()
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(experiment)
            tags = {"mlflow.source.name": "triform", "triform.run_dir": str(run_dir.resolve())}
            run = client.create_run(experiment_id, run_name=name, tags=tags)
        except Exception as err:  # MLflow raises its own kinds (bad URI, no server, ...)
            import mlflow

            raise TriformError(
                f"mlflow could not start a run at {mlflow.get_tracking_uri()} "
                f"({_first_sentence(err)}); set MLFLOW_TRACKING_URI to a tracking server or "
                "store"
            ) from None
        return cls(client, run.info.run_id)

    def config(self, values: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        params = [
            Param(key, str(value)[:PARAM_CHARS]) for key, value in flat_config(values).items()
        ]
        for start in range(0, len(params), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[start : start + PARAMS_PER_BATCH])
        self.client.log_dict(self.run_id, dict(values), "run_config.json")

    def log(self, step: int, metrics: Mapping[str, Any], split: str) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(f"{split}/{name}", float(value), now, step)
            for name, value in numbers(metrics).items()
        ]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def text(self, step: int, tag: str, text: str) -> None:
        self.client.log_text(self.run_id, text, f"text/{tag}/step-{step:06d}.txt")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
