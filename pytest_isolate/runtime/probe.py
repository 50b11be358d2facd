"""What this host supports, each answer with the evidence and the fix. Probed once per process.

Rule: probes that need the kernel run in forked children so that nothing in this process
changes; results are cached.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

from . import syscalls as sc
from .cgroups import detect_mode, writable_controllers
from .cgroups.driver import read
from .errors import SetupError, UnsupportedError
from .kernel.namespaces import enter_user_namespace
from .plan import ORDERED_NAMESPACES


@dataclass(frozen=True)
class Feature:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _in_child(body: Callable[[], None]) -> int:
    """Run body in a forked child; 0 on success, else the errno it failed with."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            body()
        except (OSError, SetupError) as e:
            code = e.errno or 1
        except BaseException:
            code = 255
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _enter_userns_if_needed() -> None:
    if os.geteuid() != 0:
        enter_user_namespace(os.geteuid(), os.getegid())


def _err(code: int) -> str:
    return "ok" if code == 0 else f"failed: {os.strerror(code) if code < 255 else 'error'}"


def probe_namespaces() -> list[Feature]:
    out = []
    for name, flag in ORDERED_NAMESPACES:
        def body(flag: int = flag) -> None:
            if flag != sc.CLONE_NEWUSER:
                _enter_userns_if_needed()
            sc.unshare(flag)
        code = _in_child(body)
        fix = "" if code == 0 else (
            "allow unprivileged user namespaces (sysctl user.max_user_namespaces=15000, "
            "kernel.unprivileged_userns_clone=1, on Ubuntu "
            "kernel.apparmor_restrict_unprivileged_userns=0) or run as root"
            if name == "user" or os.geteuid() != 0 else
            f"a kernel built with the {name} namespace "
            f"(CONFIG_{'' if name == 'mnt' else name.upper() + '_'}NS)")
        out.append(Feature(f"{name} namespace", code == 0, _err(code), fix))
    return out


def _overlay_body(userns: bool) -> Callable[[], None]:
    def body() -> None:
        if userns:
            enter_user_namespace(os.geteuid(), os.getegid())
        sc.unshare(sc.CLONE_NEWNS)
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        sc.mount("pti-probe", "/dev/shm", "tmpfs", 0)
        for d in ("u", "w", "m"):
            os.mkdir(f"/dev/shm/{d}")
        opts = "lowerdir=/usr,upperdir=/dev/shm/u,workdir=/dev/shm/w"
        sc.mount("pti-probe", "/dev/shm/m", "overlay", 0, opts + (",userxattr" if userns else ""))
    return body


def probe_filesystems() -> list[Feature]:
    out = []
    if os.geteuid() == 0:
        code = _in_child(_overlay_body(False))
        out.append(Feature("overlayfs as root", code == 0, _err(code),
                           "" if code == 0 else "modprobe overlay"))
    code = _in_child(_overlay_body(True))
    out.append(Feature("overlayfs in a user namespace", code == 0, _err(code),
                       "" if code == 0 else "Linux >= 5.11 mounts overlayfs in user namespaces"))

    def pivot() -> None:
        _enter_userns_if_needed()
        sc.unshare(sc.CLONE_NEWNS)
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        sc.mount("pti-probe", "/dev/shm", "tmpfs", 0)
        os.chdir("/dev/shm")
        sc.pivot_root(".", ".")
        sc.umount2(".", sc.MNT_DETACH)
    code = _in_child(pivot)
    out.append(Feature("pivot_root", code == 0, _err(code), ""))
    return out


def probe_userns_sysctls() -> list[Feature]:
    out = []
    mx = read("/proc/sys/user/max_user_namespaces")
    out.append(Feature("user.max_user_namespaces", mx not in (None, "0"), str(mx),
                       "sysctl -w user.max_user_namespaces=15000" if mx == "0" else ""))
    clone = read("/proc/sys/kernel/unprivileged_userns_clone")
    if clone is not None:
        out.append(Feature("kernel.unprivileged_userns_clone", clone == "1", clone,
                           "sysctl -w kernel.unprivileged_userns_clone=1" if clone != "1" else ""))
    aa = read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
    if aa is not None:
        out.append(Feature("AppArmor userns restriction", aa == "0",
                           "restricted" if aa != "0" else "not restricted",
                           "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or an "
                           "AppArmor profile granting userns to this Python" if aa != "0" else ""))
    return out


def probe_cgroups() -> list[Feature]:
    with open("/proc/self/mountinfo") as f:
        mode = detect_mode(f.read())
    out = [Feature("cgroup mode", mode != "none", mode,
                   "" if mode != "none" else "mount cgroup2 on /sys/fs/cgroup")]
    writable = writable_controllers()
    for ctl in ("cpu", "memory", "pids"):
        ok = ctl in writable
        out.append(Feature(f"cgroup controller {ctl}", ok, "writable" if ok else "not writable",
                           "" if ok else "run as root, or in a delegated cgroup v2 subtree "
                           "(systemd-run --user --scope -p Delegate=yes ...)"))
    # How a capped container joins its cgroup: informational, either way works.
    if mode != "v2":
        how = f"the container moves itself: tasks (cgroup {mode})"
    elif sc.can_fork_into_cgroup():
        how = "at birth (clone3 CLONE_INTO_CGROUP)"
    else:
        how = "by a cgroup.procs write (clone3 refused, or this process has threads)"
    out.append(Feature("cgroup placement", True, how))
    return out


