"""Container lifecycle: the only module that knows the order of setup.

Parent/child protocol. Root: the caller forks init directly. Rootless: an "outer" stage sits
between them, because only a process inside the new user namespace may create the rest.

  caller                      outer (rootless)           init = pid 1              workload = pid 2
  ------                      ----------------           ------------              ----------------
  validate(spec)
  plan host tree (cached)
  pipes: result, alive
  root: unshare(NEWPID) on
   this thread; fork; setns ------------------------->  PDEATHSIG; alive check
   back                                                  unshare(NS|UTS|IPC|
                                                          [NET]|CGROUP)
  rootless: fork -----------> PDEATHSIG; alive check
                              unshare(USER); id maps
                              unshare(NS|UTS|IPC|[NET]|
                               CGROUP|PID); fork ------> PDEATHSIG; alive check
                              forward signals; wait;
                              exit with init's code
                                                         [time ns]
                                                         fork -------------------> close foreign fds
                                                         scratch tmpfs on /dev/shm  no_new_privs
                                                         host tree or image overlay wait for "go"
                                                         /proc, /sys, /dev            (forked early:
                                                         pivot_root; detach old root   its fork cost
                                                         hostname; lo up               overlaps the
                                                         "go" -------------------->    mounting)
                                                         reap all, forward signals  run / exec
  <--------------------------------------------------------------------- frame "return" | "raise"
                                                                                  | "exec_error"
  <------------------------------------------ frame "exit" {status}
  read frames until EOF (before waitpid: frames can exceed the pipe buffer), then waitpid.
  Any failing setup step sends frame "setup_error" {step, target, errno, hint}, exits 125.

Warm path (root, host tree, network none/host; see warm.py): the zygote built init and the
root filesystem ahead, so the caller only forks the workload, born in init's pid namespace
(pid 2); the workload setns(pidfd) into mnt/uts/ipc/net, waits for "placed" when capped,
unshares its cgroup namespace and runs. The caller kills init when the workload exits.

Cgroup placement (capped only): on cgroup v2 the first process is forked straight into its
cgroup (clone3 CLONE_INTO_CGROUP, see _fork) and waits for nothing; on v1 it moves itself first
thing, before any unshare (cgroups.driver.join_self: no global lock, no grace period); where
neither works (v2 with clone3 refused) the parent writes its pid to cgroup.procs while it sets
up and it waits for "placed" before user code.

Killing the parent's direct child tears everything down: PDEATHSIG chains outer -> init, and
when init exits the kernel kills the whole pid namespace; all mounts live in the container's
mount namespace and vanish with it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from . import namespaces, pid1, rootfs, warm
from . import syscalls as sc
from .cgroups import Driver, NoCgroup, spares
from .cgroups.driver import join_self
from .channel import FrameReader, write_frame
from .errors import SetupError, SpecError
from .result import CommandResult, Result, Stats, WorkloadError
from .spec import Spec, validate

SETUP_FAILED = 125
PIPE = -1  # ask for a pipe to the workload's stdin/stdout/stderr

spares.set_settler(warm.settle)  # flush() first learns what the zygote made

_lock = threading.Lock()
_open_fds: set[int] = set()  # every fd this module holds: forked children close the others'


def _pipe() -> tuple[int, int]:
    r, w = os.pipe()
    _open_fds.update((r, w))
    return r, w


def _close(fd: int | None) -> None:
    if fd is not None and fd >= 0:
        _open_fds.discard(fd)
        with contextlib.suppress(OSError):
            os.close(fd)


def _close_foreign(keep: set[int]) -> None:
    """Children must not hold other containers' pipes (a held write end means no EOF)."""
    for fd in list(_open_fds):
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
    _open_fds.clear()
    _open_fds.update(keep)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # the parent's was held across fork


def _die_with_parent(alive_r: int) -> None:
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    # The parent may have died before prctl: then the alive pipe has no writer left.
    readable, _, _ = select.select([alive_r], [], [], 0)
    if readable and not os.read(alive_r, 1):
        os._exit(SETUP_FAILED)


# A function workload's last frame and the exit code that follows it (_function_workload).
_LAST_WORDS = {"return": 0, "raise": 1}


