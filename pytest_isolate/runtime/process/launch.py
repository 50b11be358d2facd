"""The launcher: the one path that forks a container's first process.

Rule: pipes, the fork (born in its cgroup where the kernel can), placement, held interrupts
and the undo of every acquisition (an ExitStack) live here and nowhere else; what the child
runs is a stage of child.py, chosen by the caller.

Cgroup placement (capped only): on cgroup v2 the child is forked straight into its cgroup
(clone3 CLONE_INTO_CGROUP) and waits for nothing; on v1 it moves itself first thing, before
any unshare (cgroups.driver.join_self: no global lock, no grace period); where neither works
(v2 with clone3 refused) the parent writes its pid to cgroup.procs while the child sets up,
and the child waits for a "placed" byte before user code.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import time
from collections.abc import Callable, Iterator

from .. import syscalls as sc
from ..cgroups import Driver, NoCgroup
from ..local import here

PIPE = -1  # ask for a pipe to the workload's stdin/stdout/stderr
SETUP_FAILED = 125
_INTERRUPTS = {signal.SIGINT, signal.SIGTERM}


# -- fds -----------------------------------------------------------------------------------

def pipe() -> tuple[int, int]:
    r, w = os.pipe()
    here().open_fds.update((r, w))
    return r, w


def close(fd: int | None) -> None:
    if fd is not None and fd >= 0:
        here().open_fds.discard(fd)
        with contextlib.suppress(OSError):
            os.close(fd)


def hold_fd(fd: int) -> None:
    """Register an fd the launcher did not make (a prepared netns): other children close it."""
    here().open_fds.add(fd)


def forget_fd(fd: int) -> None:
    here().open_fds.discard(fd)


def close_foreign(keep: set[int]) -> None:
    """In a child: close the launcher's fds that are not this child's own."""
    local = here()
    for fd in list(local.open_fds):
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
    local.open_fds.clear()
    local.open_fds.update(keep)


def close_all_but(keep: set[int]) -> None:
    """In a helper forked from a caller that holds fds of its own: close every fd above
    stderr but `keep` (slower than close_foreign: for helpers off the per-test path)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def stdio_pipes(child_stdio: dict[int, int | None]) -> tuple[dict[int, int], dict[int, int]]:
    """(parent's ends, child's ends) by target fd: PIPE makes a pipe, an fd is handed over."""
    parent_ends: dict[int, int] = {}
    child_ends: dict[int, int] = {}
    try:
        for target, how in child_stdio.items():
            if how == PIPE:
                r, w = pipe()
                parent_ends[target], child_ends[target] = (w, r) if target == 0 else (r, w)
            elif how is not None:
                child_ends[target] = how
    except BaseException:  # EMFILE at the second pipe: the first goes too
        for target, fd in parent_ends.items():
            close(fd)
            close(child_ends[target])
        raise
    return parent_ends, child_ends


# -- interrupts ----------------------------------------------------------------------------

def hold_interrupts() -> set:
    """Block Ctrl-C (and SIGTERM) until `release_interrupts`: raised between a fork and the
    store of its pid, a KeyboardInterrupt would lose the child, left running unreaped."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, _INTERRUPTS)


def release_interrupts(mask: set) -> None:
    if not _INTERRUPTS & mask:  # else they were blocked before: keep them so
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _INTERRUPTS)


# -- fork and placement --------------------------------------------------------------------

def fork(cgroup: Driver) -> tuple[int, bool]:
    """os.fork(), with the child born in its cgroup where the kernel can do that: cgroup v2,
    clone3(CLONE_INTO_CGROUP), a single-threaded caller (see syscalls.fork_into_cgroup).
    Returns (pid, born_in_place). Being born there saves the cgroup.procs write, which takes
    the cgroup lock and can wait out an RCU grace period (milliseconds) after idle time."""
    local = here()
    where = cgroup.birth_dir() if local.clone3_usable else None
    if where is not None and sc.can_fork_into_cgroup():
        fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return sc.fork_into_cgroup(fd), True
        except OSError as e:
            if e.errno in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.E2BIG):
                local.clone3_usable = False  # this kernel or libc: no point asking again
            # else (EPERM, say): fall back to the write, which reports the cause if it fails
        finally:
            os.close(fd)  # in the parent, and in the child
    return os.fork(), False


def kill_and_reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def sleep_until_done(pid: int, result_r: int, deadline: float | None,
                     pidfd: int | None = None) -> int | None:
    """Block, running nothing, until the workload's first frame (a function workload writes
    one, at its end), the exit of the child `pid`, or the deadline; returns a pidfd of the
    child, which the wait goes on with.

    Why: the child runs on this process's CPU as soon as this process blocks, and until the
    child exits every page this process writes is copied (about 4 us a page, against under
    1 us after the exit). `pidfd`: one of the child opened already."""
    if pidfd is None:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:  # not for an unreaped child of ours; the pipe still tells
            pidfd = None
    try:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        select.select([result_r] if pidfd is None else [result_r, pidfd], [], [], left)
    except BaseException:
        close(pidfd)
        raise
    return pidfd


class Launch:
    """The parent's handle on a started container: pids and pipe ends."""

    def __init__(self, pid: int, result_r: int, alive_w: int | None, stdio: dict[int, int],
                 cgroup: Driver, started: float, link=None, warm_init=None,
                 settles: bool = False) -> None:
        self.pid = pid
        self.started = started  # time.monotonic() right before the fork: timeouts count from it
        self.result_r = result_r
        self.alive_w = alive_w
        self.stdio = stdio  # child fd number -> parent's end of the pipe
        self.cgroup = cgroup
        self.link = link  # network.HostLink for network="veth", else None
        # A warm container: `pid` is the workload itself, joined into this init's namespaces.
        self.warm_init = warm_init
        # The caller goes on at the workload's last frame, not at its exit.
        self.settles = settles
        self.exited_fd: int | None = None  # a pidfd of `pid`, left by the sleep

    def close_fds(self) -> None:
        for fd in (self.result_r, self.alive_w, self.exited_fd, *self.stdio.values()):
            close(fd)
        self.stdio.clear()
        self.exited_fd = None


