"""Shared test helpers. `require` skips when the host lacks something, and fails instead under
PYTEST_ISOLATE_STRICT=1 (CI lanes), so a green run cannot hide skipped privileged tests."""

from __future__ import annotations

import os
import time

import pytest

pytest_plugins = ["pytester"]

STRICT = os.environ.get("PYTEST_ISOLATE_STRICT") == "1"


def require(ok: bool, reason: str) -> None:
    if ok:
        return
    if STRICT:
        pytest.fail(f"PYTEST_ISOLATE_STRICT=1 and this host lacks: {reason}", pytrace=False)
    pytest.skip(reason)


def userns_possible() -> bool:
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            return int(f.read()) > 0
    except OSError:
        return False


def can_contain() -> tuple[bool, str]:
    if os.geteuid() == 0:
        return True, ""
    if not userns_possible():
        return False, "unprivileged user namespaces are disabled (user.max_user_namespaces=0)"
    return True, ""


NO_DELEGATION = "rootless: no writable cgroup here (cgroup v1 has no delegation to users)"


def require_containers() -> None:
    ok, reason = can_contain()
    require(ok, reason)


def require_caps() -> None:
    """Writable cpu, memory and pids controllers; rootless on cgroup v1 skips (even strict)."""
    from pytest_isolate.runtime.cgroups import writable_controllers

    if os.geteuid() != 0 and not writable_controllers():
        pytest.skip(NO_DELEGATION)
    require({"cpu", "memory", "pids"} <= writable_controllers(),
            "writable cpu, memory and pids cgroup controllers")


# How long a test waits for the kernel to catch up (processes to start or die, links to go).
# Generous, because the UML lane forks slowly under CI load; each wait ends once it holds.
WAIT = 30.0


def wait_until(check, timeout: float = WAIT, interval: float = 0.02):
    """Call check() until it returns something true or timeout passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def sleeps_with(marker: str) -> list[int]:
    """Pids of running `sleep 1000<marker>` processes (argv matched exactly, so the command
    line of whoever started them never counts)."""
    want = f"sleep\0{1000}{marker}\0".encode()
    found = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if f.read() == want:
                        found.append(int(p))
            except OSError:  # gone meanwhile
                pass
    return found


def netem_available() -> bool:
    from pytest_isolate.runtime.network import probe_netem

    return probe_netem() is None


def require_netem() -> None:
    """netem runs where the kernel has it: strictly in the UML lane, which sets
    PYTEST_ISOLATE_LANE=uml; elsewhere (the development kernel has no sch_netem) it skips."""
    from pytest_isolate.runtime.network import probe_netem

    missing = probe_netem()
    if missing and os.environ.get("PYTEST_ISOLATE_LANE") == "uml":
        require(False, missing)
    if missing:
        pytest.skip(missing)


def children() -> set[int]:
    """Pids of this process's children (of any of its threads)."""
    pids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            pids.update(int(p) for p in f.read().split())
    return pids


def net_fds() -> set[str]:
    """The network namespaces this process holds open by fd ("net:[inode]")."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("net:["):
            found.add(target)
    return found