class _Launch:
    """The parent's handle on a started container: pids and pipe ends."""

    def __init__(self, pid: int, result_r: int, alive_w: int | None, stdio: dict[int, int],
                 cgroup: Driver, started: float, link=None,
                 warm_init: warm.WarmInit | None = None, settles: bool = False):
        self.pid = pid
        self.started = started  # time.monotonic() right before the fork: timeouts count from it
        self.result_r = result_r
        self.alive_w = alive_w
        self.stdio = stdio  # child fd number -> parent's end of the pipe
        self.cgroup = cgroup
        self.link = link  # network.HostLink for network="veth", else None
        # A warm container: `pid` is the workload itself, joined into this init's namespaces.
        self.warm_init = warm_init
        # The caller goes on at the workload's last frame, not at its exit (_launch_warm).
        self.settles = settles
        self.exited_fd: int | None = None  # a pidfd of `pid`, left by _sleep_until_done


class ContainerProcess:
    """A running container. `wait()` gives its `Result`; `send_signal` reaches the workload."""

    def __init__(self, spec: Spec, launch: _Launch, argv: tuple[str, ...] | None):
        self.spec = spec
        self._launch = launch
        self._argv = argv
        self._reader = FrameReader()
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
        out: dict[int, bytearray] = {}
        readers: dict[int, int | None] = {launch.result_r: None}
        if exited_fd is not None:
            readers[exited_fd] = -1
        for child_fd, parent_fd in launch.stdio.items():
            if child_fd != 0:
                readers[parent_fd] = child_fd
                out[child_fd] = bytearray()
        stdin_fd = launch.stdio.get(0)
        pending = memoryview(stdin_data or b"")
        if stdin_fd is not None and not pending:
            _close(stdin_fd)
            launch.stdio.pop(0)
            stdin_fd = None
        # At the workload's exit init is killed only if a pipe is still open (something the
        # workload started holds it); else it lives on until _finish or release().
        exited = killed = False
        while readers:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if deadline is not None and timeout == 0.0:
                return True, out
            if exited and not killed:
                timeout = 0.0  # the exit closed the workload's ends: EOF is due at once
            wlist = [stdin_fd] if stdin_fd is not None else []
            try:
                r, w, _ = select.select(list(readers), wlist, [], timeout)
            except InterruptedError:
                continue
            if not r and not w:
                if exited and not killed:
                    launch.warm_init.kill()
                    killed = True
                continue
            if w:
                try:
                    n = os.write(stdin_fd, pending[:65536])
                    pending = pending[n:]
                except BrokenPipeError:
                    pending = pending[:0]
                if not pending:
                    _close(stdin_fd)
                    launch.stdio.pop(0, None)
                    stdin_fd = None
            for fd in r:
                if fd == exited_fd:
                    del readers[fd]
                    exited = True
                    continue
                data = os.read(fd, 1 << 16)
                target = readers[fd]
                if not data:
                    del readers[fd]
                    continue
                if target is None:
                    frames = self._reader.feed(data)
                    self._frames.extend(frames)
                    if launch.settles:
                        last = next((f for f in frames if f["t"] in _LAST_WORDS), None)
                        if last is not None:
                            self._settled = last
                            return False, out
                else:
                    out[target] += data
        return False, out

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
                warm.defer_reap(launch.pid)
            else:
                self._unreaped = launch.pid
            status = _LAST_WORDS[self._settled["t"]] << 8  # what _run_workload exits with
        else:
            _, status = os.waitpid(launch.pid, 0)
        if launch.warm_init is not None and not self.keep_init:
            launch.warm_init.kill()
        for fd in (launch.result_r, launch.alive_w, *launch.stdio.values()):
            _close(fd)
        launch.stdio.clear()
        self._done = True
        frames: dict[str, dict] = {}
        for frame in self._frames:
            frames.setdefault(frame["t"], frame)
        if "setup_error" in frames:
            raise SetupError.from_frame(frames["setup_error"])
        return status, frames

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
            _release_link(launch.link)

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
        exit_status, sig = _workload_status(frames, status, self._launch.warm_init is not None)
        value, error, returned = None, None, False
        if "return" in frames:
            value, returned = frames["return"].get("value"), True
        elif "raise" in frames:
            f = frames["raise"]
            error = WorkloadError(f["type"], f["message"], f["traceback"])
        return Result(value=value, error=error, exit_status=exit_status, signal=sig,
                      timed_out=timed_out, returned=returned, stats=self.stats,
                      oom_killed=self.stats.oom_kills > 0,
                      pids_limited=self.stats.pids_max_hits > 0)

    def communicate(self, input: bytes | None = None,
                    timeout: float | None = None) -> CommandResult:
        """Wait for a command workload, feeding `input` and collecting captured output."""
        timed_out, out, status, frames = self._outcome(timeout, input)
        if "exec_error" in frames:
            f = frames["exec_error"]
            raise SetupError("exec", f["argv0"], f["errno"], f["message"],
                             "is the program installed in the container's root filesystem, "
                             "and is it on PATH?")
        exit_status, sig = _workload_status(frames, status, self._launch.warm_init is not None)
        returncode = -sig if sig is not None else (exit_status or 0)
        return CommandResult(
            argv=self._argv or (), returncode=returncode, timed_out=timed_out, stats=self.stats,
            oom_killed=self.stats.oom_kills > 0, pids_limited=self.stats.pids_max_hits > 0,
            stdout=bytes(out[1]) if 1 in out else None,
            stderr=bytes(out[2]) if 2 in out else None)


