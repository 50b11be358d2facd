"""cgroups: mode detection, which controllers this process may write, and the driver for one
container's caps (`open_cgroup`).

Rule: detection is pure (text in, mode out); files.py decides file values; v1.py and v2.py do
the I/O; NoCgroup stands in when no cap is asked, so callers never branch on it.
"""

from __future__ import annotations

import os

from ..errors import UnsupportedError
from ..host import state
from ..kernel.mountinfo import mount_table, parse_mountinfo
from .driver import Driver, NoCgroup, new_name, remove_dir
from .files import CgroupStats
from .v1 import V1Cgroup
from .v2 import V2Cgroup

__all__ = ["CgroupStats", "Driver", "NoCgroup", "detect_mode", "open_cgroup",
           "writable_controllers"]

CONTROLLERS = ("cpu", "cpuacct", "memory", "pids")
CAPPED = ("cpu", "memory", "pids")  # what users cap; cpuacct only gives figures


def detect_mode(mountinfo_text: str) -> str:
    """"v2" (cgroup2 at /sys/fs/cgroup), "hybrid" (v1 controllers plus a cgroup2 elsewhere),
    "v1", or "none"."""
    v1 = v2_root = v2_other = False
    for m in parse_mountinfo(mountinfo_text):
        if m.fstype == "cgroup2":
            if m.mountpoint == "/sys/fs/cgroup":
                v2_root = True
            else:
                v2_other = True
        elif m.fstype == "cgroup":
            v1 = True
    if v2_root and not v1:
        return "v2"
    if v1:
        return "hybrid" if v2_other or v2_root else "v1"
    return "v2" if v2_other else "none"


def _read_mountinfo() -> str:
    return mount_table()  # the same string object while the table is unchanged


def _memberships() -> list[list[str]]:
    with open("/proc/self/cgroup") as f:
        return [line.strip().split(":", 2) for line in f if line.strip()]


def own_v2_dir(mountinfo_text: str | None = None) -> str | None:
    """This process's directory on the cgroup2 mount, with or without controllers (a hybrid
    host's has none, but a process can still be placed there), or None without cgroup2."""
    mounts = parse_mountinfo(mountinfo_text if mountinfo_text is not None
                             else _read_mountinfo())
    own = next((path for hid, names, path in _memberships() if hid == "0" and names == ""),
               None)
    mount = next((m for m in mounts if m.fstype == "cgroup2"), None)
    if own is None or mount is None:
        return None
    return os.path.normpath(os.path.join(mount.mountpoint, own.lstrip("/")))


def own_cgroup_dirs(mountinfo_text: str | None = None) -> dict[str, str]:
    """controller -> the directory of this process's cgroup for it (v1 hierarchies or v2)."""
    mounts = parse_mountinfo(mountinfo_text if mountinfo_text is not None
                             else _read_mountinfo())
    memberships = _memberships()
    out: dict[str, str] = {}
    for m in mounts:
        if m.fstype == "cgroup":
            ctls = set(m.super_options.split(",")) & set(CONTROLLERS)
            for _hid, names, path in memberships:
                if ctls & set(names.split(",")):
                    rel = os.path.relpath(path, m.root) if m.root != "/" else path.lstrip("/")
                    for ctl in ctls:
                        out.setdefault(ctl, os.path.normpath(os.path.join(m.mountpoint, rel)))
        elif m.fstype == "cgroup2":
            for hid, names, path in memberships:
                if hid == "0" and names == "":
                    d = os.path.normpath(os.path.join(m.mountpoint, path.lstrip("/")))
                    try:
                        with open(os.path.join(d, "cgroup.controllers")) as f:
                            avail = set(f.read().split())
                    except OSError:
                        avail = set()
                    for ctl in avail & set(CONTROLLERS):
                        out.setdefault(ctl, d)
    return out


def writable_controllers() -> set[str]:
    return {ctl for ctl, d in own_cgroup_dirs().items()
            if ctl in CAPPED and os.access(d, os.W_OK)}


def _pti_cgroups() -> list[tuple[int, str]]:
    """(owner pid, path) of every `pti-<pid>-<n>` cgroup below this process's cgroups."""
    found = []
    v2 = own_v2_dir()  # scanned even without controllers: bench and tests place children there
    for d in set(own_cgroup_dirs().values()) | ({v2} if v2 else set()):
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            parts = name.split("-")
            if len(parts) >= 3 and parts[0] == "pti" and parts[1].isdigit():
                found.append((int(parts[1]), os.path.join(d, name)))
    return found


def stale_owners() -> set[int]:
    return {owner for owner, _ in _pti_cgroups()}


def remove_stale(owner_pid: int) -> list[str]:
    """Remove the cgroups a dead owner left (processes in them are killed first)."""
    return [path for owner, path in _pti_cgroups() if owner == owner_pid and remove_dir(path)]


_NO_CGROUP_FIX = ("run as root, or inside a delegated cgroup v2 subtree "
                  "(systemd-run --user --scope -p Delegate=yes ...)")


_detected: dict[tuple[str, bytes, int], tuple[str, dict[str, str], set[str]]] = {}


def _detect() -> tuple[str, dict[str, str], set[str]]:
    """(mode, controller -> own cgroup dir, writable controllers), parsed again only when the
    mount table, this process's cgroups or its uid changed (parsing costs 1.5 ms a time)."""
    mountinfo = _read_mountinfo()
    fd = os.open("/proc/self/cgroup", os.O_RDONLY | os.O_CLOEXEC)
    try:  # os.read, not open(): a third of the cost, paid per capped container
        memberships = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    key = (mountinfo, memberships, os.geteuid())
    found = _detected.get(key)
    if found is None:
        dirs = own_cgroup_dirs(mountinfo)
        writable = {c for c, d in dirs.items() if os.access(d, os.W_OK)}
        found = (detect_mode(mountinfo), dirs, writable)
        _detected.clear()
        _detected[key] = found
    return found


def open_cgroup(cpu: float | None, memory: int | None, pids: int | None) -> Driver:
    """The driver for one container's caps; NoCgroup when none is asked. Nothing is created
    until `apply()`. Caps that no writable cgroup can enforce raise UnsupportedError."""
    if cpu is None and memory is None and pids is None:
        return NoCgroup()
    asked = [name for name, v in (("cpu", cpu), ("memory", memory), ("pids", pids))
             if v is not None]
    mode, dirs, writable = _detect()
    missing = [c for c in asked if c not in dirs]
    if missing:
        raise UnsupportedError(f"cgroup caps ({', '.join(asked)})",
                               f"no {', '.join(missing)} controller is mounted on this host",
                               "mount the cgroup hierarchy (cgroup2 on /sys/fs/cgroup)")
    readonly = [c for c in asked if c not in writable]
    if readonly:
        raise UnsupportedError(f"cgroup caps ({', '.join(asked)})",
                               f"this process may not create cgroups below "
                               f"{dirs[readonly[0]]} (uid {os.geteuid()})", _NO_CGROUP_FIX)
    state.ensure_owner_lock()
    name = new_name()
    if mode == "v2":
        return V2Cgroup(name, dirs[asked[0]], cpu, memory, pids)
    return V1Cgroup(name, {c: dirs[c] for c in writable}, cpu, memory, pids)
