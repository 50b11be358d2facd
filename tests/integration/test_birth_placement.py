"""A child forked straight into its cgroup (cgroup v2, clone3 CLONE_INTO_CGROUP), and one that
moves itself there on cgroup v1: the kernel, not our bookkeeping, says where it landed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from pytest_isolate.runtime.cgroups import own_v2_dir
from tests.conftest import NO_DELEGATION, require, require_caps

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def v2_dir():
    base = own_v2_dir()
    writable = base is not None and os.access(base, os.W_OK)
    if os.geteuid() != 0 and not writable:
        pytest.skip(NO_DELEGATION)
    require(writable, "no writable cgroup2 directory (clone3 CLONE_INTO_CGROUP places only on v2)")
    path = os.path.join(base, f"pti-{os.getpid()}-birth")
    os.mkdir(path)
    yield path
    os.rmdir(path)


# Both run in a fresh interpreter: clone3 is used only by a single-threaded process, and this
# pytest process may hold other tests' threads.
FORK_INTO = textwrap.dedent("""
    import ctypes, os, random, sys, threading
    from pytest_isolate.runtime import syscalls as sc
    assert sc.can_fork_into_cgroup(), "clone3 is refused here"
    fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
    r, w = os.pipe()
    parent_random = random.getstate()
    pid = sc.fork_into_cgroup(fd)
    if pid == 0:
        try:
            with open("/proc/self/cgroup") as f:
                where = next(line for line in f if line.startswith("0::")).strip()
            cached = ctypes.c_int.from_address(sc._pylibc.pthread_self() + sc._tid_offset())
            facts = [where, cached.value == os.getpid() == threading.get_native_id(),
                     threading.current_thread() is threading.main_thread(),
                     random.getstate() != parent_random]  # random's at-fork reseed ran
            os.write(w, repr(facts).encode())
        finally:
            os._exit(0)
    os.close(w)
    print(os.read(r, 4096).decode())
    assert os.waitpid(pid, 0)[1] == 0
""")


def _python(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": REPO, **(env or {})})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip()


def test_fork_into_cgroup_gives_a_child_born_there_with_pythons_fork_bookkeeping(v2_dir):
    where, same_tid, main_thread, reseeded = eval(_python(FORK_INTO, v2_dir))
    assert where.endswith("/" + os.path.basename(v2_dir)), where
    assert same_tid, "glibc's cached thread id was not updated in the child"
    assert main_thread and reseeded, "Python's at-fork bookkeeping did not run"


PLACEMENT = textwrap.dedent("""
    import time
    from pytest_isolate.runtime import Resources, Spec, run
    from pytest_isolate.runtime.cgroups import _detect, spares
    from pytest_isolate.runtime.cgroups.v1 import V1Cgroup
    from pytest_isolate.runtime.cgroups.v2 import V2Cgroup
    writes = []
    for driver in (V1Cgroup, V2Cgroup):
        real = driver.add_process
        driver.add_process = lambda self, pid, real=real: (writes.append(pid), real(self, pid))

    def busy():
        end = time.thread_time() + 0.05
        while time.thread_time() < end:
            pass
        return 7
    try:
        r = run(Spec(resources=Resources(pids=64)), busy)
    finally:
        spares.flush()
    assert r.unwrap() == 7
    print(_detect()[0], len(writes), r.stats.cpu_seconds)
""")


@pytest.mark.parametrize("warm", ["warm", "cold"])
def test_a_capped_container_joins_its_cgroup_at_birth_on_v2_and_by_itself_on_v1(warm):
    require_caps()
    env = {} if warm == "warm" else {"PYTEST_ISOLATE_NO_WARM": "1"}
    mode, writes, cpu = _python(PLACEMENT, env=env).split()
    # Its cgroup counted the workload's CPU time: it ran there.
    assert float(cpu) >= 0.04, f"{mode} {warm}: the workload's CPU time was not counted"
    # No write of this process's placed it: born there (v2), or it moved itself (v1).
    assert writes == "0", f"{mode} {warm}: placed by this process's cgroup.procs write"


def test_cleanup_finds_a_dead_runs_cgroup_on_a_controller_less_cgroup2_mount(v2_dir):
    # v2_dir's parent is this process's cgroup2 directory; on a hybrid host it has no
    # controllers, yet a killed bench or test may leave a `pti-` directory there.
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = os.path.join(os.path.dirname(v2_dir), f"pti-{dead.pid}-birth")
    os.mkdir(left)
    try:
        cli = subprocess.run([sys.executable, "-m", "pytest_isolate", "cleanup"],
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO})
        assert cli.returncode == 0, cli.stderr
        assert not os.path.exists(left), cli.stdout
    finally:
        if os.path.exists(left):
            os.rmdir(left)