def _workload_status(frames: dict, status: int, direct: bool = False
                     ) -> tuple[int | None, int | None]:
    """(exit code, signal) of the workload: from init's frame, else from our direct child
    (`direct`: the child is the workload itself, as in a warm container)."""
    if "exit" in frames:
        status = frames["exit"]["status"]
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    code = os.waitstatus_to_exitcode(status)
    if not direct and "exit" not in frames and code > 128:  # init or outer relayed 128+N
        return None, code - 128
    return code, None


# -- child side ----------------------------------------------------------------------------

def _in_child(result_w: int, body: Callable[[], None]) -> None:
    """Run a child stage; never return into the caller's stack."""
    code = SETUP_FAILED
    try:
        _after_fork_in_child()
        body()
        code = 0
    except SetupError as e:
        with contextlib.suppress(OSError):
            write_frame(result_w, e.to_frame())
    except BaseException as e:  # anything else during setup is still a setup failure
        err = SetupError("container setup", "-", getattr(e, "errno", None),
                         f"{type(e).__name__}: {e}")
        with contextlib.suppress(OSError):
            write_frame(result_w, err.to_frame())
    finally:
        os._exit(code)


def _wait_placed(place_r: int | None) -> None:
    """Block until the parent has written this process into its cgroup (only when it places
    it: _place). On EOF the parent failed; it kills us and reports why itself."""
    if place_r is not None:
        placed = os.read(place_r, 1)
        os.close(place_r)
        if placed != b"p":
            raise SetupError("join cgroup", "-", None, "the caller did not place this "
                             "container in its cgroup")


def _outer_stage(spec: Spec, plan, workload, result_w: int, alive_r: int, keep: set[int],
                 place_r: int | None, netns_fd: int | None, joins: list[str]) -> None:
    """User namespace: become root of a user namespace that owns the other namespaces."""
    _die_with_parent(alive_r)
    # Before any unshare: the whole container inherits the cgroup.
    join_self(joins)
    _wait_placed(place_r)
    namespaces.join_network_namespace(netns_fd)  # before the user namespace: root may, it not
    namespaces.enter_user_namespace(os.geteuid(), os.getegid())
    namespaces.unshare_namespaces(namespaces.namespace_flags(spec) | sc.CLONE_NEWPID)
    forward = pid1.Forwarder()
    pid = os.fork()
    if pid == 0:
        forward.restore()
        _in_child(result_w, lambda: _init_stage(spec, plan, workload, result_w, alive_r, keep,
                                                unshared=True, userns=True, place_r=None))
    forward.target = pid
    _, status = os.waitpid(pid, 0)
    os._exit(pid1.exit_code_for(status))



