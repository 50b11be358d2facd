"""What a container should be: frozen values, checked by `validate` before the kernel is touched.

Rule: this module is pure. `validate` runs a list of small checks; each one raises `SpecError`
naming the field, the value and what is expected.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import SpecError

NETWORK_MODES = ("none", "host", "veth")
HOSTNAME_MAX = 64  # HOST_NAME_MAX on Linux
MEMORY_FLOOR = 4 * 1024 * 1024  # below this even pid 1 (a Python process) cannot start
_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(value: int | str) -> int:
    """`"64M"` -> 67108864; ints pass through. Units are powers of 1024 (K, M, G, T)."""
    if isinstance(value, bool):
        raise ValueError("a bool is not a size")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"not a size: {value!r}")
    m = _SIZE_RE.match(value)
    if not m:
        raise ValueError(f"not a size: {value!r}")
    number, unit = m.groups()
    return int(float(number) * _SIZE_UNITS[unit.upper()])


def format_size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("G", "M", "K"):
        size = _SIZE_UNITS[unit]
        if n >= size:
            return f"{n / size:.1f}".removesuffix(".0") + unit
    return f"{n}B"


@dataclass(frozen=True)
class Resources:
    """Caps enforced through cgroups. None means no cap."""

    cpu: float | None = None  # CPUs, e.g. 0.3 = 30% of one CPU; above 1 allowed
    memory: int | str | None = None  # bytes or "64M"; swap is capped too
    pids: int | None = None
    timeout: float | None = None  # seconds of wall time; then every process is killed

    @property
    def any_cgroup_cap(self) -> bool:
        return self.cpu is not None or self.memory is not None or self.pids is not None


@dataclass(frozen=True)
class TimeOffsets:
    """Offsets in seconds for a time namespace (CLOCK_MONOTONIC and CLOCK_BOOTTIME)."""

    monotonic: float = 0.0
    boottime: float = 0.0


@dataclass(frozen=True)
class Spec:
    """One container. Defaults give a hermetic copy-on-write view of the host root."""

    hostname: str = "isolated"
    # "none": only lo; "host": the host's network namespace; "veth": lo and eth0, a veth link
    # to the host (root only), addresses in PYTEST_ISOLATE_IP / PYTEST_ISOLATE_HOST_IP inside
    network: str = "none"
    rootfs: str | None = None  # None: copy-on-write view of the host root; else a directory
    # An image: a directory, a `docker export` tarball, an OCI layout or a `docker save`
    # archive. Resolved (unpacked, cached) into `layers` when the container starts.
    image: str | None = None
    layers: tuple[str, ...] = ()  # overlay lower directories, bottom first (from `image`)
    # Host paths bound read-only into the container: {host path: path inside}
    mounts: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)  # added to the inherited environment
    workdir: str | None = None  # None: the caller's cwd (host root) or "/" (rootfs)
    resources: Resources = field(default_factory=Resources)
    userns: bool | None = None  # None: a user namespace exactly when not root
    time_offsets: TimeOffsets | None = None  # a time namespace with these offsets
    # An empty directory (not on the root filesystem, e.g. under /dev/shm) that receives the
    # upper layers, so what the container wrote can be inspected after it ends.
    keep_dir: str | None = None
    # Confinement of the workload (docs/explanation/security.md). seccomp: "default" (Docker's
    # profile: the denied calls fail with EPERM), "off", a list of syscall names denied
    # besides, or {"deny": [...], "action": "errno" | "kill", "profile": "default" | "off"}.
    seccomp: object = "default"
    privileged: bool = False  # full host root: no capability dropped, no seccomp filter
    cap_add: tuple[str, ...] = ()  # capabilities kept besides the default set, e.g. "MKNOD"
    cap_drop: tuple[str, ...] = ()  # capabilities of the default set dropped too

    def wants_userns(self) -> bool:
        """A user namespace: asked for, or by default when this process is not host root
        (a user, or root confined in one of our containers)."""
        if self.userns is not None:
            return self.userns
        from .syscalls import host_root

        return not host_root()


# --- checks: each takes the spec and returns the normalised field value or raises ----------


def _check_confinement(spec: Spec) -> dict:
    from .confine import policy

    changes: dict[str, Any] = {}
    if not isinstance(spec.privileged, bool):
        raise SpecError("privileged", spec.privileged, "True or False")
    try:
        policy.parse_seccomp(spec.seccomp)
    except ValueError as e:
        raise SpecError("seccomp", spec.seccomp, str(e)) from None
    for name in ("cap_add", "cap_drop"):
        value = getattr(spec, name)
        try:
            caps = policy.check_capabilities(value, name)
        except ValueError as e:
            raise SpecError(name, value, str(e)) from None
        if caps != value:
            changes[name] = caps
    return changes

def _check_hostname(spec: Spec) -> dict:
    h = spec.hostname
    if not isinstance(h, str) or not h:
        raise SpecError("hostname", h, "a non-empty string")
    if len(h.encode()) > HOSTNAME_MAX:
        raise SpecError("hostname", h, f"at most {HOSTNAME_MAX} bytes (got {len(h.encode())})")
    if "\0" in h or "/" in h:
        raise SpecError("hostname", h, "no NUL or '/' characters")
    return {}


def _check_network(spec: Spec) -> dict:
    if hasattr(spec.network, "ns") and hasattr(spec.network, "ip"):
        return {}  # a member of a network.Network (Network.attach()): joined, root only
    if spec.network not in NETWORK_MODES:
        raise SpecError("network", spec.network, f"one of {', '.join(NETWORK_MODES)}, or a "
                        "member of a Network (net.attach())")
    return {}


def _check_rootfs(spec: Spec) -> dict:
    r = spec.rootfs
    if spec.image is not None:
        if r is not None:
            raise SpecError("image", spec.image, "either image or rootfs, not both")
        if not isinstance(spec.image, (str, os.PathLike)) or not os.path.exists(spec.image):
            raise SpecError("image", spec.image, "an existing directory, `docker export` "
                            "tarball, OCI image layout or `docker save` archive")
        return {"image": os.path.abspath(os.fspath(spec.image))}
    if r is None:
        return {}
    if not isinstance(r, (str, os.PathLike)):
        raise SpecError("rootfs", r, "a path to a directory holding a root filesystem")
    path = os.path.abspath(os.fspath(r))
    if not os.path.isdir(path):
        raise SpecError("rootfs", r, "an existing directory holding a root filesystem")
    return {"rootfs": path}


def _check_env(spec: Spec) -> dict:
    if not isinstance(spec.env, Mapping):
        raise SpecError("env", spec.env, "a mapping of str to str")
    for k, v in spec.env.items():
        if not isinstance(k, str) or not k or "=" in k or "\0" in k:
            raise SpecError("env", k, "variable names: non-empty str without '=' or NUL")
        if not isinstance(v, str) or "\0" in v:
            raise SpecError(f"env[{k!r}]", v, "a str without NUL")
    return {"env": dict(spec.env)}


def _check_mounts(spec: Spec) -> dict:
    if not isinstance(spec.mounts, Mapping):
        raise SpecError("mounts", spec.mounts, "a mapping {host path: path inside}")
    out = {}
    for src, dst in spec.mounts.items():
        if not isinstance(src, str) or not os.path.exists(src):
            raise SpecError("mounts", src, "an existing host path")
        if not isinstance(dst, str) or not dst.startswith("/") or ".." in dst.split("/"):
            raise SpecError(f"mounts[{src!r}]", dst, "an absolute path inside, without '..'")
        out[os.path.abspath(src)] = os.path.normpath(dst)
    return {"mounts": out} if out else {}


def _check_workdir(spec: Spec) -> dict:
    w = spec.workdir
    if w is not None and (not isinstance(w, str) or not w.startswith("/")):
        raise SpecError("workdir", w, "an absolute path inside the container")
    return {}


def _positive_number(name: str, value: object, what: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise SpecError(name, value, what)
    return float(value)


def _check_resources(spec: Spec) -> dict:
    r = spec.resources
    if not isinstance(r, Resources):
        raise SpecError("resources", r, "a Resources value")
    changes: dict[str, Any] = {}
    if r.cpu is not None:
        changes["cpu"] = _positive_number("cpu", r.cpu, "a number of CPUs > 0, e.g. 0.5")
        if changes["cpu"] < 0.01:
            raise SpecError("cpu", r.cpu, "at least 0.01 CPUs (the kernel's 1 ms quota floor)")
    if r.memory is not None:
        try:
            mem = parse_size(r.memory)
        except ValueError:
            raise SpecError("memory", r.memory,
                            "bytes or a size like 64M or 1.5G") from None
        if mem < MEMORY_FLOOR:
            raise SpecError("memory", r.memory,
                            f"at least {format_size(MEMORY_FLOOR)} ({MEMORY_FLOOR} bytes): "
                            "below that the container's own init cannot start")
        changes["memory"] = mem
    if r.pids is not None and (
            not isinstance(r.pids, int) or isinstance(r.pids, bool) or r.pids < 2):
        raise SpecError("pids", r.pids, "a whole number >= 2 (init and the workload)")
    if r.timeout is not None:
        changes["timeout"] = _positive_number("timeout", r.timeout, "seconds > 0")
    return {"resources": replace(r, **changes)} if changes else {}


def _check_time_offsets(spec: Spec) -> dict:
    t = spec.time_offsets
    if t is None:
        return {}
    if not isinstance(t, TimeOffsets):
        raise SpecError("time_offsets", t, "a TimeOffsets value")
    for name in ("monotonic", "boottime"):
        v = getattr(t, name)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise SpecError(f"time_offsets.{name}", v, "a finite number of seconds")
    return {}


def _check_keep_dir(spec: Spec) -> dict:
    k = spec.keep_dir
    if k is None:
        return {}
    if not isinstance(k, str) or not os.path.isdir(k) or os.listdir(k):
        raise SpecError("keep_dir", k, "an existing empty directory")
    if os.stat(k).st_dev == os.stat("/").st_dev:
        raise SpecError("keep_dir", k, "a directory outside the root filesystem (overlayfs "
                        "refuses an upper layer inside its lower '/'), e.g. under /dev/shm")
    return {"keep_dir": os.path.abspath(k)}


CHECKS: tuple[Callable[[Spec], dict], ...] = (
    _check_hostname, _check_network, _check_rootfs, _check_env, _check_mounts, _check_workdir,
    _check_resources, _check_time_offsets, _check_keep_dir, _check_confinement,
)


# The last spec validated and the result, kept when no check of it looked at the filesystem
# or at a mapping that could change in place: the plugin validates one Spec object for every
# test without a marker.
_last: tuple[Spec, Spec] | None = None


def _pure(spec: Spec) -> bool:
    return not (spec.rootfs or spec.image or spec.mounts or spec.env or spec.keep_dir)


def validate(spec: Spec) -> Spec:
    """Run every check; return the spec with values normalised (sizes in bytes, absolute paths)."""
    global _last
    last = _last
    if last is not None and last[0] is spec and _pure(spec):
        return last[1]
    if not isinstance(spec, Spec):
        raise SpecError("spec", spec, "a pytest_isolate.runtime.Spec")
    changes: dict[str, Any] = {}
    for check in CHECKS:
        changes.update(check(spec))
    valid = replace(spec, **changes) if changes else spec
    if _pure(spec):
        _last = (spec, valid)
    return valid
