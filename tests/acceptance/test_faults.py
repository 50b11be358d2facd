"""Faults of the host and of the run, as users see them: each ends the test it hit with an
error that names the cause and the fix (or, for a killed zygote, costs nothing), the next
test runs normally, and nothing is left. docs/how-to/troubleshoot.md has the table.

Each case runs its own pytest process: the faults (a low RLIMIT_NOFILE, a killed zygote, full
tmpfs mounts) must not reach this one."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from tests.conftest import require_caps, wait_until

REPO = Path(__file__).resolve().parents[2]
ROOT = os.geteuid() == 0


def _pytest(tmp_path: Path, source: str, *args: str, wrap: tuple[str, ...] = (),
            popen: bool = False):
    (tmp_path / "test_fault.py").write_text(textwrap.dedent(source))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PYTEST_ADDOPTS", None)
    argv = [*wrap, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA",
            "test_fault.py", *args]
    if popen:
        return subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def _outcomes(out: str) -> dict[str, str]:
    """test name -> PASSED/FAILED/ERROR from the -rA summary."""
    got = {}
    for line in out.splitlines():
        word, _, rest = line.partition(" test_fault.py::")
        if word in ("PASSED", "FAILED", "ERROR") and rest:
            got[rest.split()[0]] = word
    return got


@pytest.mark.parametrize("headroom", [0, 1, 2])
def test_emfile_fails_that_test_at_setup_naming_the_limit(tmp_path, headroom):
    # headroom: how many more files the process may open, so that the limit hits the report
    # files, the launcher's pipes or later
    _, out = _pytest(tmp_path, f"""
        import os, resource
        import pytest

        SAVED = resource.getrlimit(resource.RLIMIT_NOFILE)
        OPEN = []

        def files():
            # not the ended containers' network namespaces, held to be let go of in a batch
            out = []
            for fd in os.listdir("/proc/self/fd"):
                try:
                    link = os.readlink(f"/proc/self/fd/{{fd}}")
                except OSError:  # listdir's own, closed by now
                    continue
                if not link.startswith("net:"):
                    out.append(fd)
            return sorted(out)

        @pytest.mark.isolated
        def test_warm():
            pass

        def test_lower():
            OPEN.append(files())
            n = len(os.listdir("/proc/self/fd")) - 1
            resource.setrlimit(resource.RLIMIT_NOFILE, (n + {headroom}, SAVED[1]))

        @pytest.mark.isolated
        def test_hit():
            pass

        def test_restore():
            resource.setrlimit(resource.RLIMIT_NOFILE, SAVED)
            assert files() == OPEN[0], "the failed start leaked"

        @pytest.mark.isolated
        def test_next():
            pass
    """)
    assert "INTERNALERROR" not in out, out
    assert _outcomes(out) == {"test_warm": "PASSED", "test_lower": "PASSED",
                              "test_hit": "ERROR", "test_restore": "PASSED",
                              "test_next": "PASSED"}, out
    assert "EMFILE: Too many open files" in out and "RLIMIT_NOFILE soft limit" in out, out
    assert "hint: raise this process's open-file limit (ulimit -n" in out, out
    assert "Traceback" not in out and "launch.py" not in out, out  # the cause, not our stack


def test_a_killed_zygote_is_replaced_and_costs_no_test(tmp_path):
    if not ROOT:
        pytest.skip("rootless: warm containers (and so the zygote) are root's")
    code, out = _pytest(tmp_path, """
        import os, signal, threading, time
        import pytest
        from pytest_isolate.runtime.warm import pool

        @pytest.mark.isolated
        def test_first():
            pass

        def test_kill_it_idle():
            os.kill(pool.pool_process().pid, signal.SIGKILL)
            time.sleep(0.2)

        @pytest.mark.isolated
        def test_after_idle_kill():
            pass

        def test_kill_it_mid_build():
            # stopped, the zygote answers nothing: the next test's take waits on it, and the
            # kill lands while that container is asked for and not built
            zygote = pool.pool_process().pid
            os.kill(zygote, signal.SIGSTOP)
            threading.Timer(0.5, os.kill, (zygote, signal.SIGKILL)).start()

        @pytest.mark.isolated
        def test_after_mid_build_kill():
            pass

        @pytest.mark.isolated
        def test_next():
            assert os.getpid() == 2
    """)
    assert code == 0, out
    assert set(_outcomes(out).values()) == {"PASSED"} and len(_outcomes(out)) == 6, out


def test_the_killed_zygote_is_named_when_a_new_one_dies_too(tmp_path):
    if not ROOT:
        pytest.skip("rootless: warm containers (and so the zygote) are root's")
    _, out = _pytest(tmp_path, """
        import os, signal, time
        import pytest
        from pytest_isolate.runtime.warm import pool

        @pytest.mark.isolated
        def test_first():
            pass

        def test_break_it():
            os.kill(pool.pool_process().pid, signal.SIGKILL)
            time.sleep(0.2)  # dead by the next take, which then starts a new one
            # the replacement cannot start either: its interpreter is gone
            pool._Pool.__init__.__globals__["sys"].executable = "/nonexistent/python"

        @pytest.mark.isolated
        def test_hit():
            pass
    """)
    assert "INTERNALERROR" not in out, out
    assert _outcomes(out)["test_hit"] == "ERROR", out
    assert "the helper process that builds containers ahead was killed by SIGKILL" in out, out
    assert "hint: see what killed it (dmesg: the OOM killer?); set PYTEST_ISOLATE_NO_WARM=1" \
        in out, out


def test_a_cgroup_removed_mid_test_fails_that_test_naming_it(tmp_path):
    require_caps()
    proc = _pytest(tmp_path, """
        import time
        import pytest

        @pytest.mark.isolated(pids=50)
        def test_cut():
            time.sleep(3)

        @pytest.mark.isolated(pids=50)
        def test_next():
            pass
    """, popen=True)
    try:
        def busy() -> list[str]:
            found = []
            for d in glob.glob(f"/sys/fs/cgroup/pids/pti-{proc.pid}-*"):
                with open(f"{d}/cgroup.procs") as f:
                    if f.read().strip():
                        found.append(d)
            return found
        cut = wait_until(busy)
        assert cut, "the test's cgroup never appeared"
        # what a careless cleaner does: move the processes out, remove the directory
        with open(f"{cut[0]}/cgroup.procs") as f:
            pids = f.read().split()
        for pid in pids:
            with open("/sys/fs/cgroup/pids/cgroup.procs", "w") as f:
                f.write(pid)
        os.rmdir(cut[0])
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert _outcomes(out) == {"test_cut": "FAILED", "test_next": "PASSED"}, out
    assert f"the test's cgroup was removed while it ran, by another process: {cut[0]}" in out
    assert "pids=50 stopped holding" in out, out
    assert wait_until(lambda: not _cgroups_of(proc.pid)), _cgroups_of(proc.pid)


def _cgroups_of(pid: int) -> list[str]:
    return [d for pattern in ("/sys/fs/cgroup/*/pti-{}-*", "/sys/fs/cgroup/*/*/*/pti-{}-*")
            for d in glob.glob(pattern.format(pid))]


def test_the_containers_own_tmp_filled_under_a_memory_cap_says_files_count(tmp_path):
    require_caps()
    _, out = _pytest(tmp_path, """
        import pytest

        @pytest.mark.isolated(memory="64M")
        def test_fill_tmp():
            with open("/tmp/big", "wb") as f:
                for _ in range(200):
                    f.write(b"x" * (1 << 20))

        @pytest.mark.isolated(memory="64M")
        def test_next():
            with open("/tmp/small", "wb") as f:
                f.write(b"x" * (1 << 20))
    """)
    assert _outcomes(out) == {"test_fill_tmp": "FAILED", "test_next": "PASSED"}, out
    assert "killed by the OOM killer: memory cap 64M reached" in out, out
    assert "files the test wrote count too: the container's /tmp, /dev/shm" in out, out


FILL = ("mount -t tmpfs -o size=1M pti-full /tmp && mount -t tmpfs -o size=1M pti-full "
        "/dev/shm && (dd if=/dev/zero of=/tmp/fill bs=64k; dd if=/dev/zero of=/dev/shm/fill "
        "bs=64k) 2>/dev/null; exec \"$@\"")


@pytest.mark.parametrize("keep", ["never", "failed"])
def test_a_full_host_tmp_and_dev_shm(request, keep):
    """The host's /tmp and /dev/shm full (tmpfs mounts of 1M, filled, in a mount namespace of
    this test's own): without --isolate-keep the containers do not use them; with it their
    writes go to /dev/shm, and each test says so, naming the fix."""
    if not ROOT:
        pytest.skip("rootless: mounting a tmpfs on the host needs root")
    work = Path(tempfile.mkdtemp(prefix="pti-faults-", dir="/var/tmp"))  # not under /tmp
    request.addfinalizer(lambda: shutil.rmtree(work, ignore_errors=True))
    code, out = _pytest(work, """
        import pytest

        @pytest.mark.isolated
        def test_writes_its_tmp():
            with open("/tmp/x", "wb") as f:
                f.write(b"x" * (4 << 20))

        def test_veth(veth_pair):
            pass

        @pytest.mark.isolated
        def test_next():
            pass
    """, f"--isolate-keep={keep}", wrap=("unshare", "-m", "--propagation", "private", "sh",
                                         "-c", FILL, "sh"))
    assert "INTERNALERROR" not in out, out
    if keep == "never":
        assert code == 0, out
        return
    assert _outcomes(out) == {"test_writes_its_tmp": "ERROR", "test_veth": "PASSED",
                              "test_next": "ERROR"}, out
    assert "No space left on device" in out, out
    assert "hint: a filesystem is full: with --isolate-keep the container's writes go to " \
           "/dev/shm/pytest-isolate-keep-" in out, out


def test_pids_too_low_for_init_and_the_test_is_refused_at_setup(tmp_path):
    _, out = _pytest(tmp_path, """
        import pytest

        @pytest.mark.isolated(pids=1)
        def test_low():
            pass

        @pytest.mark.isolated
        def test_next():
            pass
    """)
    assert _outcomes(out) == {"test_low": "ERROR", "test_next": "PASSED"}, out
    assert "isolated(pids=1) from marker on test_low: expected a whole number >= 2 (init and " \
           "the workload)" in out, out

