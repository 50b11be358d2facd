"""The container as its workload sees it: real namespaces, mounts and processes.

Each test runs as root and again as `nobody` (tests/integration/test_rootless_lane.py)."""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import threading
import time
import uuid

import pytest

from pytest_isolate.runtime import (
    Resources,
    SetupError,
    Spec,
    run,
    run_command,
    start,
    start_until_done,
)
from pytest_isolate.runtime import syscalls as sc
from pytest_isolate.runtime.warm import nets
from pytest_isolate.runtime.warm import pool as warm
from tests.conftest import WAIT, net_fds, require, require_caps, sleeps_with, wait_until

pytestmark = pytest.mark.usefixtures("no_leftovers")
SPEC = Spec(hostname="box")
WARM_IS_ROOTS = "rootless: warm containers (and so the zygote) are root's"


def test_proc_shows_only_the_containers_processes():
    r = run(SPEC, lambda: sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
    assert r.value == [1, 2]


@pytest.mark.parametrize("cold", [False, True], ids=["warm", "cold"])
def test_the_workload_is_pid_2_beside_a_real_init(cold, monkeypatch):
    if cold:
        monkeypatch.setenv(warm.DISABLE_ENV, "1")
    # A cold workload is init's child; a warm one was forked from outside and joined the
    # namespaces (its parent is outside, so getppid() is 0, as for `docker exec`).
    parent = 0 if warm.eligible(SPEC) else 1

    def ids():
        with open("/proc/1/cmdline", "rb") as f:
            init = f.read()
        return os.getpid(), os.getppid(), bool(init)
    assert run(SPEC, ids).value == [2, parent, True]


def test_a_warm_containers_processes_keep_the_normal_scheduling_policy():
    # The zygote builds at SCHED_IDLE; init and the workload must not inherit it.
    def policies():
        return os.sched_getscheduler(1), os.sched_getscheduler(0)
    assert run(SPEC, policies).value == [os.SCHED_OTHER, os.SCHED_OTHER]


def _proc_takes_pidns() -> bool:
    """Whether this kernel's proc takes the "pidns" mount option (tried in a throwaway child)."""
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            sc.unshare(sc.CLONE_NEWNS)
            sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
            sc.mount("pti-test", "/dev/shm", "tmpfs")
            os.mkdir("/dev/shm/p")
            sc.mount("proc", "/dev/shm/p", "proc", 0, "pidns=/proc/self/ns/pid")
            code = 0
        except OSError as e:
            code = 1 if e.errno == errno.EINVAL else 2
        finally:
            os._exit(code)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    assert code in (0, 1), code
    return code == 0


_KCMP = {"x86_64": 312, "aarch64": 272}  # kcmp(2) with KCMP_VM (1): 0 when the memory is one


def _shares_memory(zygote: int, init: int) -> bool:
    """Whether init is a sleeper: by kcmp where the kernel has it (not UML's), else by what only
    a forked init has, a handler of its own (for SIGCHLD): a sleeper inherits none."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    nr = _KCMP.get(os.uname().machine)
    rc = -1 if nr is None else libc.syscall(nr, zygote, init, 1, 0, 0)
    if rc >= 0:
        return rc == 0
    assert nr is None or ctypes.get_errno() == errno.ENOSYS, os.strerror(ctypes.get_errno())
    with open(f"/proc/{init}/status") as f:
        caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return caught == 0


def _wait_for(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.01)


def _zygote_children() -> set[int]:
    z = warm.pool_process().pid
    with open(f"/proc/{z}/task/{z}/children") as f:
        return {int(p) for p in f.read().split()}


def test_a_warm_init_shares_the_zygotes_memory_where_proc_takes_a_pidns():
    # A sleeper (syscalls.clone_sleeper): no page of the zygote copied, none freed at its end.
    # Kernels whose proc lacks the pidns option get a forked init, its own memory.
    if not warm.eligible(SPEC):
        pytest.skip(WARM_IS_ROOTS)
    assert run(SPEC, os.getpid).value == 2  # the zygote is up, the next container asked for
    init = warm.take(SPEC.network)
    try:
        assert _shares_memory(warm.pool_process().pid, init.pid) == _proc_takes_pidns()
    finally:
        init.kill()


def test_a_failing_warm_build_is_a_setup_error_back_home_with_its_init_killed():
    # Run as the zygote runs it, in a forked child of this process, with a step that fails.
    if not warm.eligible(SPEC):
        pytest.skip(WARM_IS_ROOTS)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            from pytest_isolate.runtime.kernel import mountinfo, rootfs
            from pytest_isolate.runtime.warm import zygote

            for n in sc.handlers_installed():  # as the zygote: a sleeper inherits none
                signal.signal(n, signal.SIG_DFL)

            def boom(root):
                raise OSError(errno.EIO, "injected")
            rootfs.mount_sys = boom
            home = [os.stat(f"/proc/self/ns/{n}").st_ino for n in ("mnt", "net", "uts")]
            try:
                zygote._build_around_sleeper("none", mountinfo.host_plan(split=False))
                said = "no error"
            except SetupError as e:
                said = f"{e.step}: {e.message}"
            back = home == [os.stat(f"/proc/self/ns/{n}").st_ino for n in ("mnt", "net", "uts")]
            _, status = os.waitpid(-1, 0)  # the init it made, killed
            os.write(w, json.dumps([said, back, os.WTERMSIG(status)]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    out = os.read(r, 4096).decode()
    os.close(r)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    said, back, sig = json.loads(out)
    # Where proc lacks the pidns option the build fails earlier, at /proc, as it should.
    want = ("sys: injected" if _proc_takes_pidns()
            else "mount proc: ")
    assert said.startswith(want) and back and sig == signal.SIGKILL, out


def test_a_killed_zygote_takes_every_container_it_built_along():
    # It is pid 1 of its own pid namespace: its inits, the one taken and the one built ahead,
    # die with it, whatever their kind (a sleeper has no PDEATHSIG of its own).
    if not warm.eligible(SPEC):
        pytest.skip(WARM_IS_ROOTS)
    assert run(SPEC, os.getpid).value == 2
    warm.reap_exiting(block=True)  # its init lingers while its workload is not reaped
    taken = warm.take(SPEC.network)  # built ahead by that run's launch
    inits: list[int] = []
    try:
        # The init of the container run above dies on its own time: wait until only the
        # taken one is left, then have the next one built.
        _wait_for(lambda: _zygote_children() == {taken.pid})
        warm.ask_next(SPEC.network)
        _wait_for(lambda: len(_zygote_children()) == 2)
        inits = [os.pidfd_open(p) for p in _zygote_children()]
        warm.pool_process().kill()
        warm.pool_process().wait()
        gone, _, _ = select.select(inits, [], [], 10)  # a pidfd reads ready once it exited
        assert len(gone) == 2
    finally:
        for fd in inits:
            os.close(fd)
        taken.kill()
        warm.shutdown()
    assert run(SPEC, os.getpid).value == 2  # a new zygote


def test_the_zygote_builds_ahead_at_sched_idle_and_at_sched_other_while_waited_for():
    # At SCHED_IDLE a build the caller waits for starves on a host whose CPUs are busy with
    # other work; the caller raises it for the wait and lowers it with its next ask.
    if not warm.eligible(SPEC):
        pytest.skip(WARM_IS_ROOTS)
    assert run(SPEC, os.getpid).value == 2  # the zygote is up, the next container asked for
    zygote = warm.pool_process().pid
    assert os.sched_getscheduler(zygote) == os.SCHED_IDLE
    taken = [warm.take(SPEC.network)]
    os.kill(zygote, signal.SIGSTOP)  # so that the next answer is surely waited for
    try:
        warm.ask_next(SPEC.network)
        waiter = threading.Thread(target=lambda: taken.append(warm.take(SPEC.network)))
        waiter.start()
        raised = wait_until(lambda: os.sched_getscheduler(zygote) == os.SCHED_OTHER)
    finally:
        os.kill(zygote, signal.SIGCONT)
    waiter.join(WAIT)
    try:
        assert raised, "the zygote stayed at SCHED_IDLE while the caller waited for it"
        assert len(taken) == 2
        warm.ask_next(SPEC.network)
        assert os.sched_getscheduler(zygote) == os.SCHED_IDLE
    finally:
        for init in taken:
            init.kill()
        warm.shutdown()


def test_shutdown_does_not_hang_on_a_warm_container_still_running():
    # The zygote's exit (pid 1 of its pid namespace) waits until every process of that
    # namespace is reaped; a workload still running is ours to reap, so shutdown gives up
    # waiting after a while instead of hanging, and the workload is killed.
    if not warm.eligible(SPEC):
        pytest.skip(WARM_IS_ROOTS)
    proc = start(SPEC, lambda: time.sleep(60))
    t0 = time.monotonic()
    warm.shutdown()
    assert time.monotonic() - t0 < 5
    assert proc.wait(timeout=10).signal == signal.SIGKILL


@pytest.mark.parametrize("caps", [None, "128M"], ids=["uncapped", "capped"])
def test_the_caller_goes_on_at_the_last_frame_with_the_same_outcomes(caps):
    # A warm function workload's caller does not wait for its forked copy to exit: what it
    # reports must not change, and the copy must still be reaped: an uncapped one later
    # (reap_exiting), a capped one before its figures are read, which then cover its exit.
    # (Warm only: rootless, the caller's child is the outer stage, which reports the exit.)
    if caps is not None:
        require_caps()
    spec = SPEC if caps is None else Spec(hostname="box", resources=Resources(memory=caps))

    def boom():
        raise KeyError("k")
    outcomes = {}
    for name, func in [("return", lambda: os.getpid()), ("raise", boom),
                       ("exit", lambda: os._exit(3))]:
        proc = start(spec, func)
        r = proc.wait()
        assert (proc._settled is not None) == (name != "exit" and warm.eligible(spec)), name
        outcomes[name] = (r.value, r.error and r.error.type, r.exit_status, r.signal)
        pid = proc._launch.pid
        if caps is None:
            warm.reap_exiting(block=True)
        else:
            assert r.stats.memory_peak > 0
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaped, not left a zombie
    assert outcomes == {"return": (2, None, 0, None), "raise": (None, "KeyError", 1, None),
                        "exit": (None, None, 3, None)}


def test_hostname_is_set():
    assert run(SPEC, lambda: socket.gethostname()).value == "box"


def test_the_hostname_step_refuses_the_namespace_the_caller_started_in():
    from pytest_isolate.runtime.kernel import namespaces

    name = socket.gethostname()  # were the guard gone, the host would get its own name again
    with pytest.raises(SetupError, match="still in the UTS namespace it started in"):
        namespaces.set_hostname(name)
    assert socket.gethostname() == name


def test_only_loopback_exists_and_is_up():
    def links():
        with open("/sys/class/net/lo/operstate") as f:
            state = f.read().strip()
        return sorted(os.listdir("/sys/class/net")), state
    names, state = run(SPEC, links).value
    assert names == ["lo"]
    assert state in ("unknown", "up")


def test_loopback_carries_tcp_inside():
    def echo():
        srv = socket.create_server(("127.0.0.1", 0))
        c = socket.create_connection(srv.getsockname())
        s, _ = srv.accept()
        c.sendall(b"ping")
        return s.recv(4).decode()
    assert run(SPEC, echo).value == "ping"


def _write_everywhere(tag: str) -> dict:
    out = {}
    for d in ("/etc", "/usr", "/root", "/tmp"):
        path = f"{d}/pti-{tag}"
        try:
            with open(path, "w") as f:
                f.write("inside")
            out[d] = os.path.exists(path)
        except PermissionError:
            out[d] = "EACCES"
    return out


def test_writes_to_etc_usr_root_and_tmp_never_reach_the_host():
    tag = uuid.uuid4().hex
    wrote = run(SPEC, _write_everywhere, tag).unwrap()
    for d in ("/etc", "/usr", "/root", "/tmp"):
        assert not os.path.exists(f"{d}/pti-{tag}"), f"{d} write reached the host"
    assert wrote["/tmp"] is True  # world-writable: works rootless too
    if os.geteuid() == 0:
        assert wrote == {"/etc": True, "/usr": True, "/root": True, "/tmp": True}
    else:  # host root's files belong to an unmapped uid: kernels differ on whether the
        # overlay lets the namespace's root write there; either way the host must stay untouched
        assert set(wrote.values()) <= {True, "EACCES"}


def test_overwriting_a_host_file_changes_only_the_containers_copy(tmp_path):
    host_file = tmp_path / "data.txt"
    host_file.write_text("host")
    os.chmod(tmp_path, 0o777)
    os.chmod(host_file, 0o666)

    def overwrite(path):
        with open(path, "w") as f:
            f.write("container")
        with open(path) as f:
            return f.read()
    assert run(SPEC, overwrite, str(host_file)).value == "container"
    assert host_file.read_text() == "host"


def test_chroot_breakout_stays_in_the_container_root():
    def breakout():
        with open("/pti-inside-marker", "w") as f:
            f.write("x")
        before = os.stat("/")
        os.mkdir("/jail")
        fd = os.open("/", os.O_RDONLY)
        os.chroot("/jail")
        os.fchdir(fd)  # cwd outside the chroot: the classic escape
        for _ in range(64):
            os.chdir("..")
        os.chroot(".")
        after = os.stat("/")
        return (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino), \
            os.path.exists("/pti-inside-marker")
    same_root, marker = run(SPEC, breakout).unwrap()
    assert same_root and marker
    assert not os.path.exists("/pti-inside-marker")


def test_a_host_pid_is_invisible():
    def probe(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "ESRCH"
        return "visible"
    host_pid = os.getpid()
    assert host_pid > 2
    assert run(SPEC, probe, host_pid).value == "ESRCH"


def test_a_tmpfs_mounted_on_the_host_before_start_is_visible_inside(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("rootless: mounting a tmpfs on the host needs root")
    from pytest_isolate.runtime import syscalls as sc

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sc.mount("pti-test", str(mnt), "tmpfs", 0)
    try:
        (mnt / "hello").write_text("from host tmpfs")

        def look(path):
            with open(f"{path}/hello") as f:
                text = f.read()
            with open(f"{path}/new", "w") as f:
                f.write("x")
            return text
        assert run(SPEC, look, str(mnt)).value == "from host tmpfs"
        assert not (mnt / "new").exists()
    finally:
        sc.umount2(str(mnt))


def test_a_host_mount_made_after_a_container_was_built_ahead_is_visible_in_the_next(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("rootless: mounting a tmpfs on the host needs root")
    from pytest_isolate.runtime import syscalls as sc

    assert run(SPEC, os.getpid).value == 2  # the zygote builds the next one now
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sc.mount("pti-test", str(mnt), "tmpfs", 0)
    try:
        (mnt / "hello").write_text("mounted after the build")
        assert run(SPEC, (mnt / "hello").read_text).value == "mounted after the build"
    finally:
        sc.umount2(str(mnt))


def test_the_mount_table_watch_reads_again_only_after_a_change(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("rootless: mounting a tmpfs on the host needs root")
    from pytest_isolate.runtime import syscalls as sc
    from pytest_isolate.runtime.kernel import mountinfo as rootfs

    watch = rootfs.MountTableWatch()
    try:
        first = watch.text()
        assert watch.text() is first  # not read again
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        sc.mount("pti-test", str(mnt), "tmpfs", 0)
        try:
            assert f" {mnt} " in watch.text()
        finally:
            sc.umount2(str(mnt))
        assert f" {mnt} " not in watch.text()
    finally:
        watch.forget()


def test_dev_holds_the_standard_devices_usable_by_any_user():
    def look(switch_user: bool):
        import stat
        nodes = {}
        for name in ("null", "zero", "full", "random", "urandom", "tty"):
            st = os.stat(f"/dev/{name}")
            nodes[name] = [stat.S_ISCHR(st.st_mode), stat.S_IMODE(st.st_mode), st.st_rdev]
        if switch_user:  # nobody: the modes must let any user read and write
            os.setgid(65534)
            os.setuid(65534)
        with open("/dev/null", "w") as f:
            f.write("gone")
        with open("/dev/zero", "rb") as f:
            zeros = f.read(4)
        return nodes, zeros == bytes(4)
    # Root makes its own nodes, rootless binds the host's: the same devices either way.
    nodes, zeros = run(SPEC, look, os.geteuid() == 0).value
    for name, (is_char, mode, rdev) in nodes.items():
        assert is_char and mode == 0o666, name
        assert rdev == os.stat(f"/dev/{name}").st_rdev, name
    assert zeros


def test_the_mount_table_watch_is_safe_from_several_threads():
    import threading

    from pytest_isolate.runtime.kernel import mountinfo as rootfs

    watch, errors = rootfs.MountTableWatch(), []

    def hammer():
        try:
            for _ in range(3000):
                watch.text()
        except Exception as e:  # without its lock: "concurrent poll() invocation"
            errors.append(e)
    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    watch.forget()
    assert not errors


def test_a_forked_child_starts_its_own_containers_and_leaves_the_parents_alone(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("rootless: mounting a tmpfs on the host needs root")
    from pytest_isolate.runtime import syscalls as sc
    from pytest_isolate.runtime.kernel import mountinfo as rootfs

    assert run(SPEC, os.getpid).value == 2  # the parent's zygote and mount-table watch exist
    zygote = warm.pool_process().pid
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 1
        try:
            sc.mount("pti-test", str(mnt), "tmpfs", 0)  # left for the parent to find
            seen = run(SPEC, os.path.ismount, str(mnt)).value
            code = 0 if seen and warm.pool_process().pid != zygote else 3
        finally:
            warm.shutdown()
            os._exit(code)
    try:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0  # 3: the parent's zygote was used
        # The child read the table through its own file: the change it saw is still news
        # here (a shared file would have handed it the parent's pending poll event).
        assert f" {mnt} " in rootfs.mount_table()
        assert run(SPEC, os.path.ismount, str(mnt)).value
    finally:
        sc.umount2(str(mnt))


def test_an_orphaned_grandchild_is_reaped():
    def orphan_maker():
        pid = os.fork()
        if pid == 0:
            if os.fork() == 0:
                time.sleep(0.2)
                os._exit(0)  # its parent is gone: only pid 1 can reap it
            os._exit(0)
        os.waitpid(pid, 0)
        time.sleep(0.6)
        zombies = []
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    with open(f"/proc/{p}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                            zombies.append(int(p))
                except FileNotFoundError:  # exited (and reaped) since the listing
                    pass
        return zombies
    assert run(SPEC, orphan_maker).value == []


def test_sigterm_to_the_container_reaches_the_workload():
    r, w = os.pipe()

    def waits_for_term(wfd):
        got = []
        signal.signal(signal.SIGTERM, lambda *_: got.append(1))
        os.write(wfd, b"r")
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        return "got SIGTERM" if got else "no signal"
    proc = start(SPEC, waits_for_term, w)
    os.close(w)
    assert os.read(r, 1) == b"r"
    os.close(r)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20).value == "got SIGTERM"


def test_an_exception_comes_back_with_type_message_and_traceback():
    def boom():
        raise KeyError("missing-key")
    r = run(SPEC, boom)
    assert not r.ok and not r.returned
    assert r.error.type == "KeyError"
    assert "missing-key" in r.error.message
    assert "in boom" in r.error.traceback
    assert r.exit_status == 1


def test_os_exit_comes_back_as_an_exit_status():
    r = run(SPEC, os._exit, 3)
    assert (r.returned, r.exit_status, r.signal) == (False, 3, None)
    assert "exited with status 3" in r.describe()


def test_sigsegv_comes_back_as_a_signal():
    def segv():
        import faulthandler

        faulthandler.disable()  # pytest's handler would print a dump of the dying child
        os.kill(os.getpid(), signal.SIGSEGV)
    r = run(SPEC, segv)
    assert r.signal == signal.SIGSEGV and r.exit_status is None
    assert "SIGSEGV" in r.describe()


def test_a_value_that_is_not_json_is_a_clear_error():
    r = run(SPEC, lambda: object())
    assert r.error.type == "TypeError" and "JSON" in r.error.message


def test_env_and_workdir_apply():
    r = run(Spec(env={"PTI_X": "1"}, workdir="/usr"),
            lambda: (os.environ.get("PTI_X"), os.getcwd()))
    assert r.value == ["1", "/usr"]


def test_run_command_captures_output_exit_code_and_stdin():
    r = run_command(SPEC, ["sh", "-c", "cat; echo err >&2; exit 4"], input=b"in")
    assert (r.returncode, r.stdout, r.stderr) == (4, b"in", b"err\n")


def test_run_command_output_larger_than_a_pipe_buffer():
    r = run_command(SPEC, ["head", "-c", "1000000", "/dev/zero"])
    assert len(r.stdout) == 1_000_000


def test_a_missing_program_is_a_setup_error_naming_it():
    with pytest.raises(SetupError, match="no-such-program") as info:
        run_command(SPEC, ["no-such-program"])
    assert info.value.step == "exec" and "PATH" in info.value.hint


@pytest.mark.parametrize("cold", [False, True], ids=["warm", "cold"])
def test_without_caps_the_cgroup_namespace_shows_root(cold, monkeypatch):
    if cold:
        monkeypatch.setenv(warm.DISABLE_ENV, "1")

    def cgroups() -> list[str]:
        with open("/proc/self/cgroup") as f:
            return sorted({line.strip().split(":", 2)[2] for line in f})
    # A warm workload joins init's cgroup namespace, rooted at this process's cgroup.
    assert run(SPEC, cgroups).value == ["/"]


@pytest.mark.parametrize("cold", [False, True], ids=["warm", "cold"])
def test_start_until_done_returns_once_the_function_is_done(cold, monkeypatch):
    if cold:
        monkeypatch.setenv(warm.DISABLE_ENV, "1")
    r, w = os.pipe()  # inherited by the container: its last act shows here

    def slow() -> int:
        time.sleep(0.3)
        os.write(w, b"x")
        return 42
    try:
        proc = start_until_done(SPEC, slow)
        os.set_blocking(r, False)
        assert os.read(r, 1) == b"x"  # BlockingIOError had it returned at the fork
    finally:
        os.close(r)
        os.close(w)
    assert proc.wait().value == 42


def test_start_until_done_stops_sleeping_at_the_specs_timeout():
    spec = Spec(resources=Resources(timeout=0.5))
    t0 = time.monotonic()
    proc = start_until_done(spec, time.sleep, 30)
    assert time.monotonic() - t0 < 10
    assert proc.wait().timed_out


@pytest.mark.parametrize("cold", [False, True], ids=["warm", "cold"])
def test_ctrl_c_while_start_until_done_sleeps_leaves_no_container(cold, monkeypatch):
    if cold:
        monkeypatch.setenv(warm.DISABLE_ENV, "1")
    marker = f"{time.time():.6f}"
    # Raised by this process's SIGINT handler on the main thread, as Ctrl-C would be. Sent to
    # the main thread itself: a signal the kernel hands to the timer's thread would not
    # interrupt the main thread's select (Python runs handlers on the main thread only when
    # it next runs), and the test then hung until the workload's end (seen in the UML lane).
    timer = threading.Timer(0.5, signal.pthread_kill,
                            (threading.main_thread().ident, signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            start_until_done(SPEC, os.system, f"sleep 1000{marker}")
    finally:
        timer.cancel()
    # A warm container's other processes die with its init, which is not our child: soon,
    # not necessarily before the call returns. no_leftovers checks our pids, fds and mounts.
    wait_until(lambda: not sleeps_with(marker))
    assert sleeps_with(marker) == []


def test_run_command_timeout_kills_every_process():
    marker = f"{time.time():.6f}"
    t0 = time.monotonic()
    r = run_command(SPEC, ["sh", "-c", f"sleep 1000{marker} & sleep 1000{marker}"],
                    timeout=0.5)
    assert r.timed_out and r.returncode == -signal.SIGKILL
    assert time.monotonic() - t0 < 5
    assert not sleeps_with(marker)


def test_network_host_shares_the_host_network():
    names = run(Spec(network="host"), lambda: sorted(n for _, n in socket.if_nameindex())).value
    assert names == sorted(n for _, n in socket.if_nameindex())


def test_a_plain_directory_can_be_the_root(busybox_root):
    r = run_command(Spec(rootfs=str(busybox_root)),
                    ["/bin/busybox", "sh", "-c", "echo x > /new; ls /; cat /etc/motd; "
                     "cat /proc/1/cmdline >/dev/null && echo proc-ok"])
    assert r.returncode == 0, r.stderr
    assert b"proc-ok" in r.stdout and b"hello from the image" in r.stdout
    assert not (busybox_root / "new").exists()


def test_a_time_namespace_shifts_the_monotonic_clock():
    from pytest_isolate.runtime import TimeOffsets

    require(os.path.exists("/proc/self/ns/time"), "this kernel has no time namespaces")
    inside = run(Spec(time_offsets=TimeOffsets(monotonic=86400)), time.monotonic).value
    assert inside - time.monotonic() > 86000


@pytest.fixture
def busybox_root(tmp_path):
    import shutil

    bb = shutil.which("busybox") or "/bin/busybox"
    require(os.path.exists(bb), "busybox is not installed (apt-get install busybox-static)")
    root = tmp_path / "root"
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp"):
        (root / d).mkdir(parents=True)
    shutil.copy(bb, root / "bin" / "busybox")
    (root / "bin" / "sh").symlink_to("busybox")
    (root / "etc" / "motd").write_text("hello from the image\n")
    os.chmod(tmp_path, 0o755)
    return root


@pytest.mark.parametrize("cold", [False, True], ids=["warm", "cold"])
def test_masked_host_paths_show_nothing_and_take_no_writes(monkeypatch, cold):
    if cold:
        monkeypatch.setenv(warm.DISABLE_ENV, "1")

    def look():
        out = {}
        for d in ("/proc/acpi", "/sys/firmware"):
            if not os.path.isdir(d):
                continue
            try:
                open(os.path.join(d, "x"), "w").close()
                wrote = True
            except OSError:
                wrote = False
            out[d] = (os.listdir(d), wrote)
        for f in ("/proc/kcore", "/proc/keys", "/proc/timer_list"):
            if os.path.exists(f):
                with open(f, "rb") as fh:
                    out[f] = len(fh.read(64))
        return out

    seen = run(SPEC, look).unwrap()
    assert seen and any(k.startswith("/sys/") or k == "/proc/acpi" for k in seen), seen
    for path, what in seen.items():
        assert what in ([[], False], 0), (path, what)  # the value came back as JSON


def _held_nets() -> set[str]:
    """The network namespaces this process holds open, its own aside."""
    return net_fds() - {os.readlink("/proc/self/ns/net")}


def test_ended_containers_network_namespaces_are_let_go_together():
    # The kernel tears a network namespace down in a worker that waits out two RCU barriers
    # per batch, whatever the batch's size: ended containers' namespaces are held and let go
    # NET_BATCH at a time, and none is held after shutdown. Kernels before 6.11 cannot hand
    # them over (PIDFD_GET_NET_NAMESPACE): there nothing is held.
    if not warm.eligible(SPEC):
        pytest.skip(WARM_IS_ROOTS)
    warm.shutdown()  # what earlier tests left held is let go
    assert _held_nets() == set()
    def runs(n: int) -> list[str]:
        return [run(SPEC, os.readlink, "/proc/self/ns/net").value for _ in range(n)]
    seen = runs(3)
    if nets._can_hold_nets:  # learned at the first hold (a slow guest is spared the rest)
        seen += runs(nets.NET_BATCH)
        assert _held_nets() == set(seen[-3:])  # the first NET_BATCH went together
    else:
        assert _held_nets() == set()
    warm.shutdown()
    assert _held_nets() == set()