def _init_stage(spec: Spec, plan, workload, result_w: int, alive_r: int, keep: set[int],
                unshared: bool, userns: bool, place_r: int | None,
                netns_fd: int | None = None, joins: list[str] = ()) -> None:
    _die_with_parent(alive_r)
    join_self(joins)  # before the cgroup namespace, which is rooted where we are
    flags = namespaces.namespace_flags(spec)
    namespaces.join_network_namespace(netns_fd)
    if not unshared:
        # With caps, the cgroup namespace waits until the parent has placed us (below).
        namespaces.unshare_namespaces(flags if place_r is None else flags & ~sc.CLONE_NEWCGROUP)
    if spec.time_offsets is not None:
        namespaces.enter_time_namespace(spec.time_offsets.monotonic, spec.time_offsets.boottime)
    go_r, go_w = os.pipe()
    forward = pid1.Forwarder()
    pid = None
    if place_r is None:
        # Fork the workload now: its fork and copy-on-write faults overlap the mounting below
        # on another CPU. pivot_root moves its root and cwd along; it waits for "go".
        pid = _fork_workload(spec, workload, result_w, keep, forward, go_r, go_w)
    root = rootfs.prepare_scratch(spec.keep_dir)
    if spec.layers or spec.rootfs:
        rootfs.mount_image_root(root, spec.layers or (spec.rootfs,), userns)
        rootfs.mount_tmp(root)
    else:
        rootfs.mount_host_tree(root, plan, userns)
    if spec.mounts:
        rootfs.mount_binds(root, dict(spec.mounts))
    rootfs.mount_proc(root)
    rootfs.mount_sys(root)
    rootfs.mount_dev(root, userns)
    rootfs.pivot_into(root)
    namespaces.set_hostname(spec.hostname)
    if spec.network == "none":  # a prepared namespace ("veth") has lo up already
        namespaces.bring_up_loopback()
    if pid is None:
        # The parent's cgroup.procs write (which can stall for an RCU grace period) ran while
        # we built the root filesystem; join the cgroup namespace only once we are inside.
        _wait_placed(place_r)
        namespaces.unshare_namespaces(sc.CLONE_NEWCGROUP)
        pid = _fork_workload(spec, workload, result_w, keep, forward, go_r, go_w)
    os.write(go_w, b"g")
    os.close(go_w)
    status = pid1.reap_until(pid)
    write_frame(result_w, {"t": "exit", "status": status})
    os._exit(pid1.exit_code_for(status))


def _fork_workload(spec: Spec, workload, result_w: int, keep: set[int], forward, go_r: int,
                   go_w: int) -> int:
    pid = os.fork()
    if pid == 0:
        forward.restore()
        os.close(go_w)
        _workload_stage(spec, workload, result_w, keep, go_r)
    os.close(go_r)
    forward.target = pid
    return pid


def _run_workload(workload, result_w: int) -> None:
    """Run the workload and exit with its code; a failure in our glue (not in user code, which
    the workload reports itself) becomes a "raise" frame. Never returns."""
    code = 1
    try:
        code = workload(result_w)
    except BaseException as e:
        with contextlib.suppress(OSError):
            write_frame(result_w, {"t": "raise", "type": type(e).__qualname__,
                                   "message": str(e), "traceback": traceback.format_exc()})
    finally:
        os._exit(code)


def _workload_stage(spec: Spec, workload, result_w: int, keep: set[int], go_r: int) -> None:
    def after_go(result_w: int) -> int:
        _after_fork_in_child()
        _close_foreign(keep | {go_r})
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
        go = os.read(go_r, 1)
        os.close(go_r)
        if go != b"g":  # init failed to build the container and reported why
            os._exit(SETUP_FAILED)
        return workload(result_w)
    _run_workload(after_go, result_w)


def _warm_stage(spec: Spec, init: warm.WarmInit, workload, result_w: int, keep: set[int],
                place_r: int | None, capped: bool, joins: list[str]) -> None:
    """The workload of a warm container: join it, then run. Never returns."""
    try:
        _after_fork_in_child()
        _close_foreign(keep)
        join_self(joins)  # while the host's /sys/fs/cgroup is still in view
        try:
            sc.setns(init.pidfd, init.join_flags)  # root and cwd become the container's
        except OSError as e:
            raise SetupError("setns", f"warm container (init pid {init.pid})", e.errno,
                             str(e), "set PYTEST_ISOLATE_NO_WARM=1 to build containers cold"
                             ) from None
        os.close(init.pidfd)
        if capped:
            _wait_placed(place_r)  # a cgroup.procs write of the parent's overlapped the setns
            # A cgroup namespace rooted at our own cgroup: /proc/self/cgroup shows "/". The
            # joined one (init's) is rooted at the caller's, where an uncapped workload stays.
            namespaces.unshare_namespaces(sc.CLONE_NEWCGROUP)
        if spec.hostname != init.hostname:  # else init's name is already the one
            namespaces.set_hostname(spec.hostname)
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    except BaseException as e:
        err = e if isinstance(e, SetupError) else SetupError(
            "container setup", "-", getattr(e, "errno", None), f"{type(e).__name__}: {e}")
        with contextlib.suppress(OSError):
            write_frame(result_w, err.to_frame())
        os._exit(SETUP_FAILED)
    _run_workload(workload, result_w)


def _default_workdir(spec: Spec) -> str:
    if spec.workdir:
        return spec.workdir
    return "/" if spec.rootfs or spec.layers else os.getcwd()


def _enter_workdir(path: str) -> None:
    try:
        os.chdir(path)
    except OSError as e:
        raise SetupError("chdir", path, e.errno, str(e),
                         "set Spec.workdir to a directory that exists in the container") from None


