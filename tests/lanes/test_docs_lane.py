"""The documentation site builds with warnings as errors (broken links, pages left out of the
navigation, a diagram whose source does not render)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]


def test_the_docs_build_strict(tmp_path):
    import importlib.util
    import shutil

    require(importlib.util.find_spec("mkdocs") is not None,
            "mkdocs is not installed: pip install -e '.[docs]' (scripts/setup.sh does it)")
    require(shutil.which("dot") is not None,
            "Graphviz's dot is not installed: apt-get install graphviz (scripts/setup.sh)")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    site = tmp_path / "site"
    for page in ("tutorial", "figures", "changelog", "explanation/security"):
        assert (site / page / "index.html").exists(), page
    for diagram in ("warm-tree", "network", "test-time"):
        assert (site / "diagrams" / f"{diagram}.svg").read_text().lstrip().startswith("<?xml")
