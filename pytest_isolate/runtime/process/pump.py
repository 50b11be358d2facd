"""The one select loop: feeds a child's stdin, drains its pipes, until EOF or a deadline.

Rule: every wait on a container's pipes goes through `Pump.run` (a container's result frames
and captured output, an exec's output); readers decide what a readable fd means.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable

KEEP, DONE, STOP = 0, 1, 2  # a reader's answer: go on / this fd is finished / return now
CHUNK = 1 << 16


class Pump:
    """readers: fd -> callable(fd) returning KEEP, DONE or STOP. One optional writer.

    `quiet` (set by a reader): the next select does not block, and when it finds nothing
    ready, `on_quiet` runs once (a warm workload has exited: whatever it left running is
    killed only if a pipe is still held open).
    """

    def __init__(self) -> None:
        self.readers: dict[int, Callable[[int], int]] = {}
        self.writer: int | None = None
        self.pending = memoryview(b"")
        self.on_written: Callable[[], None] | None = None  # the writer is done: close it
        self.quiet = False
        self.on_quiet: Callable[[], None] | None = None

    def write(self, fd: int, data: bytes, on_written: Callable[[], None]) -> None:
        self.writer, self.pending, self.on_written = fd, memoryview(data), on_written

    def collect(self, fd: int, into: bytearray) -> None:
        """A reader that appends what fd carries to `into`, done at EOF."""
        def read(fd: int) -> int:
            data = os.read(fd, CHUNK)
            into.extend(data)
            return KEEP if data else DONE
        self.readers[fd] = read

    def run(self, deadline: float | None) -> bool:
        """Until every reader is done and the writer has written: False; True when the
        deadline passed first."""
        while self.readers or self.writer is not None:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if deadline is not None and timeout == 0.0:
                return True
            if self.quiet:
                timeout = 0.0
            wlist = [self.writer] if self.writer is not None else []
            try:
                r, w, _ = select.select(list(self.readers), wlist, [], timeout)
            except InterruptedError:
                continue
            if not r and not w:
                if self.quiet:
                    self.quiet = False
                    if self.on_quiet is not None:
                        self.on_quiet()
                continue
            if w:
                self._write()
            for fd in r:
                answer = self.readers[fd](fd)
                if answer == DONE:
                    del self.readers[fd]
                elif answer == STOP:
                    return False
        return False

    def _write(self) -> None:
        try:
            n = os.write(self.writer, self.pending[:CHUNK])  # type: ignore[arg-type]
            self.pending = self.pending[n:]
        except BrokenPipeError:
            self.pending = self.pending[:0]
        if not self.pending:
            self.writer = None
            if self.on_written is not None:
                self.on_written()
