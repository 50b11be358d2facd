"""The confinement step: no_new_privs, capabilities dropped, the seccomp filter loaded.

Rule: runs in the workload (or an exec's helper) as its last step before user code; the order
inside is fixed: no_new_privs first (seccomp needs it without CAP_SYS_ADMIN, and no exec may
gain privileges back), the bounding set before the process's own sets (so that an exec'd
program, whose capabilities are recomputed from the bounding set, gets no more), the filter
last (it could deny the calls before it).
"""

from __future__ import annotations

import ctypes
import errno

from .. import syscalls as sc
from ..errors import SetupError

PR_CAPBSET_DROP = 24
PR_SET_SECCOMP = 22
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2
_CAPABILITY_VERSION_3 = 0x20080522
_LAST_CAP_GUESS = 63


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _capget() -> tuple[int, int]:
    hdr, data = _Header(_CAPABILITY_VERSION_3, 0), (_Data * 2)()
    if sc.libc().capget(ctypes.byref(hdr), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    return (data[0].effective | data[1].effective << 32,
            data[0].permitted | data[1].permitted << 32)


def _capset(effective: int, permitted: int, inheritable: int) -> None:
    hdr, data = _Header(_CAPABILITY_VERSION_3, 0), (_Data * 2)()
    for i in (0, 1):
        data[i].effective = (effective >> (32 * i)) & 0xFFFFFFFF
        data[i].permitted = (permitted >> (32 * i)) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> (32 * i)) & 0xFFFFFFFF
    if sc.libc().capset(ctypes.byref(hdr), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {errno.errorcode.get(err, err)}")


def drop_capabilities(keep: int) -> None:
    """Keep only the capabilities in the mask `keep`: bounding, permitted, effective;
    inheritable and ambient empty."""
    for cap in range(_LAST_CAP_GUESS + 1):
        if keep >> cap & 1:
            continue
        try:
            sc.prctl(PR_CAPBSET_DROP, cap)
        except OSError as e:
            if e.errno == errno.EINVAL:  # past this kernel's last capability
                break
            raise SetupError("drop capabilities", f"bounding set, capability {cap}", e.errno,
                             str(e)) from None
    sc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    _, permitted = _capget()
    _capset(permitted & keep, permitted & keep, 0)


def load_seccomp(program: bytes) -> None:
    n = len(program) // 8
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _Fprog(n, ctypes.cast(buf, ctypes.c_void_p))
    try:
        sc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog))
    except OSError as e:
        raise SetupError("seccomp", f"filter of {n} instructions", e.errno, str(e),
                         "a kernel built with CONFIG_SECCOMP_FILTER, or seccomp='off'"
                         ) from None


def confine(confinement) -> None:
    """Apply a confine.policy.Confinement to this process."""
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    if confinement.caps is not None:
        drop_capabilities(confinement.caps)
    if confinement.program:
        load_seccomp(confinement.program)


def effective_capabilities() -> int:
    return _capget()[0]
