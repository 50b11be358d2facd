"""The escape battery: each test tries, from inside a container, to change the host, and
asserts that the attempt failed and that a host canary is unchanged. privileged=True turns the
capability tests around (the call gets past the permission check, with harmless arguments)."""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_isolate.runtime import Spec, run
from pytest_isolate.runtime import syscalls as sc
from pytest_isolate.runtime.confine.policy import syscall_table
from tests.conftest import require

require_root = pytest.mark.skipif(os.geteuid() != 0, reason="the battery's root half")
NR = syscall_table()
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long


def _errno_of(name: str, *args) -> int:
    """0 when the syscall succeeded, else its errno (run inside the container)."""
    rc = LIBC.syscall(ctypes.c_long(NR[name]), *args)
    return 0 if rc >= 0 else ctypes.get_errno()


def inside(func, *args, spec: Spec | None = None):
    return run(spec or Spec(), func, *args).unwrap()


def _unix_connect(address: str) -> int:
    """0 when a unix socket connects to address (a path, or \\0name), else its errno."""
    import socket

    c = socket.socket(socket.AF_UNIX)
    try:
        c.connect(address)
        return 0
    except OSError as e:
        return e.errno
    finally:
        c.close()


def _status() -> str:
    with open("/proc/self/status") as f:
        return f.read()


@pytest.fixture(autouse=True)
def _known_machine():
    require(bool(NR), f"no syscall table for {os.uname().machine} (x86_64 and aarch64 only)")


def test_a_default_container_holds_no_capability_over_the_host():
    status = dict(line.split(":\t", 1) for line in inside(_status).splitlines())
    eff = int(status["CapEff"], 16)
    # SYS_MODULE, SYS_RAWIO, SYS_ADMIN, SYS_BOOT, SYS_TIME, MKNOD
    for cap in (16, 17, 21, 22, 25, 27):
        assert not eff >> cap & 1, (cap, status["CapEff"])
    assert int(status["CapBnd"], 16) == eff and status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"


def test_loading_a_kernel_module_is_denied():
    assert inside(_errno_of, "finit_module", -1, b"", 0) == errno.EPERM


def test_setting_the_clock_is_denied_and_the_host_clock_does_not_move():
    # An invalid timespec: were the call let through, it would fail with EINVAL, not move.
    def attempt():
        bad = (ctypes.c_long * 2)(0, -1)
        return _errno_of("clock_settime", 0, bad)
    before = time.time()
    assert inside(attempt) == errno.EPERM
    assert abs(time.time() - before) < 5


def test_reboot_is_denied():
    # LINUX_REBOOT_CMD_CAD_OFF, with the magic numbers: harmless even if it were let through.
    assert inside(_errno_of, "reboot", 0xFEE1DEAD, 672274793, 0, 0) == errno.EPERM


def test_keyctl_on_the_host_keyrings_is_denied():
    assert inside(_errno_of, "keyctl", 0, -3, 0) == errno.EPERM  # KEYCTL_GET_KEYRING_ID, user


@require_root
def test_no_block_device_node_and_no_mount_of_one():
    def attempt(dev: int) -> tuple[int, int]:
        try:
            os.mknod("/tmp/disk", 0o600 | 0o060000, dev)  # S_IFBLK
            made = 0
        except OSError as e:
            made = e.errno
        mounted = _errno_of("mount", b"/tmp/disk", b"/mnt", b"ext4", 0, None)
        return made, mounted
    dev = os.stat("/").st_dev
    made, mounted = inside(attempt, dev)
    assert made == errno.EPERM and mounted in (errno.EPERM, errno.ENOENT)


def test_proc_and_sys_stay_read_only_and_the_host_values_unchanged():
    with open("/proc/sys/kernel/hostname") as f:
        host_name = f.read()

    def attempt() -> list[str]:
        failed = []
        for path, data in (("/proc/sysrq-trigger", "h"), ("/proc/sys/kernel/hostname", "x"),
                           ("/sys/kernel/profiling", "1")):
            try:
                with open(path, "w") as f:
                    f.write(data)
            except OSError as e:
                failed.append(errno.errorcode[e.errno])
        return failed
    assert len(inside(attempt)) == 3
    with open("/proc/sys/kernel/hostname") as f:
        assert f.read() == host_name


def test_pid_1_cannot_be_traced_or_written():
    def attempt() -> tuple[int, int]:
        try:
            with open("/proc/1/mem", "r+b"):
                opened = 0
        except OSError as e:
            opened = e.errno
        return opened, _errno_of("ptrace", 16, 1, 0, 0)  # PTRACE_ATTACH
    opened, traced = inside(attempt)
    assert opened in (errno.EACCES, errno.EPERM) and traced == errno.EPERM


def test_no_inherited_fd_leads_into_a_host_namespace_or_to_the_zygote():
    def attempt() -> list[str]:
        reached = []
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:"):
                reached.append(f"{fd}: {target}")
            try:
                sc.setns(fd, 0)
                reached.append(f"setns {fd}: {target}")
            except OSError:
                pass
        return reached
    run(Spec(), os.getpid)  # a zygote exists
    assert inside(attempt) == []


