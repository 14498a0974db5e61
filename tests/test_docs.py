"""The documentation stays true to the code: the configuration reference is regenerated from
the config classes and compared, every config key has a description, the README stays a
front door, and ``triform --version`` answers."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import triform
from triform.cli import main

ROOT = Path(__file__).parents[1]
README_MAX_LINES = 300


def _generator():
    spec = importlib.util.spec_from_file_location(
        "gen_config_reference", ROOT / "docs" / "gen_config_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def test_every_config_key_has_a_description():
    _, missing = _generator().generate()
    assert not missing, (
        "config keys without a description (add an attribute docstring right below the "
        "field):\n  " + "\n  ".join(missing)
    )


def test_configuration_reference_is_current():
    gen = _generator()
    text, _ = gen.generate()
    page = ROOT / "docs" / "configuration.md"
    assert page.is_file() and page.read_text(encoding="utf-8") == text, (
        f"docs/configuration.md is stale: run `{gen.COMMAND}` and commit the result"
    )


def test_reference_lists_every_section_and_objective():
    from triform.finetune.config import SECTIONS as FINETUNE_SECTIONS
    from triform.objectives import OBJECTIVES
    from triform.train.run_config import SECTIONS

    text, _ = _generator().generate()
    for section in (*SECTIONS, *FINETUNE_SECTIONS, "sweep"):
        assert f"### `[{section}]`" in text
    for name in OBJECTIVES:
        assert f'#### `name = "{name}"`' in text


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move detail to docs/"
    )


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"triform {triform.__version__}"


def test_python_m_triform_version():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "triform", "--version"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "triform 0.1.0"
