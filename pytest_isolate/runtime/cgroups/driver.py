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

    cpu: float | None
    memory: int | None
    pids: int | None

    def apply(self) -> None: ...
    def add_process(self, pid: int) -> None: ...
    def stats(self) -> CgroupStats: ...
    def recycle(self) -> bool:
        """After stats() of an ended container: make the cgroup ready for the next one with
        the same caps (True), else leave it to be removed (False)."""
        ...
    def kill(self) -> None: ...
    def destroy(self) -> None: ...
    def try_destroy(self) -> bool: ...
    def birth_dir(self) -> str | None:
        """A cgroup v2 directory a child can be forked straight into (clone3), else None."""
        ...
    def plan_ahead(self) -> tuple[list[str], list[tuple[str, str]]] | None:
        """apply() as steps another process can run (spares.py); None: apply() here."""
        ...
    def directories(self) -> list[str]:
        """What removal takes, in order (rmdir each)."""
        ...
    def procs_files(self) -> list[str]:
        """The cgroup.procs files a process is written to, to join (add_process)."""
        ...
    def self_join_files(self) -> list[str]:
        """Files a single-threaded process joins this cgroup through by itself (join_self);
        [] where another process must place it (birth_dir or add_process)."""
        ...
    def sibling(self) -> Driver:
        """A new, not yet applied cgroup beside this one with the same caps (the checks
        open_cgroup made for this one hold for it)."""
        ...


def read(path: str) -> str | None:
    # os.open/os.read: a quarter of the cost of open() with its text layer, and several
    # files are read per container
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 1 << 16).decode().strip()
    except OSError:
        return None
    finally:
        os.close(fd)


def write(path: str, value: str, step: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise SetupError(step, path, e.errno, f"writing {value!r}: {e.strerror}") from None


def join_self(files: list[str]) -> None:
    """Move the calling thread (the whole process when it has one thread: a fresh fork) into
    a cgroup by writing "0" to each v1 `tasks` file.

    Why not a `cgroup.procs` write: that takes the global threadgroup rwsem for writing, which
    after about 20 ms without one waits for an RCU grace period (9-10 ms here, every test of
    a suite). The kernel skips that lock when a thread moves itself ("0" to `tasks`):
    measured 0.17 ms after 50 ms idle, against 9.4 ms (bench/cgroup_placement.py)."""
    for path in files:
        write(path, "0", "join cgroup")


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


def try_remove_dir(directory: str) -> bool:
    """One rmdir, no waiting: False while the kernel still holds the cgroup."""
    try:
        os.rmdir(directory)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


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

    cpu: float | None = None
    memory: int | None = None
    pids: int | None = None

    def apply(self) -> None:
        pass

    def add_process(self, pid: int) -> None:
        pass

    def stats(self) -> CgroupStats:
        return CgroupStats()

    def recycle(self) -> bool:
        return False

    def kill(self) -> None:
        pass

    def destroy(self) -> None:
        pass

    def try_destroy(self) -> bool:
        return True

    def birth_dir(self) -> str | None:
        return None

    def plan_ahead(self) -> tuple[list[str], list[tuple[str, str]]] | None:
        return None

    def directories(self) -> list[str]:
        return []

    def procs_files(self) -> list[str]:
        return []

    def self_join_files(self) -> list[str]:
        return []

    def sibling(self) -> Driver:
        return self
