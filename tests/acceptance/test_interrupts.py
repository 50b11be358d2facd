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

from tests.conftest import sleeps_with

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
