"""Trackers (`train.report_to`): one interface, the MetricsLogger fanning out, W&B and MLflow
runs that hold the same metrics and run config as `metrics.jsonl`, offline; under DDP one
run, reported by rank 0."""

from __future__ import annotations

import importlib.util
import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest

from triform.cli import main
from triform.errors import ConfigError
from triform.train import trackers
from triform.train.metrics import MetricsLogger, read_metrics

HAS_WANDB = importlib.util.find_spec("wandb") is not None
HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None

TINY = [
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.ffn_size=64",
    "model.max_positions=64",
    "train.steps=6",
    "train.batch_size=4",
    "train.log_every=2",
    "train.eval_every=3",
    "train.eval_batches=1",
    "train.checkpoint_every=6",
    "train.progress=false",
    "train.sample_tokens=8",
    "data.seq_len=32",
    "data.workers=1",
    "data.val_fraction=0.2",
    "tokenizer.kind=char",
]


class Recorder:
    """A tracker that keeps what it is given."""

    package, extra, required = "json", "none", True
    opened: list[Recorder] = []

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    @classmethod
    def open(cls, run_dir: Path, initial_step: int = 0) -> Recorder:
        tracker = cls()
        cls.opened.append(tracker)
        return tracker

    def config(self, values: dict) -> None:
        self.calls.append(("config", values))

    def log(self, step: int, metrics: dict, split: str) -> None:
        self.calls.append(("log", (step, dict(metrics), split)))

    def text(self, step: int, tag: str, text: str) -> None:
        self.calls.append(("text", (step, tag, text)))

    def close(self) -> None:
        self.calls.append(("close", None))


def test_the_logger_fans_every_record_out_to_each_tracker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(trackers.TRACKERS, "recorder", Recorder)
    Recorder.opened.clear()
    log = MetricsLogger(
        tmp_path, 4, progress=False, report_to=["recorder"], run_config={"train": {"lr": 0.1}}
    )
    log.log(1, {"loss": 2.5, "lr": 0.1}, split="train")
    log.log(2, {"loss": math.nan, "note": "x"}, split="val")
    log.text(2, "sample", "Once upon")
    log.close()
    assert not (tmp_path / "tensorboard").exists()
    (tracker,) = Recorder.opened
    assert tracker.calls == [
        ("config", {"train": {"lr": 0.1}}),
        ("log", (1, {"loss": 2.5, "lr": 0.1}, "train")),
        ("log", (2, {"loss": None, "note": "x"}, "val")),  # as metrics.jsonl holds it
        ("text", (2, "sample", "Once upon")),
        ("close", None),
    ]
    # other ranks open no tracker; tensorboard=False takes TensorBoard out of report_to
    MetricsLogger(tmp_path / "r1", 4, enabled=False, report_to=["recorder"]).close()
    MetricsLogger(tmp_path / "tb", 4, progress=False, tensorboard=False).close()
    assert len(Recorder.opened) == 1 and not (tmp_path / "tb" / "tensorboard").exists()


