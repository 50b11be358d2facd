"""The confinement step: no_new_privs, capabilities dropped, the seccomp filter loaded.

Rule: runs in the workload (or an exec's helper) as its last step before user code; the order
inside is fixed: no_new_privs first (seccomp needs it without CAP_SYS_ADMIN, and no exec may
gain privileges back), the bounding set before the process's own sets (so that an exec'd
program, whose capabilities are recomputed from the bounding set, gets no more), the filter
last (it could deny the calls before it).

Everything a confinement needs in the child (the capabilities to drop, the capset data, the
filter's sock_fprog) is built once in the caller by `prepare`: the child, a fresh copy of the
caller, then makes only the system calls (no ctypes objects to create, no pages to copy).
"""

from __future__ import annotations

import ctypes
import errno
import os

from .. import syscalls as sc
from ..errors import SetupError
from ..process import protocol

PR_CAPBSET_DROP = 24
PR_SET_SECCOMP = 22
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2
_CAPABILITY_VERSION_3 = 0x20080522
_LAST_CAP_FILE = "/proc/sys/kernel/cap_last_cap"
SIGSYS = 31
SA_SIGINFO = 4
_SI_SYSCALL = 24  # offsetof(siginfo_t, si_syscall) on 64-bit Linux


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _Sigaction(ctypes.Structure):  # glibc's struct sigaction (x86_64 and aarch64)
    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16),
                ("flags", ctypes.c_int), ("restorer", ctypes.c_void_p)]


_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_libc = sc.libc()
_libc.sigaction.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]


def _cap_data(effective: int, permitted: int, inheritable: int):
    data = (_Data * 2)()
    for i in (0, 1):
        data[i].effective = (effective >> (32 * i)) & 0xFFFFFFFF
        data[i].permitted = (permitted >> (32 * i)) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> (32 * i)) & 0xFFFFFFFF
    return data


def _capget() -> tuple[int, int]:
    hdr, data = _Header(_CAPABILITY_VERSION_3, 0), (_Data * 2)()
    if _libc.capget(ctypes.byref(hdr), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    return (data[0].effective | data[1].effective << 32,
            data[0].permitted | data[1].permitted << 32)


def _capset(hdr, data) -> None:
    if _libc.capset(ctypes.byref(hdr), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {errno.errorcode.get(err, err)}")


def _last_cap() -> int:
    try:
        with open(_LAST_CAP_FILE) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63  # probe: the kernel answers EINVAL past its last capability


class Prepared:
    """A confinement made ready to apply: the objects the child's system calls take."""

    __slots__ = ("data", "denied_names", "drops", "hdr", "keep", "prog", "prog_buf", "trap")

    def __init__(self, confinement) -> None:
        self.keep = confinement.caps
        self.hdr = _Header(_CAPABILITY_VERSION_3, 0)
        self.drops: tuple[int, ...] = ()
        self.data = None
        if self.keep is not None:
            self.data = _cap_data(self.keep, self.keep, 0)
            self.drops = tuple(c for c in range(_last_cap() + 1) if not self.keep >> c & 1)
        self.prog = self.prog_buf = None
        if confinement.program:
            self.prog_buf = ctypes.create_string_buffer(confinement.program,
                                                        len(confinement.program))
            self.prog = _Fprog(len(confinement.program) // 8,
                               ctypes.cast(self.prog_buf, ctypes.c_void_p))
        self.trap = confinement.action == "kill" and bool(confinement.program)
        self.denied_names = dict(confinement.numbers) if self.trap else {}


_prepared: dict[object, Prepared] = {}


def prepare(confinement) -> Prepared:
    """The confinement's Prepared, built once per process (call it before forking)."""
    got = _prepared.get(confinement)
    if got is None:
        got = _prepared[confinement] = Prepared(confinement)
        if got.trap:
            _sigsys_action()
    return got


def drop_capabilities(ready: Prepared) -> None:
    """Keep only the capabilities in the mask `ready.keep`: bounding, permitted, effective;
    inheritable and ambient empty."""
    prctl = _libc.prctl
    for cap in ready.drops:
        if prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            if err == errno.EINVAL:  # past this kernel's last capability
                break
            raise SetupError("drop capabilities", f"bounding set, capability {cap}", err,
                             os.strerror(err)) from None
    sc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    keep = ready.keep
    if _libc.capset(ctypes.byref(ready.hdr), ready.data) == 0:
        return
    # EPERM: this process never held some of them (a user without a user namespace)
    _, permitted = _capget()
    _capset(ready.hdr, _cap_data(permitted & keep, permitted & keep, 0))


def load_seccomp(ready: Prepared) -> None:
    if sc.libc().prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(ready.prog),
                       0, 0) != 0:
        err = ctypes.get_errno()
        raise SetupError("seccomp", f"filter of {ready.prog.len} instructions", err,
                         os.strerror(err),
                         "a kernel built with CONFIG_SECCOMP_FILTER, or seccomp='off'")


def _on_sigsys(signo: int, info: int, _context: int) -> None:
    nr = ctypes.c_int.from_address(info + _SI_SYSCALL).value
    if _reporting and os.getpid() == _reporting[0]:
        _, fd, names = _reporting
        try:
            protocol.write_frame(fd, protocol.seccomp_killed(nr, names.get(nr, f"syscall {nr}")))
        except OSError:
            pass
    # SIG_DFL: the SIGSYS raised here is pending until this handler returns, then kills
    _libc.sigaction(SIGSYS, ctypes.byref(_Sigaction()), None)
    os.kill(os.getpid(), SIGSYS)


# Built once in the caller (prepare), like the rest: a ctypes callback costs 0.3 ms to make.
_handler: list = []  # [the callback (kept alive here: ctypes frees an unreferenced one), act]
_reporting: tuple = ()  # (pid, fd, {nr: name}) of the process whose denials are reported


def _sigsys_action() -> _Sigaction:
    if not _handler:
        callback = _HANDLER(_on_sigsys)
        act = _Sigaction()
        act.handler = ctypes.cast(callback, ctypes.c_void_p)
        act.flags = SA_SIGINFO
        _handler[:] = [callback, act]
    return _handler[1]


def _report_denials(ready: Prepared, report_fd: int) -> None:
    """Action "kill" traps (SIGSYS) instead of killing outright, so that this process can say
    which call it was before it dies of the SIGSYS: one frame on `report_fd`, from this
    process only (a child of the test dies without one)."""
    global _reporting
    _reporting = (os.getpid(), report_fd, ready.denied_names)
    if _libc.sigaction(SIGSYS, ctypes.byref(_sigsys_action()), None) != 0:
        err = ctypes.get_errno()
        raise SetupError("seccomp", "SIGSYS handler", err, os.strerror(err))


def confine(confinement, report_fd: int | None = None) -> None:
    """Apply a confine.policy.Confinement to this process. `report_fd`: where a call denied
    with action "kill" is reported (protocol.seccomp_killed)."""
    ready = prepare(confinement)
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    if ready.keep is not None:
        drop_capabilities(ready)
    if ready.prog is not None:
        if ready.trap and report_fd is not None:
            _report_denials(ready, report_fd)
        load_seccomp(ready)


def effective_capabilities() -> int:
    return _capget()[0]
