"""Packaging: the sdist and the wheel build, and the wheel alone (in a fresh venv, no checkout
on its path) runs an isolated test and the CLI (scripts/wheel_smoke.sh)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_installs_into_a_fresh_venv_and_runs_an_isolated_test():
    require(importlib.util.find_spec("build") is not None,
            "the build package is not installed: pip install -e '.[dev]' (scripts/setup.sh)")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "wheel_smoke.sh")], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "wheel smoke test passed" in proc.stdout
