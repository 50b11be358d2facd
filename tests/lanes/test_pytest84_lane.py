"""The oldest supported pytest: the unit and acceptance suites again under pytest 8.4.2, in the
venv scripts/setup.sh builds (the suite itself runs on the newest pytest)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.conftest import require

PYTHON = Path("/opt/pytest-isolate/pytest84/bin/python")
REPO = Path(__file__).resolve().parents[2]


def test_unit_and_acceptance_pass_on_pytest_8_4():
    require(PYTHON.exists(), f"no pytest 8.4 venv at {PYTHON}: run scripts/setup.sh")
    version = subprocess.run([PYTHON, "-c", "import pytest; print(pytest.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version.startswith("8.4"), version
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout, whatever the venv points at
    proc = subprocess.run([PYTHON, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           "tests/unit", "tests/acceptance"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert re.search(r"\d+ passed", out) and " skipped" not in out, out