def _function_workload(func: Callable, args: tuple, kwargs: dict, spec: Spec, workdir: str):
    def run(result_w: int) -> int:
        os.environ.update(spec.env)
        _enter_workdir(workdir)
        try:
            value = func(*args, **kwargs)
        except BaseException as e:
            frame = {"t": "raise", "type": _qualname(type(e)), "message": str(e),
                     "traceback": traceback.format_exc()}
            code = 1
        else:
            code = 0
            frame = {"t": "return", "value": value}
        _flush_stdio()
        try:
            write_frame(result_w, frame)
        except (TypeError, ValueError) as e:
            write_frame(result_w, {"t": "raise", "type": "TypeError",
                                   "message": f"the return value cannot be sent back as JSON: {e}",
                                   "traceback": ""})
            code = 1
        return code
    return run


def _command_workload(argv: Sequence[str], spec: Spec, workdir: str, stdio: dict[int, int]):
    env = {**os.environ, **spec.env}

    def run(result_w: int) -> int:
        for target, fd in stdio.items():
            os.dup2(fd, target)  # dup2 clears close-on-exec on the target
        _enter_workdir(workdir)
        try:
            os.execvpe(argv[0], list(argv), env)
        except OSError as e:
            write_frame(result_w, {"t": "exec_error", "argv0": argv[0], "errno": e.errno,
                                   "message": e.strerror or str(e)})
        return 127
    return run


def _qualname(tp: type) -> str:
    mod = tp.__module__
    return tp.__qualname__ if mod in ("builtins", "__main__") else f"{mod}.{tp.__qualname__}"


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


# -- entry points --------------------------------------------------------------------------

def resolve_image(spec: Spec) -> tuple[Spec, Any]:
    """spec.image -> its unpacked layers, with the image's Env and WorkingDir (the spec's own
    env and workdir win). Returns (spec, images.Image or None)."""
    if spec.image is None or spec.layers:
        return spec, None
    from . import images

    image = images.open_image(spec.image)
    return replace(spec, layers=image.layers, env={**image.environment(), **spec.env},
                   workdir=spec.workdir or image.workdir), image


def _network_for(spec: Spec):
    """network="veth": the namespace with eth0 linked to the host, made before the fork (a
    link is created in place in 2-5 ms; moving one later costs 22-33 ms). Its addresses go
    into the container's environment."""
    if spec.network != "veth":
        return spec, None
    from .network import HostLink  # imports pyroute2 (0.2 s): only when a link is asked for

    link = HostLink()
    env = {**spec.env, "PYTEST_ISOLATE_IP": link.ip, "PYTEST_ISOLATE_HOST_IP": link.host_ip}
    return replace(spec, env=env), link


def _release_link(link) -> None:
    if link is not None:
        with _lock:
            _open_fds.discard(link.fd)
        link.close()


def _launch(spec: Spec, workload_factory, child_stdio: dict[int, int | None],
            link=None, sleep: bool = False) -> _Launch:
    """Fork the container. child_stdio maps 0/1/2 to PIPE, an fd to hand over, or None.
    `sleep`: return only once a function workload is done (_sleep_until_done)."""
    if link is None and warm.eligible(spec):
        return _launch_warm(spec, workload_factory, child_stdio, sleep)
    userns = spec.wants_userns()
    try:
        plan = None if spec.rootfs or spec.layers else rootfs.host_plan(split=userns)
        res = spec.resources
        cgroup = spares.claim(res.cpu, res.memory, res.pids)  # type: ignore[arg-type]
    except BaseException:
        _release_link(link)
        raise
    try:
        launch = _fork_container(spec, plan, userns, workload_factory, child_stdio, cgroup,
                                 link)
    except BaseException:
        cgroup.destroy()
        _release_link(link)
        raise
    spares.tidy(res.cpu, res.memory, res.pids)  # type: ignore[arg-type]  # while it starts
    if sleep and not child_stdio:
        try:
            _sleep_after_launch(launch, spec)
        except BaseException:
            cgroup.destroy()
            _release_link(link)
            raise
    return launch


def _stdio_pipes(child_stdio: dict[int, int | None]) -> tuple[dict[int, int], dict[int, int]]:
    """(parent's ends, child's ends) by target fd: PIPE makes a pipe, an fd is handed over."""
    parent_ends: dict[int, int] = {}
    child_ends: dict[int, int] = {}
    for target, how in child_stdio.items():
        if how == PIPE:
            r, w = _pipe()
            parent_ends[target], child_ends[target] = (w, r) if target == 0 else (r, w)
        elif how is not None:
            child_ends[target] = how
    return parent_ends, child_ends


