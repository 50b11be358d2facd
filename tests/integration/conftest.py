import gc
import os

import pytest

from tests.conftest import require_containers


@pytest.fixture(autouse=True)
def _needs_containers():
    require_containers()


@pytest.fixture
def no_leftovers():
    """Asserts that a test leaves no child process, open fd or host mount behind. The zygote
    (warm containers) is a deliberate helper of the process: it is shut down on both sides,
    so that what it leaves behind is checked too."""
    from pytest_isolate.runtime.host import state
    from pytest_isolate.runtime.kernel import mountinfo as rootfs
    from pytest_isolate.runtime.warm import pool as warm
    from pytest_isolate.runtime.warm import reaping

    def snapshot():
        # What an earlier test dropped unclosed (a socket in a traceback's cycle) is closed by
        # the collector whenever it runs: here, not in the middle of this test.
        gc.collect()
        warm.shutdown()
        rootfs.host_plan(split=False)  # its mount-table watch holds one fd for the process
        state.ensure_owner_lock()  # so does the lock that marks its cgroups as owned
        with open("/proc/self/mountinfo") as f:
            mounts = f.read()
        return mounts, _open_files()
    before = snapshot()
    yield
    warm.shutdown()
    # shutdown() waits 1 s for the zygote, whose exit waits until its pid namespace is empty;
    # on a slow host (the UML guest) that can take longer. A zygote still there after 5 s
    # fails below.
    reaping.reap_closed(timeout=5)
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
        assert pid == 0, f"an unreaped child {pid} is left"
        pytest.fail("a child process is still running")
    except ChildProcessError:
        pass
    after = snapshot()
    assert after[0] == before[0], "the host mount table changed"
    assert after[1] == before[1], (
        f"file descriptors changed: new {_diff(after[1], before[1])}, "
        f"gone {_diff(before[1], after[1])}")


def _open_files() -> dict[int, str]:
    """This process's fds and what each is open on (so that a leak names its file)."""
    files = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            files[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the fd listdir itself used
            pass
    return files


def _diff(a: dict[int, str], b: dict[int, str]) -> dict[int, str]:
    return {fd: path for fd, path in a.items() if b.get(fd) != path}


ROOT = os.geteuid() == 0