# The child's side, as the stage function gets it.
class ChildEnds:
    __slots__ = ("alive_r", "keep", "place_r", "result_w")

    def __init__(self, result_w: int, alive_r: int | None, place_r: int | None,
                 keep: set[int]) -> None:
        self.result_w = result_w
        self.alive_r = alive_r
        self.place_r = place_r  # None: placed already (born there, or joins itself)
        self.keep = keep  # the fds the workload keeps (result pipe, stdio)


def launch(cgroup: Driver, workload_factory: Callable, child_stdio: dict[int, int | None],
           pidns: Callable[[], contextlib.AbstractContextManager],
           stage: Callable[[ChildEnds, Callable], None], *, alive: bool,
           extra_keep: tuple[int, ...] = (), deadline_after: float | None = None,
           sleep: bool = False, sleep_at_once: bool = False,
           undo: contextlib.ExitStack) -> Launch:
    """Fork the container's first process and run `stage(ends, workload)` in it.

    pidns: the context the fork happens in (a new pid namespace, init's, or none).
    alive: a pipe whose EOF tells the child its parent died before PDEATHSIG was set.
    sleep: return only once a function workload is done (sleep_until_done): at once after the
    fork (sleep_at_once), else after placement. Every acquisition registers its undo on
    `undo`, which the caller pops once the launch is its own.
    """
    joins = cgroup.self_join_files()  # v1: the child joins its cgroup itself
    by_write = not isinstance(cgroup, NoCgroup) and not joins  # unless born there
    local = here()
    # The child's ends, closed here after the fork; by `undo` if a later acquisition fails
    # (EMFILE at the next pipe, say). Emptied once closed: an fd number is reused at once.
    theirs: list[int | None] = []
    undo.callback(lambda: [close(fd) for fd in theirs])
    with local.lock:
        result_r, result_w = pipe()
        undo.callback(close, result_r)
        theirs.append(result_w)
        alive_r, alive_w = pipe() if alive else (None, None)
        undo.callback(close, alive_w)
        theirs.append(alive_r)
        place_r, place_w = pipe() if by_write else (None, None)
        undo.callback(close, place_w)
        theirs.append(place_r)
        parent_ends, child_ends = stdio_pipes(child_stdio)
        for fd in parent_ends.values():
            undo.callback(close, fd)
        theirs += [fd for t, fd in child_ends.items() if t in parent_ends]
        keep = {result_w, *child_ends.values()}
        workload = workload_factory(child_ends)
        started = time.monotonic()
        mask = hold_interrupts()  # until the pid is stored in `undo`
        try:
            with pidns():
                pid, born = fork(cgroup)
                if pid == 0:
                    release_interrupts(mask)
                    ends = ChildEnds(result_w, alive_r, None if born else place_r, keep)
                    mine = keep | {fd for fd in (alive_r, ends.place_r) if fd is not None}
                    close_foreign(mine | set(extra_keep))
                    stage(ends, workload)  # never returns
            undo.callback(kill_and_reap, pid)
        finally:
            release_interrupts(mask)  # a Ctrl-C held meanwhile is raised here
        for fd in theirs:
            close(fd)
        theirs.clear()
    pidfd = None
    if sleep and sleep_at_once and (born or not by_write):
        # At once, before any bookkeeping: the child waits for this CPU.
        pidfd = sleep_until_done(pid, result_r, _deadline(deadline_after, started))
    launch = Launch(pid, result_r, alive_w, parent_ends, cgroup, started)
    launch.exited_fd = pidfd
    undo.callback(close, pidfd)
    if by_write and not born:
        try:
            cgroup.add_process(pid)  # overlaps the container's own setup
            os.write(place_w, b"p")
        finally:
            close(place_w)
    else:
        close(place_w)
    return launch


def _deadline(timeout: float | None, started: float) -> float | None:
    return None if timeout is None else started + timeout


def sleep_after_launch(launch: Launch, timeout: float | None) -> None:
    """sleep_until_done for a container already placed (the caller's undo covers Ctrl-C)."""
    opened, launch.exited_fd = launch.exited_fd, None
    launch.exited_fd = sleep_until_done(launch.pid, launch.result_r,
                                        _deadline(timeout, launch.started), opened)


@contextlib.contextmanager
def no_pid_namespace() -> Iterator[None]:
    yield
