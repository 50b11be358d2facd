"""A run stopped by SIGTERM or SIGINT mid-test: pytest's interrupted summary, and nothing of
the run left (its containers' processes, its cgroups)."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import sleeps_with, wait_until

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_run_ends_interrupted_and_leaves_nothing(tmp_path, sig):
    marker = str(uuid.uuid4().int)[:8]
    (tmp_path / "test_long.py").write_text(textwrap.dedent(f"""
        import subprocess, time
        import pytest

        @pytest.mark.isolated
        def test_long():
            subprocess.Popen(["sleep", "1000{marker}"])
            time.sleep(60)

        def test_never_reached():
            pass
    """))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                             str(tmp_path)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not sleeps_with(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sleeps_with(marker), "the test never started its process"
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 2, out  # pytest's "interrupted"
    assert "KeyboardInterrupt" in out and "test_never_reached" not in out, out
    for _ in range(50):
        if not sleeps_with(marker):
            break
        time.sleep(0.1)
    assert sleeps_with(marker) == []
    assert glob.glob(f"/sys/fs/cgroup/*/pti-{proc.pid}-*") == []


def _left_of(pid: int) -> list[str]:
    """What a run with this pid left: cgroups, host links, its owner lock, its leases."""
    import json

    left = glob.glob(f"/sys/fs/cgroup/*/pti-{pid}-*") + glob.glob(
        f"/sys/fs/cgroup/*/*/*/pti-{pid}-*")
    left += [n for n in os.listdir("/sys/class/net") if n.startswith(f"pti{pid:x}x")]
    state = "/run/pytest-isolate" if os.geteuid() == 0 else f"/tmp/pytest-isolate-{os.geteuid()}"
    left += glob.glob(f"{state}/{pid}.lock")
    try:
        with open(f"{state}/leases.json") as f:
            left += [k for k, v in json.load(f).items() if v == pid]
    except (OSError, ValueError):
        pass
    return left


@pytest.mark.parametrize("workers", [None, 2], ids=["plain", "xdist-2"])
@pytest.mark.parametrize("heal", ["cleanup command", "next run"])
def test_after_sigkill_what_is_left_is_removed(tmp_path, heal, workers):
    """SIGKILL of pytest leaves cgroups, leases and its owner lock; the cleanup command, or
    the next run's start, removes them. With -n 2 the controller is killed: its workers get
    SIGTERM from the kernel (PDEATHSIG), end their tests at once and tear down what they
    can; the heal removes the rest."""
    marker = str(uuid.uuid4().int)[:8]
    caps = 'memory="64M"' if os.geteuid() == 0 else ""  # rootless on v1: no cgroup to cap
    (tmp_path / "test_long.py").write_text(textwrap.dedent(f"""
        import subprocess, time
        import pytest

        @pytest.mark.isolated({caps})
        @pytest.mark.parametrize("i", range({workers or 1}))
        def test_long(i, veth_pair):
            subprocess.Popen(["sleep", "1000{marker}"])
            time.sleep(60)
    """))
    (tmp_path / "test_next.py").write_text(
        "import pytest\n\n@pytest.mark.isolated\ndef test_next():\n    pass\n")
    pids_file = tmp_path / "pids"  # the run's processes: pytest, or controller and workers
    (tmp_path / "conftest.py").write_text(
        "import os\n\ndef pytest_configure(config):\n"
        f"    with open({str(pids_file)!r}, 'a') as f:\n        f.write(f'{{os.getpid()}}\\n')\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["-n", str(workers)] if workers else []
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                             *args, "test_long.py"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while len(sleeps_with(marker)) < (workers or 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(sleeps_with(marker)) == (workers or 1), "the tests never started"
    finally:
        proc.kill()  # SIGKILL: no teardown at all
        proc.wait()
    # the container dies with its parent (PDEATHSIG), a worker with its controller
    wait_until(lambda: not sleeps_with(marker))
    assert sleeps_with(marker) == []
    pids = [int(p) for p in pids_file.read_text().split()]
    wait_until(lambda: not any(os.path.exists(f"/proc/{p}") for p in pids))
    assert [p for p in pids if os.path.exists(f"/proc/{p}")] == [], "a worker outlived it"
    before = [x for p in pids for x in _left_of(p)]
    # With workers, each was interrupted by its SIGTERM and took its containers down; what
    # its own exit could not finish (a cgroup still busy) is the heal's, as for the plain run.
    if not workers and os.geteuid() == 0:
        assert before, "a killed run leaves cgroups and its lease (else this test checks nothing)"
    if heal == "cleanup command":
        out = subprocess.run([sys.executable, "-m", "pytest_isolate", "cleanup"], env=env,
                             capture_output=True, text=True, check=True).stdout
        assert "leftover(s) of dead runs removed" in out or not before, out
    else:
        out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                              "test_next.py"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, check=True).stdout
        if [x for x in before if not x.endswith(".lock")]:  # a stale lock goes silently
            assert "isolate: removed what killed runs left: " in out, out
    assert [x for p in pids for x in _left_of(p)] == [], before
