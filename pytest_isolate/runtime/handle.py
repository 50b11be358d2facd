"""The caller's handle on a started container: wait for it, feed it, read its figures.

Rule: reads a launch's pipes through the one select loop (process/pump.py) and turns what the
container left into a Result (outcome.py); ends its cgroup and link once the figures are read.
"""

from __future__ import annotations

import contextlib
import os
import signal

from . import outcome
from .cgroups import NoCgroup, spares
from .process import protocol
from .process.launch import Launch, close
from .process.pump import DONE, KEEP, STOP, Pump
from .result import CommandResult, Result, Stats
from .spec import Spec


def release_link(link) -> None:
    if link is not None:
        from .process.launch import forget_fd

        forget_fd(link.fd)
        link.close()


class ContainerProcess:
    """A running container. `wait()` gives its `Result`; `send_signal` reaches the workload."""

    def __init__(self, spec: Spec, launch: Launch, argv: tuple[str, ...] | None):
        self.spec = spec
        self._launch = launch
        self._argv = argv
        self._reader = protocol.FrameReader()
        self._frames: list[dict] = []
        self._done = False
        # A warm function workload's last frame ("return"/"raise") settles its outcome: the
        # caller goes on without waiting for its exit (see _read, _finish).
        self._settled: dict | None = None
        self.started = launch.started
        self.stats = Stats()
        # A warm container's init outlives wait() until release(): its teardown (the
        # namespaces, the mounts) then runs when the caller chooses (the plugin: once the next
        # test's copy is forked, so that the teardown does not hold up its start).
        self.keep_init = False
        self._ended: tuple | None = None  # end()'s outcome, for wait()
        self._figures_read = False
        self._unreaped: int | None = None  # a settled capped workload, exiting
        # The forked child's pidfd when the launch slept (start_until_done), for _pump.
        self._pidfd, launch.exited_fd = launch.exited_fd, None
        link = launch.link
        # network="veth": the container's eth0 address and the host side's (None otherwise)
        self.ip: str | None = link.ip if link else None
        self.host_ip: str | None = link.host_ip if link else None

    @property
    def pid(self) -> int:
        """Host pid of the process the caller forked (init, or the rootless outer stage)."""
        return self._launch.pid

    @property
    def cgroup(self):
        """The container's cgroup driver (NoCgroup without caps)."""
        return self._launch.cgroup

    def send_signal(self, sig: int) -> None:
        """Delivered to the workload: through init (which forwards TERM, INT, HUP, QUIT,
        USR1/2) in a cold container, directly in a warm one."""
        if not self._done:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._launch.pid, sig)

    def release(self) -> None:
        """End a warm container that `keep_init` kept after wait() or end(), and read the
        figures end() left (idempotent)."""
        if self._launch.warm_init is not None:
            self._launch.warm_init.kill()
        self._read_figures()

    def kill(self) -> None:
        """SIGKILL the container: init dies, and with it every process of its namespace."""
        self.send_signal(signal.SIGKILL)
        if self._launch.warm_init is not None:
            self._launch.warm_init.kill()

    # -- parent side of the protocol --------------------------------------------------------

    def _pump(self, deadline: float | None, stdin_data: bytes | None = None) -> tuple[bool, dict]:
        """Read frames and captured output until EOF everywhere or the deadline.

        Returns (timed_out, {fd: bytes}) with the captured stdout/stderr.
        """
        exited_fd, self._pidfd = self._pidfd, None
        warm_init = self._launch.warm_init
        if warm_init is not None and warm_init.pidfd >= 0:
            # The workload is not init's child: when it exits, kill init, so that whatever
            # it left running dies and lets go of the pipes (else they never reach EOF).
            if exited_fd is None:
                with contextlib.suppress(ProcessLookupError):
                    exited_fd = os.pidfd_open(self._launch.pid)
        elif exited_fd is not None:  # a cold container's init reports its own end
            os.close(exited_fd)
            exited_fd = None
        try:
            return self._read(deadline, stdin_data, exited_fd)
        finally:
            if exited_fd is not None:
                os.close(exited_fd)

    def _read(self, deadline: float | None, stdin_data: bytes | None,
              exited_fd: int | None) -> tuple[bool, dict]:
        launch = self._launch
        pump = Pump()
        out: dict[int, bytearray] = {}

        def frames(fd: int) -> int:
            data = os.read(fd, 1 << 16)
            if not data:
                return DONE
            got = self._reader.feed(data)
            self._frames.extend(got)
            if launch.settles:
                last = next((f for f in got if f["t"] in protocol.LAST_WORDS), None)
                if last is not None:
                    self._settled = last
                    return STOP
            return KEEP

        def exited(fd: int) -> int:
            # The exit closed the workload's ends: EOF is due at once. If a pipe is still
            # held open (by something the workload started), init is killed.
            pump.quiet = True
            return DONE

        pump.readers[launch.result_r] = frames
        if exited_fd is not None:
            pump.readers[exited_fd] = exited
            pump.on_quiet = launch.warm_init.kill
        for child_fd, parent_fd in launch.stdio.items():
            if child_fd != 0:
                out[child_fd] = bytearray()
                pump.collect(parent_fd, out[child_fd])
        stdin_fd = launch.stdio.get(0)
        if stdin_fd is not None:
            def written() -> None:
                close(stdin_fd)
                launch.stdio.pop(0, None)
            if stdin_data:
                pump.write(stdin_fd, stdin_data, written)
            else:
                written()
        return pump.run(deadline), out

    def _finish(self) -> tuple[int, dict]:
        """Reap the direct child and release every fd; returns (wait status, last frames)."""
        launch = self._launch
        if self._pidfd is not None:  # left by the sleep, and no _pump took it over
            os.close(self._pidfd)
            self._pidfd = None
        if self._settled is not None:
            # The forked copy's exit (unmapping its copy of this process's memory: 1-2 ms for
            # a small pytest process, about 25 ms per GB) runs on another CPU while the caller
            # goes on; it is reaped later: a capped one before its figures are read (its exit
            # is part of its run), an uncapped one at the next warm start.
            if isinstance(launch.cgroup, NoCgroup):
                from .warm import reaping

                reaping.defer_reap(launch.pid)
            else:
                self._unreaped = launch.pid
            status = protocol.LAST_WORDS[self._settled["t"]] << 8  # what run_workload exits with
        else:
            _, status = os.waitpid(launch.pid, 0)
        if launch.warm_init is not None and not self.keep_init:
            launch.warm_init.kill()
        launch.close_fds()
        self._done = True
        return status, outcome.first_of_each(self._frames)

    def _communicate(self, timeout: float | None, stdin_data: bytes | None = None):
        limit = self.spec.resources.timeout
        if timeout is None or (limit is not None and limit < timeout):
            timeout = limit
        deadline = None if timeout is None else self.started + timeout
        try:
            timed_out, out = self._pump(deadline, stdin_data)
        except BaseException:
            self.kill()
            with contextlib.suppress(Exception):
                self._finish()
            raise
        if timed_out:
            self.kill()
            _, more = self._pump(None)
            for k, v in more.items():
                out.setdefault(k, bytearray()).extend(v)
        status, frames = self._finish()
        return timed_out, out, status, frames

    def _read_figures(self) -> None:
        """The cgroup's figures, once the container has ended; then its cgroup and link go."""
        if self._figures_read or not self._done:
            return
        self._figures_read = True
        launch = self._launch
        if self._unreaped is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._unreaped, 0)
            self._unreaped = None
        try:
            self.stats = launch.cgroup.stats()  # before removal: the OOM count lives there
        finally:
            spares.retire(launch.cgroup)  # removed while the next container runs
            release_link(launch.link)

    def _outcome(self, timeout: float | None, stdin_data: bytes | None = None):
        try:
            if self._ended is not None:
                return self._ended
            return self._communicate(timeout, stdin_data)
        finally:
            self._read_figures()

    def end(self, timeout: float | None = None) -> None:
        """Wait until a function workload has ended, as wait() does (and raising what it
        raises), but leave the cgroup figures unread: wait() then reads them and returns at
        once. For a caller with something more urgent in between (the plugin's runner forks
        the next test: the figures' file reads would delay it)."""
        try:
            self._ended = self._communicate(timeout)
        except BaseException:
            self._read_figures()
            raise

    def wait(self, timeout: float | None = None) -> Result:
        """Wait for a function workload; `timeout` kills the container when it expires."""
        timed_out, _, status, frames = self._outcome(timeout)
        return outcome.function_result(frames, status, self._launch.warm_init is not None,
                                       timed_out, self.stats)

    def communicate(self, input: bytes | None = None,
                    timeout: float | None = None) -> CommandResult:
        """Wait for a command workload, feeding `input` and collecting captured output."""
        timed_out, out, status, frames = self._outcome(timeout, input)
        return outcome.command_result(self._argv or (), frames, status,
                                      self._launch.warm_init is not None, timed_out,
                                      self.stats, out)
