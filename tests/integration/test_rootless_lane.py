"""The integration, acceptance and security batteries again, as user `nobody`: the rootless
paths (user namespaces), the isolated marker included.

Runs from root only. The unprivileged run needs an interpreter `nobody` can read (pyenv lives
under /root, mode 700): scripts/setup.sh builds one from Debian's /usr/bin/python3.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import require

ROOTLESS_PYTHON = os.environ.get("PYTEST_ISOLATE_ROOTLESS_PYTHON",
                                 "/opt/pytest-isolate/rootless-venv/bin/python")
NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
REPO = Path(__file__).resolve().parents[2]
# What rootless cannot do, and so may skip in that run (anything else must pass).
ALLOWED_SKIPS = ("rootless: mounting a tmpfs on the host needs root",
                 "rootless: no writable cgroup here (cgroup v1 has no delegation to users)",
                 "rootless: a veth to the host needs root",
                 "rootless: warm containers (and so the zygote) are root's",
                 "the battery's root half",
                 "rootless: a container on a network needs root",
                 "netem impairments (delay, jitter, loss, duplicate, reorder, corrupt): this "
                 "kernel has no netem qdisc (module sch_netem, CONFIG_NET_SCH_NETEM)")


def test_integration_and_acceptance_pass_as_nobody():
    if os.geteuid() != 0:
        pytest.skip("already rootless: this lane starts from root")
    require(shutil.which("setpriv") is not None, "setpriv (util-linux) is not installed")
    require(os.access(ROOTLESS_PYTHON, os.X_OK),
            f"no interpreter for the rootless run at {ROOTLESS_PYTHON}: run scripts/setup.sh")
    work = Path(tempfile.mkdtemp(prefix="pti-rootless-"))
    try:
        os.chmod(work, 0o755)
        shutil.copytree(REPO / "pytest_isolate", work / "pytest_isolate",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(REPO / "tests", work / "tests",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(REPO / "pyproject.toml", work / "pyproject.toml")
        for p in work.rglob("*"):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": str(work),
               "PYTEST_ISOLATE_STRICT": os.environ.get("PYTEST_ISOLATE_STRICT", "0"),
               "LANG": "C.UTF-8"}
        # The copy has no dist-info, so no entry point: PYTEST_PLUGINS loads the plugin, in
        # pytester's inner sessions too. Unless the interpreter has the project installed
        # (a developer's `pip install -e`): its entry point then imports the copy (PYTHONPATH
        # comes first) and a second registration by PYTEST_PLUGINS would be refused.
        if not _has_isolate_entry_point(work, env):
            env["PYTEST_PLUGINS"] = "pytest_isolate.plugin"
        proc = subprocess.run(
            [*AS_NOBODY, ROOTLESS_PYTHON, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
             "tests/integration", "tests/acceptance", "tests/security", "--deselect",
             "tests/integration/test_rootless_lane.py::test_integration_and_acceptance_pass_as_nobody"],
            cwd=work, env=env, capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert re.search(r"\d+ passed", out), out
    skips = re.findall(r"SKIPPED \[\d+\] [^:]+:\d+: (.*)", out)
    unexpected = [s for s in skips if s not in ALLOWED_SKIPS]
    assert not unexpected, out


def _has_isolate_entry_point(cwd: Path, env: dict[str, str]) -> bool:
    """Whether pytest, run as the lane runs it, would load an installed plugin by itself."""
    probe = ("import importlib.metadata as m; "
             "print(any(e.name == 'isolate' for e in m.entry_points(group='pytest11')))")
    out = subprocess.run([*AS_NOBODY, ROOTLESS_PYTHON, "-c", probe], cwd=cwd, env=env,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"
