"""The only ctypes module: thin wrappers over the syscalls Python lacks.

Rule: each wrapper does one call and turns a failure into `OSError(errno, "<call>(<args>): ...")`
so that the caller can wrap it in a `SetupError` naming the step.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import signal
import socket  # imported here: the steps after pivot_root may find no Python library
import struct
import sys

# The interpreter links libc: its symbols need no find_library (which runs ldconfig/gcc).
_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_VM = 0x00000100
CLONE_PIDFD = 0x00001000
PIDFD_GET_NET_NAMESPACE = 0xFF04  # _IO(PIDFS_IOCTL_MAGIC 0xFF, 4): Linux 6.11
CLONE_CHILD_CLEARTID = 0x00200000
CLONE_CHILD_SETTID = 0x01000000
CLONE_INTO_CGROUP = 0x200000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38

_SYS_CLONE3 = 435  # the same on every architecture (added in 5.3, with the unified numbers)
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203,
                   "s390x": 217, "i686": 217, "armv7l": 218}

_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long
_libc.capget.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_libc.capset.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
CAP_SYS_ADMIN = 21


def libc() -> ctypes.CDLL:
    """The C library, for the few calls a kernel step makes itself (capget, capset)."""
    return _libc


def effective_capabilities() -> int:
    """This thread's effective capability mask (capget: no /proc read)."""
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)()
    if _libc.capget(header, data) != 0:
        raise _fail("capget")
    return data[0] | data[3] << 32


def host_root() -> bool:
    """Root with CAP_SYS_ADMIN over the host's namespaces: may build containers without a
    user namespace. False for a user, and for root confined in a container of ours (which
    builds nested containers rootless, in a user namespace of their own)."""
    if os.geteuid() != 0:
        return False
    try:
        return bool(effective_capabilities() >> CAP_SYS_ADMIN & 1)
    except OSError:
        return True


def _enc(s: str | bytes | None) -> bytes | None:
    if s is None:
        return None
    return s if isinstance(s, bytes) else os.fsencode(s)


