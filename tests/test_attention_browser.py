"""The attention page in a real browser: headless Chromium opens it without script errors,
the drawing follows the layer and head asked for in the URL (the page writes a checksum of
the weights it drew, compared with the one computed here), a 12-layer page on 128 tokens
is drawn within 2 seconds, and a screenshot is saved. Skipped where no Chromium is found
(Debian: ``apt-get install chromium``), except under CI (``CI=true``), where ``.ci/run``
installs it: there a missing browser fails."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import triform
from triform.inference import attention
from triform.inference.attention_page import head_view_checksum, save_page

BROWSER = next(
    (
        found
        for name in ("chromium", "chromium-browser", "google-chrome", "chrome")
        if (found := shutil.which(name))
    ),
    None,
)
IN_CI = os.environ.get("CI", "").lower() == "true"
pytestmark = [
    pytest.mark.skipif(
        BROWSER is None and not IN_CI, reason="no chromium binary (apt-get install chromium)"
    ),
    pytest.mark.usefixtures("one_thread"),
]


@pytest.fixture(autouse=True)
def _browser_present() -> None:
    """Under CI the browser tests must run: a missing Chromium is a failure, not a skip."""
    if BROWSER is None:
        pytest.fail("CI=true and no chromium binary (apt-get install chromium)")


TEXT = "the animal was tired because it did not cross"


def _chromium(page: Path, fragment: str, profile: Path, *extra: str) -> str:
    """Run headless Chromium on ``page#fragment``; returns what it prints (the DOM)."""
    command = [
        BROWSER,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *extra,
        f"{page.as_uri()}#{fragment}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _status(page: Path, fragment: str, profile: Path) -> dict[str, str]:
    dom = _chromium(page, fragment, profile, "--dump-dom")
    tag = re.search(r'<div id="status"([^>]*)>', dom)
    assert tag is not None, dom[-2000:]
    status = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', tag.group(1)))
    errors = re.search(r'<pre id="errors">(.*?)</pre>', dom, re.S)
    assert status["errors"] == "0", errors.group(1) if errors else status
    assert status["ready"] == "1"
    return status


@pytest.fixture(scope="module")
def tokenizer():
    from triform.tokenizers import train_tokenizer

    return train_tokenizer([TEXT + " street"], kind="char", vocab_size=160, family="t5")


def test_switching_layer_and_head_changes_the_drawing(tokenizer, tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = triform.presets.get("t5-tiny", vocab_size=tokenizer.get_vocab_size())
    model = triform.build_model(config).eval()
    maps = attention(model, tokenizer, TEXT, target="tired")
    page = save_page(maps, tmp_path / "t5.html")
    seen = set()
    for kind, layer, head in (("cross", 1, 2), ("cross", 0, 3), ("encoder", 1, None)):
        fragment = f"kind={kind}&layer={layer}&head={'all' if head is None else head}"
        status = _status(page, fragment, tmp_path / "profile")
        assert status["view"] == f"{kind}/{layer}/{'all' if head is None else head}"
        expected = head_view_checksum(maps.attentions[kind], layer, head)
        assert int(status["checksum"]) == expected
        seen.add(expected)
    assert len(seen) == 3


def test_a_12_layer_page_on_128_tokens_opens_quickly_and_screenshots(
    tokenizer, tmp_path: Path
) -> None:
    from PIL import Image

    torch.manual_seed(0)
    config = triform.presets.get(
        "bert-tiny",
        vocab_size=tokenizer.get_vocab_size(),
        num_layers=12,
        num_heads=12,
        hidden_size=96,
        ffn_size=96,
    )
    model = triform.build_model(config).eval()
    text = (TEXT + " ") * 3
    maps = attention(model, tokenizer, text[:127])  # + </s>
    assert maps.attentions["encoder"].shape == (12, 12, 128, 128)
    page = save_page(maps, tmp_path / "big.html")
    status = _status(page, "layer=11&head=5", tmp_path / "profile")
    assert int(status["checksum"]) == head_view_checksum(maps.attentions["encoder"], 11, 5)
    assert int(status["load-ms"]) < 2000, status
    shot = tmp_path / "head-view.png"
    _chromium(
        page,
        "layer=3&head=1&query=10",
        tmp_path / "profile",
        f"--screenshot={shot}",
        "--window-size=1000,800",
    )
    with Image.open(shot) as image:
        assert image.size == (1000, 800)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 50  # something was drawn, not a blank page
