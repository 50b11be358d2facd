"""Namespace steps: enter a user namespace, unshare the rest, time offsets, hostname, lo up.

Rule: step functions take explicit arguments, raise SetupError, and never call each other;
plan.py decides the order, setup.py runs them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from .. import syscalls as sc
from ..errors import SetupError, hint_for
from ..local import here


def join_network_namespace(fd: int | None) -> None:
    """Enter the namespace the parent prepared (network="veth"), then let go of the fd."""
    if fd is None:
        return
    try:
        sc.setns(fd, sc.CLONE_NEWNET)
    except OSError as e:
        raise SetupError("setns", "network namespace", e.errno, str(e)) from None
    os.close(fd)


def unshare_namespaces(flags: int) -> None:
    try:
        sc.unshare(flags)
    except OSError as e:
        raise SetupError("unshare", f"flags {flags:#x}", e.errno, str(e),
                         hint_for("unshare", e.errno)) from None


def enter_user_namespace(outer_uid: int, outer_gid: int) -> None:
    """Become root of a new user namespace mapping only the caller's own ids (no helpers)."""
    try:
        sc.unshare(sc.CLONE_NEWUSER)
    except OSError as e:
        raise SetupError("unshare", "user namespace", e.errno, str(e),
                         hint_for("unshare", e.errno)) from None
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {outer_uid} 1"),
                       ("gid_map", f"0 {outer_gid} 1")):
        try:
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        except OSError as e:
            raise SetupError("write id map", f"/proc/self/{name}", e.errno, str(e)) from None


@contextlib.contextmanager
def pid_namespace_for_next_fork(join: int | None = None) -> Iterator[None]:
    """The next fork of this thread becomes pid 1 of a new pid namespace (as root), or, with
    `join` (a pidfd or namespace fd), is born in that pid namespace.

    Saves a whole fork compared with an intermediate process. pid_for_children is per thread,
    so other threads are unaffected; it is restored right after the fork.
    """
    own = os.open("/proc/thread-self/ns/pid_for_children", os.O_RDONLY | os.O_CLOEXEC)
    fds = here().open_fds
    fds.add(own)  # the host's pid namespace: the forked child closes it (launch.close_foreign)
    try:
        try:
            if join is None:
                sc.unshare(sc.CLONE_NEWPID)
            else:
                sc.setns(join, sc.CLONE_NEWPID)
        except OSError as e:
            raise SetupError("unshare" if join is None else "setns", "pid namespace", e.errno,
                             str(e), hint_for("unshare", e.errno)) from None
        try:
            yield
        finally:
            sc.setns(own, sc.CLONE_NEWPID)
    finally:
        fds.discard(own)
        os.close(own)


def enter_time_namespace(monotonic: float, boottime: float) -> None:
    """Children forked after this see CLOCK_MONOTONIC/BOOTTIME shifted by the offsets."""
    try:
        sc.unshare(sc.CLONE_NEWTIME)
    except OSError as e:
        raise SetupError("unshare", "time namespace", e.errno, str(e),
                         "time namespaces need Linux >= 5.6 with CONFIG_TIME_NS") from None
    lines = []
    for clock, offset in (("monotonic", monotonic), ("boottime", boottime)):
        sec = int(offset // 1)
        nsec = round((offset - sec) * 1e9)
        lines.append(f"{clock} {sec} {nsec}\n")
    try:
        with open("/proc/self/timens_offsets", "w") as f:
            f.write("".join(lines))
    except OSError as e:
        raise SetupError("write time offsets", "/proc/self/timens_offsets", e.errno,
                         str(e)) from None


def _uts_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/uts").st_ino
    except OSError:  # no /proc, or no UTS namespaces: then unshare fails before this matters
        return None


# The UTS namespace this process was started in: its hostname belongs to whoever made it (the
# host, as a rule), so set_hostname refuses to change it, whatever path led there.
_STARTED_IN = _uts_namespace()


def set_hostname(name: str) -> None:
    """Name the container; only ever after unshare or setns of CLONE_NEWUTS."""
    if _STARTED_IN is not None and _uts_namespace() == _STARTED_IN:
        raise SetupError("sethostname", name, None,
                         "refused: this process is still in the UTS namespace it started in, "
                         "whose name is not ours to change",
                         "a bug in pytest-isolate: the hostname step ran before the container's "
                         "own UTS namespace existed; please report it")
    try:
        sc.sethostname(name)
    except OSError as e:
        raise SetupError("sethostname", name, e.errno, str(e)) from None


def bring_up_loopback() -> None:
    try:
        sc.set_link_up("lo")
    except OSError as e:
        raise SetupError("link up", "lo", e.errno, str(e)) from None