def test_host_processes_cannot_be_signalled():
    canary = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        def attempt(pid: int) -> int:
            try:
                os.kill(pid, signal.SIGKILL)
                return 0
            except OSError as e:
                return e.errno
        assert inside(attempt, canary.pid) == errno.ESRCH
        assert canary.poll() is None
    finally:
        canary.kill()
        canary.wait()


def test_a_host_path_unix_socket_is_not_reached(tmp_path):
    import socket

    path = str(tmp_path / "host.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen()
    os.chmod(path, 0o600)
    try:
        assert inside(_unix_connect, path) != 0
    finally:
        srv.close()


def test_a_host_abstract_unix_socket_is_not_reached():
    import socket

    name = f"\0pti-canary-{os.getpid()}"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(name)
    srv.listen()
    srv.setblocking(False)
    try:
        assert inside(_unix_connect, name) == errno.ECONNREFUSED  # another netns's
        with pytest.raises(BlockingIOError):
            srv.accept()
    finally:
        srv.close()


@require_root
def test_no_cgroup_release_agent_can_be_set():
    agents = [p for p in ("/sys/fs/cgroup/memory/release_agent",
                          "/sys/fs/cgroup/pids/release_agent") if os.path.exists(p)]
    require(bool(agents), "no cgroup v1 hierarchy with a release_agent on this host")
    before = {p: Path(p).read_text() for p in agents}

    def attempt(paths: list[str]) -> list[int]:
        out = [_errno_of("mount", b"cgroup", b"/tmp", b"cgroup", 0, b"memory")]
        for p in paths:
            try:
                with open(p, "w") as f:
                    f.write("/tmp/pti-agent")
                out.append(0)
            except OSError as e:
                out.append(e.errno)
        return out
    errs = inside(attempt, agents)
    assert errs[0] == errno.EPERM and all(errs[1:]), errs
    assert {p: Path(p).read_text() for p in agents} == before


def test_a_chroot_breakout_stays_in_the_container():
    def attempt() -> bool:
        with open("/pti-marker", "w") as f:
            f.write("inside")
        os.makedirs("/tmp/jail", exist_ok=True)
        os.chroot("/tmp/jail")
        for _ in range(64):
            os.chdir("..")
        os.chroot(".")
        return os.path.exists("/pti-marker")
    assert inside(attempt) is True
    assert not os.path.exists("/pti-marker")


@require_root
def test_privileged_gives_host_root_back():
    status = inside(_status, spec=Spec(privileged=True))
    assert "Seccomp:\t0" in status

    def attempt() -> int:
        bad = (ctypes.c_long * 2)(0, -1)
        return _errno_of("clock_settime", 0, bad)
    assert inside(attempt, spec=Spec(privileged=True)) == errno.EINVAL  # past the check
    # fd -1: past the capability check and the filter, the call fails on its argument (or
    # on a kernel without modules)
    assert inside(_errno_of, "finit_module", -1, b"", 0,
                  spec=Spec(privileged=True)) in (errno.EBADF, errno.ENOSYS)

    def node() -> int:
        try:
            os.mknod("/tmp/pti-null", 0o600 | 0o020000, os.makedev(1, 3))  # S_IFCHR /dev/null
            return 0
        except OSError as e:
            return e.errno
    assert inside(node, spec=Spec(privileged=True)) == 0
    assert inside(node) == errno.EPERM


def test_a_deny_list_gives_eperm_and_the_kill_action_kills():
    def sock() -> int:
        import socket
        try:
            socket.socket()
            return 0
        except OSError as e:
            return e.errno
    assert inside(sock, spec=Spec(seccomp={"deny": ["socket"]})) == errno.EPERM
    result = run(Spec(seccomp={"deny": ["socket"], "action": "kill"}), sock)
    nr = syscall_table()["socket"]
    assert result.signal == signal.SIGSYS and not result.ok
    assert result.seccomp_denied == f"socket ({nr})"
    assert result.describe() == f"killed by seccomp: syscall socket ({nr}) denied"


def test_the_kill_action_kills_only_the_process_that_made_the_call():
    def child_tries() -> list:
        import socket
        pid = os.fork()
        if pid == 0:
            socket.socket()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        return [os.WIFSIGNALED(status) and os.WTERMSIG(status)]
    result = run(Spec(seccomp={"deny": ["socket"], "action": "kill"}), child_tries)
    assert result.ok and result.value == [signal.SIGSYS]  # the workload lives, and says so
    assert result.seccomp_denied is None


def test_a_program_execd_into_a_live_container_is_confined_too():
    from pytest_isolate.runtime.live import Container

    with Container(Spec()) as c:
        status = c.run(["cat", "/proc/self/status"]).stdout.decode()
    fields = dict(line.split(":\t", 1) for line in status.splitlines())
    assert not int(fields["CapEff"], 16) >> 21 & 1  # no SYS_ADMIN
    assert fields["Seccomp"].strip() == "2" and fields["NoNewPrivs"].strip() == "1"