def test_a_missing_tracker_package_is_one_line_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        trackers.importlib.util, "find_spec", lambda n: None if n == "wandb" else real(n)
    )
    with pytest.raises(
        ConfigError, match=r"needs the wandb package: pip install 'triform\[wandb\]'"
    ):
        trackers.check_report_to(["tensorboard", "wandb"])
    out = tmp_path / "run"
    args = ["pretrain", "--set", 'train.report_to=["wandb"]', "--set", f"train.out_dir={out}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'triform[wandb]'" in err
    assert not out.exists()  # refused when the config was read
    with pytest.raises(ConfigError, match="names 'mlflow' twice"):
        trackers.check_report_to(["mlflow", "mlflow"])


def _pretrain(out: Path, corpus: Path, report_to: str) -> list[dict]:
    args = ["pretrain", "--set", f"data.corpus={json.dumps(str(corpus))}"]
    for item in [*TINY, f"train.out_dir={out}", f"train.report_to={report_to}"]:
        args += ["--set", item]
    assert main(args) == 0
    return read_metrics(out)


def _expected(records: list[dict]) -> dict[tuple[int, str], float]:
    """(step, "<split>/<name>") -> value of every number in metrics.jsonl."""
    found = {}
    for r in records:
        for key, value in r.items():
            if key not in ("step", "split", "time") and isinstance(value, (int, float)):
                found[(r["step"], f"{r['split']}/{key}")] = value
    return found


def _wandb_records(path: Path) -> list[bytes]:
    """The records of a W&B ``.wandb`` file: a LevelDB-style log of 32 KiB blocks, each
    record a 7-byte header (CRC32, length, type: full / first / middle / last) and data."""
    data = path.read_bytes()
    if data[:4] != b":W&B":
        pytest.skip(f"unknown W&B file format in {path.name} (header {data[:4]!r})")
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # the rest of a block too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
    return records


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed: pip install 'triform[wandb]'")
def test_wandb_offline_run_holds_the_metrics_and_config(
    tmp_path: Path, doc_corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wandb.proto import wandb_internal_pb2 as pb

    monkeypatch.setenv("WANDB_MODE", "offline")  # no account, no network
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    (tmp_path / "wandb-dir").mkdir()
    out = tmp_path / "run"
    records = _pretrain(out, doc_corpus, '["wandb"]')
    assert not (out / "tensorboard").exists()
    (file,) = (tmp_path / "wandb-dir").glob("wandb/offline-run-*/run-*.wandb")
    logged: dict[tuple[int, str], float] = {}
    config: dict[str, Any] = {}
    texts = 0
    for raw in _wandb_records(file):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
            step = int(items["_step"])
            texts += any(k.startswith("sample/") for k in items)
            for key, value in items.items():
                if key.split("/")[0] in ("train", "val"):
                    logged[(step, key)] = json.loads(value)
        elif kind in ("run", "config"):
            update = record.run.config.update if kind == "run" else record.config.update
            config.update({i.key: json.loads(i.value_json) for i in update})
    expected = _expected(records)
    assert expected and logged.keys() == expected.keys()
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, rel=1e-12)
    assert texts == sum(r["split"] == "text" for r in records) > 0
    run = json.loads((out / "run.json").read_text())
    assert config["train"]["steps"] == run["train"]["steps"] == 6
    assert config["model"]["hidden_size"] == 32 and config["data"]["seq_len"] == 32


@pytest.mark.skipif(
    not HAS_MLFLOW, reason="mlflow is not installed (pip install 'triform[mlflow]')"
)
def test_mlflow_file_store_run_holds_the_metrics_and_config(
    tmp_path: Path, doc_corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for this opt-in
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "trackers-test")
    out = tmp_path / "run"
    records = _pretrain(out, doc_corpus, '["mlflow", "tensorboard"]')
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    client = MlflowClient(store.as_uri())
    experiment = client.get_experiment_by_name("trackers-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    _assert_mlflow_run_holds(client, run, records)
    config = json.loads((out / "run.json").read_text())
    assert run.data.params["train.steps"] == "6"
    assert run.data.params["model.hidden_size"] == str(config["model"]["hidden_size"])
    stored = Path(client.download_artifacts(run.info.run_id, "run_config.json", str(tmp_path)))
    assert json.loads(stored.read_text())["train"] == config["train"]
    samples = client.list_artifacts(run.info.run_id, "text/sample")
    assert len(samples) == sum(r["split"] == "text" for r in records) > 0


@pytest.mark.skipif(
    not HAS_MLFLOW, reason="mlflow is not installed (pip install 'triform[mlflow]')"
)
def test_two_processes_report_one_run_from_rank_zero(
    tmp_path: Path, doc_corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under DDP only rank 0 reports: one MLflow run and one TensorBoard log, holding what
    metrics.jsonl holds."""
    import torch.distributed as dist
    from mlflow.tracking import MlflowClient

    from launch import launch

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("needs the gloo backend")
    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "two-processes")
    out = tmp_path / "run"
    args = ["pretrain", "--set", f"data.corpus={json.dumps(str(doc_corpus))}"]
    items = [*TINY, f"train.out_dir={out}", 'train.report_to=["mlflow", "tensorboard"]',
             'train.parallel="ddp"', "train.threads=1"]  # fmt: skip
    for item in items:
        args += ["--set", item]
    ranks = launch(args, tmp_path / "logs")
    assert [r["rc"] for r in ranks] == [0, 0], ranks
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    client = MlflowClient(store.as_uri())
    experiment = client.get_experiment_by_name("two-processes")
    (run,) = client.search_runs([experiment.experiment_id])
    _assert_mlflow_run_holds(client, run, read_metrics(out))


def _assert_mlflow_run_holds(client: Any, run: Any, records: list[dict]) -> None:
    """The MLflow ``run`` holds every number of ``records`` (metrics.jsonl), at its step."""
    expected = _expected(records)
    logged = {
        (m.step, key): m.value
        for key in run.data.metrics
        for m in client.get_metric_history(run.info.run_id, key)
    }
    assert expected and logged.keys() == expected.keys()
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, rel=1e-12)
