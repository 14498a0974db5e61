"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Run a module with one intra-op thread (restored afterwards): for tensors and models
    this small, thread hand-offs cost far more than the arithmetic, the more so on a busy
    machine. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` skip, with the reason, on machines without a CUDA GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs them)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def save_model_folder():
    """A function writing ``model`` and ``tokenizer`` as a model folder (``model.json``,
    ``model.safetensors``, ``tokenizer.json``: what ``triform convert`` writes) and
    returning its path as a string."""
    import json
    from pathlib import Path

    from triform.runs import save_weights
    from triform.tokenizers import save_tokenizer

    def save(folder: Path, model: torch.nn.Module, tokenizer) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.json").write_text(json.dumps(model.config.to_dict()))
        save_weights(model, folder / "model.safetensors")
        save_tokenizer(tokenizer, folder / "tokenizer.json")
        return str(folder)

    return save


@pytest.fixture(scope="session")
def doc_corpus(tmp_path_factory: pytest.TempPathFactory):
    """A small real corpus every Python has: six documents of six ``pydoc`` help topics each
    (a folder of ``doc<i>.txt``), for tiny end-to-end pretraining runs."""
    from pydoc_data.topics import topics

    folder = tmp_path_factory.mktemp("doc_corpus")
    texts = list(topics.values())
    for i in range(6):
        (folder / f"doc{i}.txt").write_text("\n".join(texts[i * 6 : (i + 1) * 6]))
    return folder