_clone3_usable = True  # until the kernel or libc says otherwise (see _fork)
_INTERRUPTS = {signal.SIGINT, signal.SIGTERM}


def _hold_interrupts() -> set:
    """Block Ctrl-C (and SIGTERM) until `_release_interrupts`: raised between a fork and the
    store of its pid, a KeyboardInterrupt would lose the child, left running unreaped. Held
    while the pid is stored; delivered right after (the caller's cleanup then knows the pid)."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, _INTERRUPTS)


def _release_interrupts(mask: set) -> None:
    if not _INTERRUPTS & mask:  # else they were blocked before: keep them so
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _INTERRUPTS)


def _fork(cgroup: Driver) -> tuple[int, bool]:
    """os.fork(), with the child born in its cgroup where the kernel can do that: cgroup v2,
    clone3(CLONE_INTO_CGROUP), a single-threaded caller (see syscalls.fork_into_cgroup).
    Returns (pid, born_in_place); not born in place, the parent writes cgroup.procs (_place).
    Being born there saves that write, which takes the cgroup lock and can wait out an RCU
    grace period (milliseconds) after idle time."""
    global _clone3_usable
    where = cgroup.birth_dir() if _clone3_usable else None
    if where is not None and sc.can_fork_into_cgroup():
        fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return sc.fork_into_cgroup(fd), True
        except OSError as e:
            if e.errno in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.E2BIG):
                _clone3_usable = False  # this kernel or libc: no point asking again
            # else (EPERM, say): fall back to the write, which reports the cause if it fails
        finally:
            os.close(fd)  # in the parent, and in the child
    return os.fork(), False


def _placed_at_birth(born: bool, place_r: int | None) -> int | None:
    """In the child: the "placed" pipe to wait on, or None when born in the cgroup."""
    if born and place_r is not None:
        _close(place_r)
        return None
    return place_r


def _place(launch: _Launch, place_w: int) -> None:
    """Put the container in its cgroup, then let it go on (it waits before any user code).
    On failure the container is killed and reaped; the caller removes the cgroup."""
    try:
        launch.cgroup.add_process(launch.pid)  # overlaps the container's own setup
        os.write(place_w, b"p")
    except BaseException:
        _abandon(launch)
        raise
    finally:
        _close(place_w)


def _abandon(launch: _Launch) -> None:
    """Kill and reap a container nobody will wait for, and close its fds (a failed placement,
    Ctrl-C during the sleep); the caller removes its cgroup."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(launch.pid, signal.SIGKILL)
    if launch.warm_init is not None:
        launch.warm_init.kill()
    with contextlib.suppress(ChildProcessError):
        os.waitpid(launch.pid, 0)
    for fd in (launch.result_r, launch.alive_w, launch.exited_fd, *launch.stdio.values()):
        _close(fd)


def _deadline(spec: Spec, started: float) -> float | None:
    timeout = spec.resources.timeout
    return None if timeout is None else started + timeout


