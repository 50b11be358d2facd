"""After success, an exception, SIGKILL of the workload and SIGKILL of the parent, nothing of
a container remains: no process, no mount, no file descriptor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pytest_isolate.runtime import Resources, Spec, SpecError, run, run_command
from tests.conftest import WAIT, sleeps_with, wait_until

pytestmark = pytest.mark.usefixtures("no_leftovers")


def test_success_and_exception_leave_nothing():
    assert run(Spec(), lambda: 1).value == 1
    assert run(Spec(), lambda: 1 / 0).error.type == "ZeroDivisionError"


def test_sigkill_of_the_workload_leaves_nothing():
    r = run(Spec(), lambda: os.kill(os.getpid(), signal.SIGKILL))
    assert r.signal == signal.SIGKILL


def _wait_gone(marker: str) -> list[int]:
    wait_until(lambda: not sleeps_with(marker))
    return sleeps_with(marker)


def test_sigkill_of_the_parent_kills_the_whole_container(tmp_path):
    marker = f"{time.time():.6f}"
    script = textwrap.dedent(f"""
        import sys
        from pytest_isolate.runtime import Spec
        from pytest_isolate.runtime.api import start_command
        p = start_command(Spec(), ["sh", "-c", "sleep 1000{marker} & sleep 1000{marker}"])
        print(p.pid, flush=True)
        p.communicate()
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": os.getcwd()})
    init_pid = int(parent.stdout.readline())
    started = wait_until(lambda: len(sleeps_with(marker)) == 2)
    assert started, f"the container's two sleeps did not start: {sleeps_with(marker)}"
    parent.kill()
    parent.wait()
    parent.stdout.close()
    assert _wait_gone(marker) == []
    assert _state(init_pid) in (None, "Z"), "the container's init outlived its parent"


def _state(pid: int) -> str | None:
    """None when gone; "Z" when dead and waiting for the host's init to reap it."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):  # gone between open and read
            return None
        if state == "Z" or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


@pytest.mark.parametrize("bad", [
    Spec(hostname="x" * 65), Spec(network="carrier-pigeon"), Spec(rootfs="/no/such/dir"),
    Spec(resources=Resources(cpu=0)), Spec(resources=Resources(memory=-1)),
])
def test_bad_input_raises_before_anything_is_created(bad):
    with pytest.raises(SpecError):
        run(bad, lambda: None)


def test_a_non_callable_workload_is_a_spec_error():
    with pytest.raises(SpecError, match="func"):
        run(Spec(), "not callable")  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="argv"):
        run_command(Spec(), "true")  # type: ignore[arg-type]