def probe_confinement() -> list[Feature]:
    """The default confinement applied for real in a child, the seccomp actions it uses, and
    whether root could have a user namespace instead (Spec(userns=True))."""
    from .confine import policy
    from .kernel import confine

    machine = os.uname().machine
    conf = policy.confinement("default", own_netns=True)
    clock = policy.syscall_table(machine).get("clock_settime")

    def body() -> None:
        _enter_userns_if_needed()  # where a rootless workload is confined
        confine.confine(conf)
        if clock is not None:
            bad = (ctypes.c_long * 2)(0, -1)  # invalid: let through, it would be EINVAL
            if sc.libc().syscall(ctypes.c_long(clock), 0, bad) == 0 or \
                    ctypes.get_errno() != errno.EPERM:
                raise OSError(errno.EINVAL, "clock_settime was not denied")
    if not conf.program:
        out = [Feature("seccomp filter", False, f"no syscall table for {machine}",
                       "x86_64 or aarch64; elsewhere only capabilities are dropped")]
    else:
        code = _in_child(body)
        out = [Feature("seccomp filter", code == 0,
                       f"default profile loaded, {len(conf.denied)} calls denied ({machine})"
                       if code == 0 else _err(code), "" if code == 0 else
                       "a kernel with CONFIG_SECCOMP_FILTER, or seccomp='off'")]
    avail = (read("/proc/sys/kernel/seccomp/actions_avail") or "").split()
    have = [a for a, kernel in (("errno", "errno"), ("kill", "trap")) if kernel in avail]
    out.append(Feature("seccomp actions", len(have) == 2, ", ".join(have) or "none",
                       "" if len(have) == 2 else "a kernel whose seccomp has errno and trap"))
    if os.geteuid() == 0:
        code = _in_child(lambda: sc.unshare(sc.CLONE_NEWUSER))
        out.append(Feature("user namespace for root (userns=True)", code == 0,
                           "available; by default root's containers drop capabilities "
                           "instead" if code == 0 else _err(code),
                           "" if code == 0 else "root's containers still drop capabilities "
                           "and load the filter: nothing to fix for the default"))
    return out


def probe_misc() -> list[Feature]:
    return probe_confinement() + probe_network()


def probe_network() -> list[Feature]:
    """Tried for real: a veth pair between two new namespaces, and netem on it."""
    from .network import VethPair, probe_netem

    try:
        with VethPair() as pair:
            detail = f"ok ({pair.subnet}{', in a user namespace' if pair.a.ns.pod else ''})"
        veth, fix = True, ""
    except Exception as e:  # whatever stops it is what the user needs to read
        veth, detail, fix = False, str(e).splitlines()[0], "see the error; root helps"
    out = [Feature("veth pairs between namespaces", veth, detail, fix)]
    root = os.geteuid() == 0
    out.append(Feature("veth to the host (network='veth')", root,
                       "root" if root else "needs root in the host's network namespace",
                       "" if root else "run as root; rootless, link namespaces to each other "
                       "(veth_pair, network fixtures)"))
    missing = probe_netem() if veth else "no veth pair to try it on"
    out.append(Feature("netem impairments (delay, loss, ...)", missing is None,
                       "available" if missing is None else missing,
                       "" if missing is None else "modprobe sch_netem, or a kernel with "
                       "CONFIG_NET_SCH_NETEM (this project's UML lane has it); a bare rate "
                       "works without it (tbf)"))
    return out


@functools.lru_cache(maxsize=1)
def check() -> tuple[Feature, ...]:
    """Every probe, for `python -m pytest_isolate check`."""
    head = [Feature("running as", True, "root" if os.geteuid() == 0 else
                    f"uid {os.geteuid()} (rootless: user namespaces)")]
    return tuple(head + probe_namespaces() + probe_filesystems() + probe_userns_sysctls()
                 + probe_cgroups() + probe_misc())


@functools.lru_cache(maxsize=1)
def summary_line() -> str:
    """One cheap line for the pytest header (no forks)."""
    who = "root" if os.geteuid() == 0 else "rootless"
    with open("/proc/self/mountinfo") as f:
        mode = detect_mode(f.read())
    caps = ",".join(sorted(writable_controllers())) or "none"
    mx = read("/proc/sys/user/max_user_namespaces")
    userns = "userns ok" if mx not in (None, "0") else "userns disabled"
    return f"{who}, cgroup {mode} (writable: {caps}), {userns}"


@functools.lru_cache(maxsize=1)
def blocker() -> UnsupportedError | None:
    """Why no container at all can start here (cheap, no forks), or None."""
    import sys

    if sys.platform != "linux":
        return UnsupportedError("containers", f"this is {sys.platform}, not Linux: "
                                "namespaces, overlayfs and cgroups are Linux kernel features",
                                "run on Linux (a VM or CI runner), or use --isolate=off")
    if os.geteuid() == 0:
        return None
    for feature in probe_userns_sysctls():
        if not feature.ok:
            return UnsupportedError("rootless containers",
                                    f"unprivileged user namespaces are blocked "
                                    f"({feature.name} = {feature.detail})",
                                    f"{feature.fix}, or run as root")
    return None
