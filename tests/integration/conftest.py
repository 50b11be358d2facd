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

    def snapshot():
        warm.shutdown()
        rootfs.host_plan(split=False)  # its mount-table watch holds one fd for the process
        state.ensure_owner_lock()  # so does the lock that marks its cgroups as owned
        with open("/proc/self/mountinfo") as f:
            mounts = f.read()
        return mounts, sorted(os.listdir("/proc/self/fd"))
    before = snapshot()
    yield
    warm.shutdown()
    # shutdown() waits 1 s for the zygote, whose exit waits until its pid namespace is empty;
    # on a slow host (the UML guest) that can take longer. A zygote still there after 5 s
    # fails below.
    warm._reap_closed(timeout=5)
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
        assert pid == 0, f"an unreaped child {pid} is left"
        pytest.fail("a child process is still running")
    except ChildProcessError:
        pass
    after = snapshot()
    assert after[0] == before[0], "the host mount table changed"
    assert after[1] == before[1], "file descriptors leaked"


ROOT = os.geteuid() == 0