def _fail(call: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{call}: {os.strerror(err)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    if _libc.mount(_enc(source), _enc(target), _enc(fstype), flags, _enc(data)) != 0:
        raise _fail(f"mount({source!r}, {target!r}, {fstype!r}, {flags:#x}, {data!r})")


def umount2(target: str, flags: int = 0) -> None:
    if _libc.umount2(_enc(target), flags) != 0:
        raise _fail(f"umount2({target!r}, {flags})")


def unshare(flags: int) -> None:
    if hasattr(os, "unshare"):  # Python >= 3.12
        os.unshare(flags)
        return
    if _libc.unshare(flags) != 0:
        raise _fail(f"unshare({flags:#x})")


def setns(fd: int, nstype: int = 0) -> None:
    if hasattr(os, "setns"):
        os.setns(fd, nstype)
        return
    if _libc.setns(fd, nstype) != 0:
        raise _fail(f"setns({fd}, {nstype:#x})")


def pivot_root(new_root: str, put_old: str) -> None:
    nr = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise OSError(38, f"pivot_root: unknown syscall number on {os.uname().machine}")
    if _libc.syscall(nr, _enc(new_root), _enc(put_old)) != 0:
        raise _fail(f"pivot_root({new_root!r}, {put_old!r})")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    rc = _libc.prctl(option, arg2, arg3, arg4, arg5)
    if rc < 0:
        raise _fail(f"prctl({option}, {arg2})")
    return rc


# -- a pid 1 that runs no code of its own --------------------------------------------------------

_libc.clone.restype = ctypes.c_int
_libc.clone.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                        ctypes.POINTER(ctypes.c_int)]
_PAUSE = ctypes.cast(_libc.pause, ctypes.c_void_p)
# The one stack of every sleeper. Shared safely because a sleeper never returns from pause():
# the only writes to it are glibc's clone() putting the same two words (pause, NULL) on its top
# and the call's return address, and no signal frame is ever pushed, since a sleeper has no
# handler to run (its caller checks `handlers_installed()` first).
_SLEEPER_STACK = ctypes.create_string_buffer(16384)


def handlers_installed() -> list[int]:
    """Signals with a Python handler in this process (a sleeper must inherit none)."""
    return [n for n in signal.valid_signals()
            if signal.getsignal(n) not in (signal.SIG_DFL, signal.SIG_IGN, None)]


def clone_sleeper(flags: int) -> tuple[int, int]:
    """A child that shares this process's memory (CLONE_VM) and only ever sits in pause():
    (its pid, a pidfd). With CLONE_NEWPID in `flags` it is pid 1 of a new pid namespace, made
    without copying a page table or a page of this process, and its exit frees none either.

    It runs no code that could reach this process's memory: pause() returns only after a
    signal handler ran, and the caller has none (`handlers_installed()` is empty; glibc's
    pause only reads the thread's cancellation state in a single-threaded caller). It does
    not die with its parent on its own: the zygote is pid 1 of a pid namespace of its own, so
    its sleepers die with it. Its SIGCHLD disposition is this process's (the zygote's
    SIG_IGN: the kernel reaps the orphans it inherits)."""
    pidfd = ctypes.c_int(-1)
    top = ctypes.addressof(_SLEEPER_STACK) + ctypes.sizeof(_SLEEPER_STACK)
    pid = _libc.clone(_PAUSE, top, flags | CLONE_VM | CLONE_PIDFD | signal.SIGCHLD, None,
                      ctypes.byref(pidfd))
    if pid < 0:
        raise _fail(f"clone(CLONE_VM | {flags:#x})")
    return pid, pidfd.value


def sethostname(name: str) -> None:
    socket.sethostname(name)


_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def set_link_up(ifname: str) -> None:
    """Bring an interface of the calling thread's network namespace up: an ioctl, so the hot
    path (lo in every container) never imports pyroute2."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            ifreq = struct.pack("16sH14x", ifname.encode(), 0)
            flags = struct.unpack("16sH14x", fcntl.ioctl(s, _SIOCGIFFLAGS, ifreq))[1]
            fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14x", ifname.encode(),
                                                      flags | _IFF_UP))
    except OSError as e:
        raise OSError(e.errno, f"set_link_up({ifname!r}): {e.strerror}") from None


# -- fork straight into a cgroup v2 directory ----------------------------------------------------

class _CloneArgs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size",
        "tls", "set_tid", "set_tid_size", "cgroup")]


# PyDLL: the call keeps the GIL, as os.fork() keeps it across fork().
_pylibc = ctypes.PyDLL(None, use_errno=True)
_pylibc.syscall.restype = ctypes.c_long
_pylibc.pthread_self.restype = ctypes.c_void_p
_before_fork = ctypes.pythonapi.PyOS_BeforeFork
_after_fork_parent = ctypes.pythonapi.PyOS_AfterFork_Parent
_after_fork_child = ctypes.pythonapi.PyOS_AfterFork_Child
_tid_offsets: dict[str, int | None] = {}


def _tid_slots(want: int) -> set[int]:
    """Offsets in this thread's glibc descriptor (pthread_self()) that hold `want`."""
    base = _pylibc.pthread_self()
    return {off for off in range(0, 1024, 4) if ctypes.c_int.from_address(base + off).value == want}


def _tid_offset() -> int | None:
    """Where glibc caches this thread's id in its descriptor. fork() updates it in the child
    (CLONE_CHILD_SETTID) and so must we, or pthread calls on pthread_self() (setaffinity,
    setschedparam) would act on the parent's thread. Accepted only as the one offset in the
    descriptor's first KiB that holds our thread id (720 on x86-64 glibc 2.26 and later);
    None otherwise (not glibc, say), and then clone3 is not used."""
    if "tid" not in _tid_offsets:
        import threading  # here: the zygote imports this module and never forks this way

        found: set[int] = set()
        try:
            # glibc only: its descriptor is larger than the KiB read; another libc's may not be.
            if (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc "):
                found = _tid_slots(threading.get_native_id())
        except (OSError, ValueError, AttributeError):
            pass
        _tid_offsets["tid"] = found.pop() if len(found) == 1 else None
    return _tid_offsets["tid"]


def single_threaded() -> bool:
    """One thread in this process (a /proc/<pid>/task directory links 2 + one per thread)."""
    return os.stat("/proc/self/task").st_nlink == 3


def can_fork_into_cgroup() -> bool:
    return _tid_offset() is not None and single_threaded()


def fork_into_cgroup(cgroup_fd: int) -> int:
    """os.fork(), with the child born in the cgroup v2 directory `cgroup_fd`
    (clone3 CLONE_INTO_CGROUP): no cgroup.procs write, so no wait on the cgroup lock.

    Python's fork bookkeeping runs as in os.fork (PyOS_BeforeFork/AfterFork_*: at-fork
    handlers, import lock, threads). glibc's own fork steps are skipped: in a single-threaded
    process its locks need no resetting, but the pthread_atfork child handlers of C
    libraries do not run. Callers use it only when `can_fork_into_cgroup()`. Raises OSError (no
    child) where clone3 or CLONE_INTO_CGROUP is refused: ENOSYS before 5.3, EINVAL before
    5.7, or EOPNOTSUPP when glibc's thread-id slot cannot be found."""
    offset = _tid_offset()
    if offset is None:
        raise OSError(errno.EOPNOTSUPP,
                      "clone3: cannot find glibc's thread-id slot to update in the child")
    args = _CloneArgs(flags=CLONE_INTO_CGROUP | CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID,
                      child_tid=_pylibc.pthread_self() + offset,
                      exit_signal=signal.SIGCHLD, cgroup=cgroup_fd)
    sys.audit("os.fork")
    _before_fork()
    pid = _pylibc.syscall(ctypes.c_long(_SYS_CLONE3), ctypes.byref(args),
                          ctypes.c_size_t(ctypes.sizeof(args)))
    if pid == 0:
        _after_fork_child()
        return 0
    err = ctypes.get_errno()
    _after_fork_parent()
    if pid < 0:
        raise OSError(err, f"clone3(CLONE_INTO_CGROUP, cgroup fd {cgroup_fd}): "
                           f"{os.strerror(err)}")
    return pid
