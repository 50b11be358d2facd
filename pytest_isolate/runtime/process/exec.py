"""A program exec'd into a running container: the helper that starts it, and its handle.

Rule: the helper runs inside every namespace of the container but is not a member of its pid
namespace; it starts the program (which is), forwards signals to it and relays its status.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from collections.abc import Callable

from ..kernel import pid1
from . import protocol
from .pump import Pump

# What the program starts with: every catchable signal at its default action.
_DEFAULT_SIGNALS = tuple(s for s in signal.valid_signals()
                         if s not in (signal.SIGKILL, signal.SIGSTOP))


def _exits_within(pid: int, timeout: float) -> bool:
    """Wait on a pidfd (no polling loop) until the child `pid` has exited, or the timeout."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], max(timeout, 0.0))
    finally:
        os.close(fd)
    return bool(ready)


class Process:
    """A process exec'd into a container: `wait()`, `kill()`, `output` (stdout and stderr as
    they arrived), `returncode` (None while running; -N when killed by signal N)."""

    def __init__(self, container, argv: tuple[str, ...], pid: int,
                 out_r: int | None, in_w: int | None):
        self.container = container
        self.argv = argv
        self.pid = pid
        self.returncode: int | None = None
        self._chunks: list[bytes] = []
        self._in_w = in_w
        self._reader: threading.Thread | None = None
        if out_r is not None:
            self._reader = threading.Thread(target=self._drain, args=(out_r,), daemon=True)
            self._reader.start()

    def _drain(self, fd: int) -> None:
        with contextlib.suppress(OSError):
            while data := os.read(fd, 65536):
                self._chunks.append(data)
                self.container._log(self.argv, data)
        os.close(fd)

    @property
    def output(self) -> bytes:
        return b"".join(self._chunks)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._set(status)
        return self.returncode

    def _set(self, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)  # the helper relays signal N as 128+N
        self.returncode = -(code - 128) if code > 128 else code

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None and timeout is not None and not _exits_within(self.pid,
                                                                              timeout):
            raise TimeoutError(f"{list(self.argv)} still running after {timeout}s")
        if self.returncode is None:
            self._set(os.waitpid(self.pid, 0)[1])
        if self._reader is not None:
            self._reader.join(5)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)  # the helper forwards it to the program

    def kill(self) -> None:
        """SIGKILL the program (then its helper, which reports the status)."""
        if self.returncode is None:
            program = self.container._program_pids.get(self.pid)
            with contextlib.suppress(ProcessLookupError):
                if program:
                    os.kill(program, signal.SIGKILL)
                else:
                    os.kill(self.pid, signal.SIGKILL)


def helper(argv: tuple[str, ...], env: dict[str, str], workdir: str, stdio: dict[int, int],
            err_w: int, body: Callable[[], None] | None) -> int:
    """In the helper, inside every namespace but as a non-member of the pid namespace: start
    the program (which is a member), forward signals, relay its status. A program is started
    with posix_spawn (vfork: no copy of this process's page tables, about 2 ms less than
    fork + exec); its pid goes back to the caller, which kills it directly."""
    forward = pid1.Forwarder()
    try:
        os.chdir(workdir)
    except OSError:
        os.chdir("/")
    if body is None:
        try:
            pid = os.posix_spawnp(
                argv[0], list(argv), env,
                file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in stdio.items()],
                setsigdef=_DEFAULT_SIGNALS, setsigmask=())
        except OSError as e:
            os.write(err_w, protocol.failed(e.errno, e.strerror or str(e)))
            return 127
        os.write(err_w, protocol.started(pid))
    else:
        pid = os.fork()
        if pid == 0:
            forward.restore()
            try:
                body()
            finally:
                os._exit(0)
    os.close(err_w)
    for fd in set(stdio.values()):
        with contextlib.suppress(OSError):
            os.close(fd)
    forward.target = pid
    _, status = os.waitpid(pid, 0)
    return pid1.exit_code_for(status)


def communicate(in_w: int, data: bytes, outs: dict[int, int], timeout: float | None,
                 pid: int) -> tuple[dict[int, bytearray], bool]:
    """Feed the program, collect its output; at the timeout kill it and drain what is left."""
    got: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
    pump = Pump()
    for fd, target in outs.items():
        pump.collect(fd, got[target])
    if data:
        pump.write(in_w, data, lambda: os.close(in_w))
    else:
        os.close(in_w)
    deadline = None if timeout is None else time.monotonic() + timeout
    timed_out = pump.run(deadline)
    if timed_out:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if pump.writer is not None:
            os.close(pump.writer)
            pump.writer = None
        pump.run(None)
    for fd in outs:
        os.close(fd)
    return got, timed_out
