"""Resource caps on the real kernel: each cap is hit and reported, and no cgroup remains."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pytest_isolate.runtime import Resources, SetupError, Spec, UnsupportedError, run, run_command
from pytest_isolate.runtime.cgroups import own_cgroup_dirs, spares, writable_controllers
from tests.conftest import require_caps, sleeps_with


def _our_cgroups(owner: int | None = None) -> list[str]:
    prefix = f"pti-{owner or os.getpid()}-"
    return [os.path.join(d, n) for d in set(own_cgroup_dirs().values()) if os.path.isdir(d)
            for n in os.listdir(d) if n.startswith(prefix)]


@pytest.fixture
def caps():
    require_caps()
    yield
    spares.flush()  # the spare made ahead and the last container's, removed in the background
    assert _our_cgroups() == [], "a cgroup outlived its container"


def _busy(seconds: float) -> float:
    """Spin for `seconds` of wall time; the CPU time the loop itself got."""
    cpu0 = time.process_time()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return time.process_time() - cpu0


@pytest.mark.usefixtures("caps")
def test_cpu_cap_limits_a_busy_loop_to_its_share():
    r = run(Spec(resources=Resources(cpu=0.3)), _busy, 1.0)
    assert 0.2 <= r.unwrap() <= 0.4, r
    # the cgroup's figure covers the loop plus the container's own setup
    assert r.stats.cpu_seconds >= r.value * 0.95, r.stats
    assert r.stats.throttled_periods > 0 and r.stats.throttled_seconds > 0


@pytest.mark.usefixtures("caps")
def test_memory_cap_exceeded_is_reported_as_oom_kill():
    r = run(Spec(resources=Resources(memory="64M")), lambda: len(bytearray(400 << 20)))
    assert r.oom_killed and r.signal == signal.SIGKILL and not r.returned
    assert 60 << 20 <= r.stats.memory_peak <= 64 << 20
    assert "OOM" in r.describe()


@pytest.mark.usefixtures("caps")
def test_pids_cap_stops_a_fork_bomb_and_the_host_still_forks():
    def bomb():
        n = 0
        try:
            while n < 10_000:
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                n += 1
        except BlockingIOError:
            return n
        return n
    r = run(Spec(resources=Resources(pids=32)), bomb)
    assert r.pids_limited and r.value < 32
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0


@pytest.mark.usefixtures("caps")
def test_timeout_kills_the_workload_and_its_sleeping_grandchild():
    marker = f"{time.time():.6f}"
    t0 = time.monotonic()
    r = run_command(Spec(resources=Resources(timeout=1, pids=16)),
                    ["sh", "-c", f"(sleep 1000{marker} &); sleep 1000{marker}"])
    assert r.timed_out and time.monotonic() - t0 < 3
    assert not sleeps_with(marker)


@pytest.mark.usefixtures("caps")
def test_inside_its_cgroup_namespace_the_container_sees_root():
    def cgroups():
        with open("/proc/self/cgroup") as f:
            return sorted({line.strip().split(":", 2)[2] for line in f})
    assert run(Spec(resources=Resources(cpu=1, memory="256M", pids=64)), cgroups).value == ["/"]


@pytest.mark.usefixtures("caps")
def test_figures_are_there_for_a_capped_run_and_absent_without_caps():
    capped = run(Spec(resources=Resources(memory="128M")), _busy, 0.05)
    assert capped.stats.cpu_seconds > 0 and capped.stats.memory_peak > 0
    assert run(Spec(), lambda: None).stats.cpu_seconds is None


@pytest.mark.usefixtures("caps")
def test_end_leaves_the_figures_to_wait_and_release_retires_the_cgroup():
    # The plugin's runner forks the next test between end() and wait(): the figures read then
    # are the ended container's, whole; and a caller that only calls release() still gets its
    # cgroup removed (the caps fixture checks that none is left).
    from pytest_isolate.runtime import start

    proc = start(Spec(resources=Resources(memory="128M")), _busy, 0.05)
    proc.end()
    assert proc.stats.cpu_seconds is None  # not read yet
    result = proc.wait()
    assert result.value > 0 and result.stats.cpu_seconds >= result.value * 0.5
    assert result.stats.memory_peak > 0
    other = start(Spec(resources=Resources(memory="128M")), lambda: None)
    other.end()
    other.release()
    assert other.stats.memory_peak > 0


def _in_cgroup(func, *args, memory: str = "256M"):
    """Run func in a container with a memory cap: (its cgroup's driver, its Result)."""
    from pytest_isolate.runtime import start

    proc = start(Spec(resources=Resources(memory=memory)), func, *args)
    result = proc.wait()
    return proc._launch.cgroup, result


def _uncached_file(path: str, size: int) -> str:
    """A file of `size` bytes that is not in the page cache (its pages are charged to the
    first cgroup that reads them)."""
    with open(path, "wb") as f:
        f.write(b"x" * size)
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return path


def _read_file(path: str) -> int:
    with open(path, "rb") as f:
        return len(f.read())


@pytest.mark.usefixtures("caps")
def test_an_ended_containers_cgroup_is_reused_and_the_figures_stay_each_containers_own(
        tmp_path):
    from pytest_isolate.runtime.cgroups.v2 import V2Cgroup

    busy, first = _in_cgroup(lambda: (_busy(0.3), len(bytearray(64 << 20)))[0])
    assert first.stats.cpu_seconds >= 0.2 and first.stats.memory_peak >= 64 << 20
    later = [_in_cgroup(lambda: None) for _ in range(3)]
    reused = [r for driver, r in later if driver.directories() == busy.directories()]
    if isinstance(busy, V2Cgroup):  # a new cgroup for each container (V2Cgroup.recycle)
        assert reused == [], "cgroup v2 cannot reset the peak on this kernel"
        reused = [r for _, r in later]
    assert reused, "the first container's cgroup was not reused"
    # what the first container ran and charged is not counted again (relative bounds: a
    # slow guest's trivial container costs more than a tenth of a second)
    assert reused[0].stats.cpu_seconds < first.stats.cpu_seconds - 0.15, reused[0].stats
    assert 0 < reused[0].stats.memory_peak < first.stats.memory_peak - (32 << 20)
    # Not reused: a cgroup still charged with more than RECYCLE_LEFTOVER (the page cache of
    # a host file its container read), and one whose container hit its cap.
    read, r = _in_cgroup(_read_file, _uncached_file(str(tmp_path / "f"), 4 << 20))
    assert r.unwrap() == 4 << 20
    oom, r = _in_cgroup(lambda: len(bytearray(400 << 20)), memory="64M")
    assert r.oom_killed
    after = [_in_cgroup(lambda: None)[0].directories() for _ in range(3)]
    after += [_in_cgroup(lambda: None, memory="64M")[0].directories() for _ in range(3)]
    assert read.directories() not in after, "a cgroup left charged was reused"
    assert oom.directories() not in after, "a cgroup whose container hit its cap was reused"


@pytest.mark.usefixtures("caps")
@pytest.mark.parametrize("warm", ["warm", "cold"])
def test_a_failed_placement_kills_the_container_and_leaves_no_cgroup(monkeypatch, warm):
    # On v1 the container's first process joins itself (warm: the workload, cold: init) and
    # reports why it could not; on v2, with birth in place refused here, this process writes
    # its pid, and raises.
    from pytest_isolate.runtime.cgroups.v1 import V1Cgroup
    from pytest_isolate.runtime.cgroups.v2 import V2Cgroup

    nowhere = "/sys/fs/cgroup/pti-refused-by-the-test"
    for driver in (V1Cgroup, V2Cgroup):
        monkeypatch.setattr(driver, "procs_files", lambda self: [f"{nowhere}/cgroup.procs"])
        monkeypatch.setattr(driver, "birth_dir", lambda self: None)  # placed by a write
    monkeypatch.setattr(V1Cgroup, "self_join_files", lambda self: [f"{nowhere}/tasks"])
    if warm == "cold":
        monkeypatch.setenv("PYTEST_ISOLATE_NO_WARM", "1")
    with pytest.raises(SetupError, match=f"join cgroup: {nowhere}/[a-z.]+: .*No such file"
                       ) as info:
        run(Spec(resources=Resources(pids=64)), int, 7)
    assert info.value.errno == errno.ENOENT
    # the caps fixture checks that no cgroup of this process remains


@pytest.mark.usefixtures("caps")
def test_a_cgroup_left_by_a_killed_parent_is_removed_by_cleanup():
    script = textwrap.dedent("""
        from pytest_isolate.runtime import Spec, Resources
        from pytest_isolate.runtime.api import start_command
        p = start_command(Spec(resources=Resources(pids=8)), ["sleep", "1000"])
        print(p.pid, flush=True)
        p.communicate()
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    parent.stdout.readline()
    owner = parent.pid
    assert _our_cgroups(owner), "the capped container has no cgroup"
    parent.kill()
    parent.wait()
    parent.stdout.close()
    left = _our_cgroups(owner)
    assert left, "expected the dead run's cgroup to remain until cleanup"
    cli = subprocess.run([sys.executable, "-m", "pytest_isolate", "cleanup"],
                         capture_output=True, text=True, env={**os.environ,
                                                              "PYTHONPATH": os.getcwd()})
    assert cli.returncode == 0
    assert _our_cgroups(owner) == []
    assert all(path in cli.stdout for path in left)


def test_caps_where_no_cgroup_is_writable_raise_unsupported_with_the_fix():
    def attempt() -> str:
        try:
            run(Spec(resources=Resources(memory="64M")), lambda: None)
        except UnsupportedError as e:
            return e.fix
        return "no error"
    if not writable_controllers() >= {"cpu", "memory", "pids"}:
        fix = attempt()
    else:  # as root: become nobody in a child, where no cgroup is writable
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                os.write(w, attempt().encode())
            finally:
                os._exit(0)
        os.close(w)
        fix = os.read(r, 4096).decode()
        os.close(r)
        os.waitpid(pid, 0)
    assert "Delegate=yes" in fix and "root" in fix


def _count_applies(monkeypatch) -> list[str]:
    from pytest_isolate.runtime.cgroups.v1 import V1Cgroup
    from pytest_isolate.runtime.cgroups.v2 import V2Cgroup

    applied: list[str] = []
    for driver in (V1Cgroup, V2Cgroup):
        monkeypatch.setattr(driver, "apply", lambda self, real=driver.apply: (
            applied.append(self.directories()[0]), real(self))[1])
    return applied


def _fork_bomb_stopped() -> bool:
    pids = []
    try:
        for _ in range(100):
            pid = os.fork()
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            pids.append(pid)
    except BlockingIOError:
        return True
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    return False


@pytest.mark.usefixtures("caps")
def test_after_the_first_the_zygote_makes_each_capped_containers_cgroup(monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("warm containers (and so the zygote) are root's")
    applied = _count_applies(monkeypatch)
    spec = Spec(resources=Resources(pids=16))
    results = [run(spec, _fork_bomb_stopped) for _ in range(4)]
    assert [r.unwrap() for r in results] == [True] * 4  # each cap, wherever made, holds
    assert all(r.pids_limited for r in results)
    assert len(applied) == 1, f"made in this process: {applied}"


@pytest.mark.usefixtures("caps")
def test_a_cgroup_the_zygote_failed_to_make_is_made_in_process(monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("warm containers (and so the zygote) are root's")
    from pytest_isolate.runtime.cgroups.v1 import V1Cgroup
    from pytest_isolate.runtime.cgroups.v2 import V2Cgroup

    for driver in (V1Cgroup, V2Cgroup):  # a step that fails after the mkdir
        monkeypatch.setattr(driver, "plan_ahead", lambda self: (
            self.directories(), [(self.directories()[0] + "/no-such-file", "1")]))
    applied = _count_applies(monkeypatch)
    spec = Spec(resources=Resources(pids=16))
    results = [run(spec, _fork_bomb_stopped) for _ in range(3)]
    assert [r.unwrap() for r in results] == [True] * 3
    assert len(applied) == 3, "each failed chore must leave the claim to make its own"
    # the caps fixture checks that the zygote undid its half-made cgroups


@pytest.mark.usefixtures("caps")
def test_a_zygote_that_dies_with_a_cgroup_asked_of_it_is_replaced_leaving_none():
    if os.geteuid() != 0:
        pytest.skip("warm containers (and so the zygote) are root's")
    from pytest_isolate.runtime.warm import pool as warm

    spec = Spec(resources=Resources(pids=16))
    assert run(spec, int, 1).unwrap() == 1
    assert run(spec, int, 2).unwrap() == 2  # the next container's cgroup is now asked for
    dead = warm.pool_process()
    dead.kill()
    dead.wait()
    # Also when its last answer was sent before it died (the container it built died with
    # it): a new zygote builds this one.
    assert run(spec, int, 3).unwrap() == 3
    assert warm.pool_process() is not dead and warm.pool_process().poll() is None
    assert run(spec, int, 4).unwrap() == 4
    # the caps fixture checks that the cgroup the dead zygote may have made is gone
