"""Reaping later: the settled workloads whose exit overlaps the caller's next work, and the
zygotes told to exit (pool.py). Per process, in `local.here()`."""

from __future__ import annotations

import contextlib
import os
import subprocess

from ..local import here


def defer_reap(pid: int) -> None:
    """Reap this settled workload later (`reap_exiting`): exiting a forked copy of a big
    caller (unmapping its memory) takes milliseconds, which then overlap the caller's work."""
    here().exiting.append(pid)


def reap_exiting(block: bool = False) -> None:
    """Reap deferred workloads that have exited (all of them, with `block`). Safe from several
    threads: a pid leaves the list only once it is reaped."""
    exiting = here().exiting
    for pid in list(exiting):
        try:
            done, _ = os.waitpid(pid, 0 if block else os.WNOHANG)
        except ChildProcessError:  # reaped already (another thread, or a waitpid(-1))
            done = pid
        if done:
            with contextlib.suppress(ValueError):
                exiting.remove(pid)


def reap_closed(timeout: float) -> None:
    """Reap the zygotes told to exit; one still there after `timeout` is killed (it may be
    stuck in a build, or wait for a reap of ours: the next call reaps it)."""
    closed = here().closed  # zygotes told to exit, not reaped yet
    for proc in list(closed):
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()  # in case it is stuck in a build; it may also wait for a reap of ours
        else:
            closed.remove(proc)
