"""A suite written by others (six 1.17.0's test_six.py, 200 tests, from PyPI's sdist, fetched
by scripts/setup.sh) has the same outcome for every test with --isolate=all as without."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.conftest import can_contain, require

SDIST = Path("/opt/pytest-isolate/real-suite/six-1.17.0.tar.gz")


def _outcomes(junit: Path) -> dict[str, str]:
    out = {}
    for case in ET.parse(junit).iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        out[f"{case.get('classname')}::{case.get('name')}"] = kinds[0] if kinds else "passed"
    return out


def test_six_suite_has_the_same_outcomes_isolated(tmp_path):
    ok, reason = can_contain()
    require(ok, reason)
    require(SDIST.exists(), f"{SDIST} is missing: run scripts/setup.sh")
    with tarfile.open(SDIST) as tar:
        tar.extractall(tmp_path, filter="data")
    suite = tmp_path / "six-1.17.0"
    runs = {}
    for name, extra in (("plain", []), ("isolated", ["--isolate=all"])):
        junit = tmp_path / f"{name}.xml"
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "test_six.py", f"--junit-xml={junit}", *extra],
                              cwd=suite, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
        runs[name] = _outcomes(junit)
    assert len(runs["plain"]) >= 200
    assert runs["isolated"] == runs["plain"]
