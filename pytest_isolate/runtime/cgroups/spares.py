"""Cgroups made ahead and removed behind, so that neither costs the caller's critical path.

A capped container needs a cgroup with its limits written (mkdir and writes in each hierarchy:
about 1.2 ms on the development machine's four v1 hierarchies) before its workload may run,
and its removal after the figures are read can meet EBUSY while the last exits settle.

Two ways to keep that off the critical path:
- warm containers (`chores`): the zygote carries out the steps (runtime/zygote.py)
  beside building the next container, while this process sleeps through the current test.
  The caller plans them here (`Driver.plan_ahead`: the directories and the values) and learns
  at the next take what became of them.
- cold containers (`tidy`): this process does the same work itself while the container starts.

`claim` then hands out the spare for the caps asked, ready. An ended container's cgroup that
is as good as new becomes the next spare for its caps (`retire`, Driver.recycle), so that in a
run of tests with the same caps no cgroup is made or removed at all after the first two.
Every cgroup keeps its `pti-<pid>-<n>` name (this process's pid, whoever made it), so a
process killed with spares left is cleaned up like any other (state.cleanup_stale); `flush`
also removes, at the end, what a zygote was asked to make and never answered for.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Callable

from . import open_cgroup
from .driver import Driver, NoCgroup

Caps = tuple  # (cpu, memory, pids)

_spares: dict[Caps, Driver] = {}
_retired: list[Driver] = []
# caps -> whether the last ended cgroup with them was reused: then none is made ahead for them
# (the one in use comes back), else the zygote would make and remove one a test for nothing.
_reused: dict[Caps, bool] = {}
_owner = os.getpid()  # a forked child must neither use nor remove its parent's cgroups
_in_flight: list[_Chores] = []  # sent to the zygote, not answered yet
_unanswered: list[Driver] = []  # spares asked for whose answer never came: removed at flush
_settle: Callable[[], None] | None = None  # gets the zygote's answer now (see set_settler)


def _mine() -> None:
    """Forget the parent's cgroups in a forked child: checked at use rather than in an
    at-fork handler, which would run in every test's child (see warm._own_lock)."""
    global _owner
    if _owner != os.getpid():
        _owner = os.getpid()
        _spares.clear()
        _retired.clear()
        _reused.clear()
        _unanswered.clear()
        _in_flight.clear()


def claim(cpu: float | None, memory: int | None, pids: int | None) -> Driver:
    """An applied cgroup for these caps: the spare made ahead, else a new one."""
    _mine()
    driver = _spares.pop((cpu, memory, pids), None)
    if driver is None:
        driver = open_cgroup(cpu, memory, pids)
        driver.apply()
    return driver


def retire(driver: Driver) -> None:
    """The container has ended and its figures are read: the cgroup becomes the spare for its
    caps when it can be reused (Driver.recycle) and none is there yet, else it is removed at
    the next tidy or chores."""
    if not isinstance(driver, NoCgroup):
        _mine()
        key = (driver.cpu, driver.memory, driver.pids)
        if key in _spares:
            _retired.append(driver)
        elif driver.recycle():
            _spares[key] = driver
            _reused[key] = True
        else:
            _retired.append(driver)
            _reused[key] = False


def tidy(cpu: float | None, memory: int | None, pids: int | None) -> None:
    """Remove ended containers' cgroups that are empty now; make the spare for these caps."""
    _mine()
    busy = []
    for driver in _retired:
        if not driver.try_destroy():
            busy.append(driver)  # a process is still exiting: next time
    _retired[:] = busy
    key = (cpu, memory, pids)
    if key not in _spares and any(v is not None for v in key) and not _reused.get(key):
        with contextlib.suppress(Exception):  # a failure shows at claim, with its message
            driver = open_cgroup(cpu, memory, pids)
            driver.apply()
            _spares[key] = driver


class _Chores:
    """Chores sent to the zygote: the spare asked for (or None) and the cgroups to remove."""

    def __init__(self, key: Caps, spare: Driver | None, removals: list[Driver]):
        self.key, self.spare, self.removals = key, spare, removals

    def done(self, answer: dict | None) -> None:
        """The zygote's answer: {"busy": [dirs still there], "error": text or None}; None
        when no answer will come (not sent, or the zygote died)."""
        _mine()
        if self not in _in_flight:  # forgotten (forked child), or answered already
            return
        _in_flight.remove(self)
        busy = None if answer is None else set(answer.get("busy", ()))
        for driver in self.removals:  # what is gone now is gone; the rest is tried again
            if busy is None or busy.intersection(driver.directories()):
                _retired.append(driver)
        spare = self.spare
        if spare is None:
            return
        if answer is not None and answer.get("error") is None and self.key not in _spares:
            _spares[self.key] = spare
        elif answer is not None and answer.get("error") is None:
            _retired.append(spare)  # not needed (an ended one was reused): removed later
        elif answer is not None:  # failed: the zygote removed what it made
            spare.destroy()
        else:  # unknown whether it was made, or is being made: removed at flush
            _unanswered.append(spare)


def chores(cpu: float | None, memory: int | None, pids: int | None,
           like: Driver | None = None
           ) -> tuple[dict | None, Callable[[dict | None], None] | None]:
    """(work, callback) for the zygote to do while the next test runs: make the spare for
    these caps (unless one is ready, or the last ended one was reused; `like`: a cgroup just
    claimed for them, whose sibling it is, without open_cgroup's checks again) and remove
    ended containers' cgroups; (None, None) when there is nothing to do. The callback must
    get the answer, or None when none will come."""
    _mine()
    key = (cpu, memory, pids)
    spare = None
    plan = None
    if key not in _spares and any(v is not None for v in key) and not _reused.get(key):
        with contextlib.suppress(Exception):  # a failure shows at claim, with its message
            spare = (like.sibling() if like is not None and not isinstance(like, NoCgroup)
                     else open_cgroup(cpu, memory, pids))
            plan = spare.plan_ahead()
        if plan is None:
            spare = None
    removals, _retired[:] = list(_retired), []
    if spare is None and not removals:
        return None, None
    record = _Chores(key, spare, removals)
    _in_flight.append(record)
    mkdir, writes = plan if plan is not None else ([], [])
    return ({"mkdir": mkdir, "write": [list(w) for w in writes],
             "rmdir": [d for driver in removals for d in driver.directories()]}, record.done)


def set_settler(settle: Callable[[], None]) -> None:
    """How `flush` gets the answer to chores in flight (the warm pool's settle)."""
    global _settle
    _settle = settle


def flush() -> None:
    """Remove every spare and ended container's cgroup now (waiting out EBUSY)."""
    _mine()
    if _in_flight and _settle is not None:
        with contextlib.suppress(Exception):
            _settle()
    for record in list(_in_flight):
        record.done(None)
    while _retired:
        _retired.pop().destroy()
    while _spares:
        _spares.popitem()[1].destroy()
    while _unanswered:
        _unanswered.pop().destroy()
    _reused.clear()  # none is left to come back


atexit.register(flush)
