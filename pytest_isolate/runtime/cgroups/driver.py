"""What v1 and v2 drivers share: the protocol, file helpers, and removal of a cgroup tree.

Rule: a driver owns exactly the directories it created (`pti-<owner pid>-<n>`), nothing else.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from typing import Protocol

from ..errors import SetupError
from .files import CgroupStats

_counter = itertools.count()


def new_name() -> str:
    return f"pti-{os.getpid()}-{next(_counter)}"


class Driver(Protocol):
    """One container's cgroup: apply limits, add the container, read figures, remove."""

    def apply(self) -> None: ...
    def add_process(self, pid: int) -> None: ...
    def stats(self) -> CgroupStats: ...
    def kill(self) -> None: ...
    def destroy(self) -> None: ...


def read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def write(path: str, value: str, step: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise SetupError(step, path, e.errno, f"writing {value!r}: {e.strerror}") from None


def kill_members(directory: str) -> None:
    """SIGKILL every process of one cgroup directory until it is empty (bounded)."""
    for _ in range(50):
        text = read(os.path.join(directory, "cgroup.procs"))
        if not text:
            return
        for pid in text.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.01)


def remove_dir(directory: str) -> bool:
    """rmdir, retrying while the kernel still holds the cgroup (EBUSY right after exits)."""
    for attempt in range(100):
        try:
            os.rmdir(directory)
            return True
        except FileNotFoundError:
            return True
        except OSError:
            if attempt % 10 == 9:
                kill_members(directory)
            time.sleep(0.005)
    return False


class NoCgroup:
    """Used when no cap is asked: every operation is a no-op, and figures are absent."""

    def apply(self) -> None:
        pass

    def add_process(self, pid: int) -> None:
        pass

    def stats(self) -> CgroupStats:
        return CgroupStats()

    def kill(self) -> None:
        pass

    def destroy(self) -> None:
        pass
