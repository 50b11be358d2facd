"""cgroups: mode detection from mountinfo text and which controllers this process may write.

Rule: detection is pure (text in, mode out); the drivers in v1.py and v2.py own file values.
"""

from __future__ import annotations

import os

from ..rootfs import parse_mountinfo_full

CONTROLLERS = ("cpu", "memory", "pids")


def detect_mode(mountinfo_text: str) -> str:
    """"v2" (cgroup2 at /sys/fs/cgroup), "hybrid" (v1 controllers plus a cgroup2 elsewhere),
    "v1", or "none"."""
    v1 = v2_root = v2_other = False
    for m in parse_mountinfo_full(mountinfo_text):
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


def own_cgroup_dirs() -> dict[str, str]:
    """controller -> the directory of this process's cgroup for it (v1 hierarchies or v2)."""
    with open("/proc/self/mountinfo") as f:
        mounts = parse_mountinfo_full(f.read())
    with open("/proc/self/cgroup") as f:
        memberships = [line.strip().split(":", 2) for line in f if line.strip()]
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
    return {ctl for ctl, d in own_cgroup_dirs().items() if os.access(d, os.W_OK)}


def stale_owner_pids() -> set[int]:
    """Owner pids named by `pti-<pid>-<n>` cgroups below this process's cgroups."""
    pids: set[int] = set()
    for d in set(own_cgroup_dirs().values()):
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            parts = name.split("-")
            if len(parts) >= 3 and parts[0] == "pti" and parts[1].isdigit():
                pids.add(int(parts[1]))
    return pids
