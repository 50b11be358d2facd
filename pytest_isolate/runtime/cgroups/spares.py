"""Cgroups made ahead and removed behind, so that neither costs the caller's critical path.

A capped container needs a cgroup with its limits written (0.35 ms here) before its workload
may run, and its removal after the figures are read can meet EBUSY while the last exits
settle. `tidy` runs while a container's workload runs (the caller only waits then): it removes
the cgroups of containers that have ended and makes the next container's cgroup with the same
caps, which `claim` then hands out ready. Every cgroup keeps its `pti-<pid>-<n>` name, so a
process killed with spares left is cleaned up like any other (state.cleanup_stale).
"""

from __future__ import annotations

import atexit
import contextlib
import os

from . import open_cgroup
from .driver import Driver, NoCgroup

Caps = tuple  # (cpu, memory, pids)

_spares: dict[Caps, Driver] = {}
_retired: list[Driver] = []
_owner = os.getpid()  # a forked child must neither use nor remove its parent's cgroups


def _mine() -> None:
    """Forget the parent's cgroups in a forked child: checked at use rather than in an
    at-fork handler, which would run in every test's child (see warm._own_lock)."""
    global _owner
    if _owner != os.getpid():
        _owner = os.getpid()
        _spares.clear()
        _retired.clear()


def claim(cpu: float | None, memory: int | None, pids: int | None) -> Driver:
    """An applied cgroup for these caps: the spare made ahead, else a new one."""
    _mine()
    driver = _spares.pop((cpu, memory, pids), None)
    if driver is None:
        driver = open_cgroup(cpu, memory, pids)
        driver.apply()
    return driver


def retire(driver: Driver) -> None:
    """The container has ended and its figures are read: remove the cgroup at the next tidy."""
    if not isinstance(driver, NoCgroup):
        _mine()
        _retired.append(driver)


def tidy(cpu: float | None, memory: int | None, pids: int | None) -> None:
    """Remove ended containers' cgroups that are empty now; make the spare for these caps."""
    _mine()
    busy = []
    for driver in _retired:
        if not driver.try_destroy():
            busy.append(driver)  # a process is still exiting: next time
    _retired[:] = busy
    key = (cpu, memory, pids)
    if key not in _spares and any(v is not None for v in key):
        with contextlib.suppress(Exception):  # a failure shows at claim, with its message
            driver = open_cgroup(cpu, memory, pids)
            driver.apply()
            _spares[key] = driver


def flush() -> None:
    """Remove every spare and ended container's cgroup now (waiting out EBUSY)."""
    _mine()
    while _retired:
        _retired.pop().destroy()
    while _spares:
        _spares.popitem()[1].destroy()


atexit.register(flush)
