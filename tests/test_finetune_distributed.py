"""Fine-tuning on two gloo processes (CPU), as under ``torchrun``: every step's batch split
over the ranks, the same model as on one process, rank 0 alone evaluating, saving ``best/``
and printing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from launch import launch
from test_finetune import family_tokenizers, keyword_rows, write_jsonl
from triform.cli import main
from triform.train.metrics import read_metrics

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()), reason="needs the gloo backend"
    ),
]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ft")
    tokenizer = family_tokenizers(folder)["bert"]
    for name, rows in (("train", keyword_rows(36, 0)), ("dev", keyword_rows(12, 1))):
        write_jsonl(folder / f"{name}.jsonl", rows)
    path = folder / "ft.toml"
    path.write_text(
        f"""
[model]
source = "preset:bert-tiny"
tokenizer = "{tokenizer}"
[model.overrides]
hidden_size = 32
num_layers = 2
num_heads = 2
ffn_size = 64
dropout = 0.0
attention_dropout = 0.0
max_positions = 64
[task]
kind = "classification"
train = "{folder}/train.jsonl"
validation = "{folder}/dev.jsonl"
max_length = 16
[train]
epochs = 2
batch_size = 8
grad_accum = 2
lr = 3e-3
eval_every = 3
log_every = 1
progress = false
tensorboard = false
threads = 1
precision = "fp32"
"""
    )
    return path


def _args(config: Path, out: Path) -> list[str]:
    return ["finetune", str(config), "--set", f"train.out_dir={json.dumps(str(out))}"]


def test_two_processes_fine_tune_like_one(config: Path, tmp_path: Path) -> None:
    one = tmp_path / "one"
    assert main(_args(config, one)) == 0
    two = tmp_path / "two"
    ranks = launch(_args(config, two), tmp_path / "logs")
    assert [r["rc"] for r in ranks] == [0, 0], ranks
    assert "done:" in ranks[0]["out"] and not ranks[1]["out"].strip() and not ranks[1]["err"]
    assert "x 2 processes" in ranks[0]["out"]
    # 36 examples in steps of 8: the last batch (4) is split 2 + 2. The gradients are summed
    # in another order; Adam's normalisation lifts that rounding to ~1e-6 on tiny updates.
    for part in ("final", "best"):
        a = load_file(one / part / "model.safetensors")
        b = load_file(two / part / "model.safetensors")
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
    for split in ("train", "val"):
        a, b = read_metrics(one, split=split), read_metrics(two, split=split)
        assert [r["step"] for r in a] == [r["step"] for r in b]
        for x, y in zip(a, b, strict=True):
            assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
    assert json.loads((two / "results.json").read_text())["best_step"] is not None
