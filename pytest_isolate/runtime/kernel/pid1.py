"""The container's init: forwards signals to the workload, reaps every child and orphan, and
reports the workload's wait status.

Rule: pid 1 runs no user code. The kernel drops signals to a namespace's init unless it has a
handler, so the handlers are installed before the workload is forked (and reset in the
workload); when pid 1 exits the kernel kills every process left in the namespace.
"""

from __future__ import annotations

import os
import signal

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
             signal.SIGUSR1, signal.SIGUSR2)


class Forwarder:
    """Signal handlers that pass signals on to one pid once it is known."""

    def __init__(self) -> None:
        self.target: int | None = None
        self.saved = {sig: signal.getsignal(sig) for sig in FORWARDED}
        for sig in FORWARDED:
            signal.signal(sig, self._forward)

    def _forward(self, signum: int, _frame: object) -> None:
        if self.target is not None:
            try:
                os.kill(self.target, signum)
            except ProcessLookupError:
                pass

    def restore(self) -> None:
        """In the workload: its own signals behave as they did in the caller."""
        for sig, handler in self.saved.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def reap_until(workload: int) -> int:
    """Reap every child (orphans are re-parented here) until the workload exits; its status."""
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == workload:
            return status


def exit_code_for(status: int) -> int:
    """What init exits with: the workload's code, or 128+signal (init cannot die of it)."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)