def _pidfd_or_none(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:  # not for an unreaped child of ours; the pipe still tells
        return None


def _sleep_until_done(pid: int, result_r: int, deadline: float | None,
                      pidfd: int | None = None) -> int | None:
    """Block, running nothing, until the workload's first frame (a function workload writes
    one, at its end), the exit of the child `pid`, or the deadline; returns a pidfd of the
    child, which the wait goes on with (start_until_done).

    Why: the child runs on this process's CPU as soon as this process blocks (measured with
    perf sched: its first run 0.17 ms after the fork, against 0.63 ms when this process first
    did its own bookkeeping), and until the child exits every page this process writes is
    copied (about 4 us a page, against under 1 us after the exit). `pidfd`: one of the
    child opened already."""
    if pidfd is None:
        pidfd = _pidfd_or_none(pid)
    try:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        select.select([result_r] if pidfd is None else [result_r, pidfd], [], [], left)
    except BaseException:
        _close(pidfd)
        raise
    return pidfd


def _sleep_after_launch(launch: _Launch, spec: Spec) -> None:
    """_sleep_until_done for a container already placed; on Ctrl-C it is killed and reaped."""
    try:
        # Handed over: on an exception the sleep closes it itself.
        opened, launch.exited_fd = launch.exited_fd, None
        launch.exited_fd = _sleep_until_done(launch.pid, launch.result_r,
                                             _deadline(spec, launch.started), opened)
    except BaseException:
        _abandon(launch)
        raise


def _fork_container(spec, plan, userns, workload_factory, child_stdio, cgroup,
                    link) -> _Launch:
    joins = cgroup.self_join_files()  # v1: the container's first process joins itself
    # Else, capped: placed at birth (v2, clone3), or by our write (_place) it waits for.
    by_write = not isinstance(cgroup, NoCgroup) and not joins
    netns_fd = link.fd if link else None
    with _lock:
        if netns_fd is not None:
            _open_fds.add(netns_fd)  # other containers' children close it (see _close_foreign)
        result_r, result_w = _pipe()
        alive_r, alive_w = _pipe()
        place_r, place_w = _pipe() if by_write else (None, None)
        parent_ends, child_ends = _stdio_pipes(child_stdio)
        keep = {result_w, alive_r, *child_ends.values()}
        first_keep = keep | ({place_r} if by_write else set()) | (
            {netns_fd} if netns_fd is not None else set())
        workload = workload_factory(child_ends)
        started = time.monotonic()
        mask = _hold_interrupts()  # until the launch is recorded (_hold_interrupts says why)
        try:
            # As root the child is born pid 1 of a new pid namespace; rootless, its outer stage
            # makes the user namespace first, and the pid namespace inside it.
            with (contextlib.nullcontext() if userns
                  else namespaces.pid_namespace_for_next_fork()):
                pid, born = _fork(cgroup)
                if pid == 0:
                    _release_interrupts(mask)
                    _close_foreign(first_keep)
                    place_r = _placed_at_birth(born, place_r)

                    def stage() -> None:
                        if userns:
                            _outer_stage(spec, plan, workload, result_w, alive_r, keep,
                                         place_r, netns_fd, joins)
                        else:
                            _init_stage(spec, plan, workload, result_w, alive_r, keep,
                                        unshared=False, userns=False, place_r=place_r,
                                        netns_fd=netns_fd, joins=joins)

                    _in_child(result_w, stage)
        except BaseException:
            _release_interrupts(mask)
            raise
        for fd in (result_w, alive_r, place_r,
                   *(fd for t, fd in child_ends.items() if t in parent_ends)):
            _close(fd)
    launch = _Launch(pid, result_r, alive_w, parent_ends, cgroup, started, link)
    try:
        _release_interrupts(mask)  # a Ctrl-C held meanwhile is raised here
    except BaseException:
        _close(place_w)
        _abandon(launch)
        raise
    if by_write and not born:
        _place(launch, place_w)
    else:
        _close(place_w)
    return launch


def _launch_warm(spec: Spec, workload_factory, child_stdio: dict[int, int | None],
                 sleep: bool = False) -> _Launch:
    """Fork the workload straight into a container the zygote built ahead (see warm.py)."""
    warm.reap_exiting()
    res = spec.resources
    caps = (res.cpu, res.memory, res.pids)
    init = warm.take(spec.network)
    try:
        cgroup = spares.claim(*caps)  # type: ignore[arg-type]
    except BaseException:
        init.kill()
        warm.ask_next(spec.network, *spares.chores(*caps))  # type: ignore[arg-type]
        raise
    capped = not isinstance(cgroup, NoCgroup)
    joins = cgroup.self_join_files()  # v1: the workload joins its cgroup itself
    # The next container builds while this one runs; with it the zygote makes the next one's
    # cgroup and removes ended ones (after the claim: it plans for the next).
    warm.ask_next(spec.network,
                  plan=lambda: spares.chores(*caps, like=cgroup))  # type: ignore[arg-type]
    by_write = capped and not joins  # unless born there (v2), we place it (_place)
    # A function workload's last frame settles its outcome: the caller goes on, and the
    # copy's exit (unmapping its copy of the caller's memory) overlaps the caller's work.
    settles = not child_stdio
    pid: int | None = None
    pidfd: int | None = None
    slept = False
    result_r = result_w = place_r = place_w = None
    parent_ends: dict[int, int] = {}
    child_ends: dict[int, int] = {}
    try:
        with init.pid_namespace_for_next_fork():
            with _lock:
                result_r, result_w = _pipe()
                place_r, place_w = _pipe() if by_write else (None, None)
                parent_ends, child_ends = _stdio_pipes(child_stdio)
                keep = {result_w, *child_ends.values()}
                workload = workload_factory(child_ends)
                started = time.monotonic()
                mask = _hold_interrupts()
                try:
                    pid, born = _fork(cgroup)
                finally:
                    _release_interrupts(mask)  # in both: pid is stored (or the fork failed)
                if pid == 0:
                    place_r = _placed_at_birth(born, place_r)
                    _warm_stage(spec, init, workload, result_w,
                                keep | ({place_r} if place_r is not None else set()), place_r,
                                capped, joins)
            if sleep and not child_stdio and (born or not by_write):
                # At once, before any bookkeeping: the child waits for this CPU.
                opened, pidfd = pidfd, None  # handed over: closed by the sleep if it fails
                pidfd = _sleep_until_done(pid, result_r, _deadline(spec, started), opened)
                slept = True
        for fd in (result_w, place_r,
                   *(fd for t, fd in child_ends.items() if t in parent_ends)):
            _close(fd)
    except BaseException:  # Ctrl-C during the sleep, as a rule
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        for fd in (result_r, result_w, place_r, place_w, pidfd, *parent_ends.values(),
                   *(fd for t, fd in child_ends.items() if t in parent_ends)):
            _close(fd)
        cgroup.destroy()
        init.kill()
        raise
    launch = _Launch(pid, result_r, None, parent_ends, cgroup, started, None, init, settles)
    launch.exited_fd = pidfd
    if by_write and not born:
        try:
            _place(launch, place_w)
        except BaseException:
            cgroup.destroy()  # empty again: its only process was killed and reaped
            raise
    else:
        _close(place_w)
    if sleep and not child_stdio and not slept:  # capped: once placed
        try:
            _sleep_after_launch(launch, spec)
        except BaseException:
            cgroup.destroy()
            raise
    return launch


def start(spec: Spec, func: Callable[..., Any], *args: Any, **kwargs: Any) -> ContainerProcess:
    """Start `func(*args, **kwargs)` in a new container; returns at once."""
    return _start_function(spec, func, args, kwargs, sleep=False)


def start_until_done(spec: Spec, func: Callable[..., Any], *args: Any,
                     **kwargs: Any) -> ContainerProcess:
    """As `start`, but returns only once the function has returned or raised (or the process
    died, or the spec's timeout passed); `wait()` then gives the `Result` at once. For a
    caller with nothing to do meanwhile: it sleeps right after the fork rather than running
    its own code while its forked copy shares its pages (see _sleep_until_done)."""
    return _start_function(spec, func, args, kwargs, sleep=True)


def _start_function(spec: Spec, func: Callable[..., Any], args: tuple, kwargs: dict,
                    sleep: bool) -> ContainerProcess:
    spec = validate(spec)
    if not callable(func):
        raise SpecError("func", func, "a callable to run inside the container")
    spec, _ = resolve_image(spec)
    workdir = _default_workdir(spec)
    spec, link = _network_for(spec)
    launch = _launch(spec, lambda _ends: _function_workload(func, args, kwargs, spec, workdir),
                     {}, link, sleep)
    return ContainerProcess(spec, launch, None)


def run(spec: Spec, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Result:
    """Run `func(*args, **kwargs)` in a new container and return its `Result`.

    The return value travels back as JSON. The function runs in a forked copy of this process,
    so it needs no pickling and sees this process's imports and globals as they were.
    """
    return start_until_done(spec, func, *args, **kwargs).wait()


def start_command(spec: Spec, argv: Sequence[str], stdin: int | None = None,
                  stdout: int | None = None, stderr: int | None = None) -> ContainerProcess:
    """Start `argv` in a new container. stdin/stdout/stderr: PIPE, an fd, or None (inherit)."""
    spec = validate(spec)
    if isinstance(argv, (str, bytes)) or not argv or not all(isinstance(a, str) for a in argv):
        raise SpecError("argv", argv, "a non-empty list of str, e.g. ['true']")
    spec, _ = resolve_image(spec)
    workdir = _default_workdir(spec)
    argv = tuple(argv)
    spec, link = _network_for(spec)
    launch = _launch(spec, lambda ends: _command_workload(argv, spec, workdir, ends),
                     {0: stdin, 1: stdout, 2: stderr}, link)
    return ContainerProcess(spec, launch, argv)


def run_command(spec: Spec, argv: Sequence[str], input: bytes | None = None,
                timeout: float | None = None, capture_output: bool = True) -> CommandResult:
    """Run `argv` in a new container; like subprocess.run with capture_output by default."""
    how = PIPE if capture_output else None
    proc = start_command(spec, argv, stdin=PIPE if input is not None else None,
                         stdout=how, stderr=how)
    return proc.communicate(input=input, timeout=timeout)

