"""Long-lived containers: pid 1 kept alive, processes exec'd into it as `docker exec` does.

Rule: a `Container` owns one `ContainerProcess` whose workload only waits (a forked Python
function, so it needs nothing from the image). Every exec is a new process that joins the
running container's cgroup, then its user (rootless), mount, uts, ipc, net, cgroup and pid
namespaces, and forks once more so that the program runs as a member of the pid namespace:

  caller ----fork----> helper: [join the cgroup (v1) | wait "placed" (v2)]
                               setns(user?, mnt, uts, ipc, net, cgroup, pid)
                         |----fork----> program: PDEATHSIG, chdir, dup2 stdio, execve
                         | forwards TERM/INT/..., exits with the program's status (128+N on N)
  exec errors (no such program) come back through a close-on-exec pipe, as in subprocess.
Files are read and written by a helper that joins the mount namespace and opens the path
there, so symlinks in the image resolve inside the container, never on the host.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import plan as plans
from .api import default_workdir, resolve_image, start
from .cgroups import NoCgroup
from .cgroups.driver import join_self
from .errors import SetupError, SpecError
from .handle import ContainerProcess
from .process import protocol
from .process.exec import Process, communicate, helper
from .process.launch import close_all_but
from .result import CommandResult, Result, Stats, WorkloadError, WorkloadFailed
from .setup import Context, prepare, run_steps
from .spec import Spec, validate

READY_TIMEOUT = 30.0
def _keep_alive(ready_w: int) -> None:
    """The container's workload: say it is up, then wait for a signal (TERM ends it)."""
    os.write(ready_w, b"r")
    os.close(ready_w)
    while True:
        signal.pause()


class Container:
    """A running container. Start it with `Container(spec)` (or the `containers` fixture).

    `run`, `spawn` and `exec` start programs inside; `call` runs a Python callable inside
    (host-root containers only); `read_file`/`write_file` go through the container's own
    root; `stats()` reads its cgroup; `stop(grace)` sends TERM, then KILL.
    """

    def __init__(self, spec: Spec | None = None) -> None:
        spec = validate(spec or Spec())
        spec, self.image = resolve_image(spec)
        self.spec = spec
        self.workdir = default_workdir(spec)
        self._log_lock = threading.Lock()
        self._logs: list[str] = []
        self._processes: list[Process] = []
        self._program_pids: dict[int, int | None] = {}  # helper pid -> program's host pid
        self._stopped = False
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            self._proc: ContainerProcess = start(spec, _keep_alive, w)
        finally:
            os.close(w)
        try:
            self._wait_ready(r)
        finally:
            os.close(r)
        self.init_pid = self._find_init()
        self._userns = spec.wants_userns()
        self._join = plans.join_steps(self._userns)
        self._confine = plans.confine_steps(plans.confinement_of(spec))
        prepare(self._confine)
        self._ns: dict[str, int] = {}
        try:
            for name in (step.target for step in self._join):
                self._ns[name] = os.open(f"/proc/{self.init_pid}/ns/{name}",
                                         os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            self.stop(0)
            raise SetupError("open namespace", f"/proc/{self.init_pid}/ns", e.errno,
                             str(e)) from None

    # -- start ------------------------------------------------------------------------------

    def _wait_ready(self, r: int) -> None:
        ready, _, _ = select.select([r], [], [], READY_TIMEOUT)
        data = os.read(r, 1) if ready else b""
        if data == b"r":
            return
        # No "ready": setup failed (the result frames say why) or it took far too long.
        self._proc.kill()
        self._proc.wait()  # raises the SetupError the container reported, if any
        raise SetupError("start container", self.spec.image or self.spec.rootfs or "host root",
                         None, f"not ready within {READY_TIMEOUT}s")

    def _find_init(self) -> int:
        pid = self._proc.pid
        if not self.spec.wants_userns():
            return pid  # the caller forked init itself
        try:  # rootless: init is the only child of the outer stage
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                return int(f.read().split()[0])
        except (OSError, IndexError, ValueError) as e:
            raise SetupError("find init", f"children of {pid}", None, str(e)) from None

    @property
    def ip(self) -> str | None:
        """network="veth": the container's address (else None)."""
        return self._proc.ip

    @property
    def host_ip(self) -> str | None:
        return self._proc.host_ip

    # -- exec -------------------------------------------------------------------------------

    def _env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        return {**os.environ, **self.spec.env, **(env or {})}

    def _check_argv(self, argv: Sequence[str]) -> tuple[str, ...]:
        if isinstance(argv, (str, bytes)) or not argv or not all(isinstance(a, str)
                                                                for a in argv):
            raise SpecError("argv", argv, "a non-empty list of str, e.g. ['sh', '-c', 'ls']")
        if self._stopped:
            raise SetupError("exec", argv[0], None, "the container is stopped")
        return tuple(argv)

    def _enter(self, argv: tuple[str, ...], env: dict[str, str], workdir: str,
               stdio: dict[int, int], body: Callable[[], None] | None = None,
               keep_fds: Sequence[int] = ()) -> int:
        """Fork the helper (see the module docstring); returns its pid once the program runs
        (or raises SetupError when it could not be started)."""
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        place_r, place_w = os.pipe2(os.O_CLOEXEC)
        cgroup = self._proc.cgroup
        joins = cgroup.self_join_files()  # v1: the helper joins the cgroup itself
        placed = isinstance(cgroup, NoCgroup) or bool(joins)  # else we place it
        keep = {err_w, place_r, *stdio.values(), *self._ns.values(), *(keep_fds or ())}
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the helper
            code = 125
            try:
                close_all_but(keep)  # a held pipe end of another container means no EOF
                join_self(joins)  # before the setns: the host's cgroup tree is in view here
                if not placed and os.read(place_r, 1) != b"p":
                    return  # the caller could not place it (and raises why): run nothing
                # joined, then confined as the container's own workload is (its programs
                # inherit the capabilities and the filter)
                run_steps(self._join + self._confine, Context(ns_fds=self._ns))
                code = helper(argv, env, workdir, stdio, err_w, body)
            except BaseException as e:
                with contextlib.suppress(OSError):
                    os.write(err_w, protocol.failed(getattr(e, "errno", None),
                                                    f"{type(e).__name__}: {e}"))
            finally:
                os._exit(code)
        os.close(err_w)
        os.close(place_r)
        if not placed:
            try:
                cgroup.add_process(pid)
            except BaseException:
                os.close(place_w)  # EOF: the helper exits without running anything
                os.close(err_r)
                os.waitpid(pid, 0)
                raise
            # Only an unplaced helper reads this: a placed one may have run its program and
            # exited by now, and a write would then fail with EPIPE.
            with contextlib.suppress(BrokenPipeError):  # it died: err_r says why
                os.write(place_w, b"p")
        os.close(place_w)
        with os.fdopen(err_r, "rb") as f:
            reply = f.read()
        info = protocol.decode(reply, {})
        if "pid" in info or (body is not None and not reply):
            self._program_pids[pid] = info.get("pid")
            return pid
        os.waitpid(pid, 0)
        raise SetupError("exec", argv[0], info.get("errno"),
                         info.get("message", "the helper died before starting it"),
                         "is the program in the container's root filesystem, and on its PATH?")

    def spawn(self, argv: Sequence[str], env: Mapping[str, str] | None = None,
              workdir: str | None = None, stdin: bytes | None = None) -> Process:
        """Start argv inside, in the background; its output goes to `Process.output` and to
        the container's logs."""
        argv = self._check_argv(argv)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        in_r, in_w = os.pipe2(os.O_CLOEXEC) if stdin is not None else (None, None)
        stdio = {1: out_w, 2: out_w}
        if in_r is not None:
            stdio[0] = in_r
        try:
            pid = self._enter(argv, self._env(env), workdir or self.workdir, stdio)
        except BaseException:
            os.close(out_r)
            for fd in (in_w,):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            os.close(out_w)
            if in_r is not None:
                os.close(in_r)
        if in_w is not None:
            with contextlib.suppress(BrokenPipeError):
                os.write(in_w, stdin or b"")
            os.close(in_w)
        proc = Process(self, argv, pid, out_r, None)
        self._processes.append(proc)
        return proc

    def exec(self, argv: Sequence[str], **kw: Any) -> Process:
        """`docker exec -d`: the same as spawn."""
        return self.spawn(argv, **kw)

    def run(self, argv: Sequence[str], input: bytes | None = None,
            timeout: float | None = None, check: bool = False,
            env: Mapping[str, str] | None = None, workdir: str | None = None) -> CommandResult:
        """Run argv inside and wait: stdout and stderr captured separately."""
        argv = self._check_argv(argv)
        pipes = {1: os.pipe2(os.O_CLOEXEC), 2: os.pipe2(os.O_CLOEXEC)}
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        stdio = {0: in_r, 1: pipes[1][1], 2: pipes[2][1]}
        try:
            pid = self._enter(argv, self._env(env), workdir or self.workdir, stdio)
        except BaseException:
            for r, _ in pipes.values():
                os.close(r)
            os.close(in_w)
            raise
        finally:
            for _, w in pipes.values():
                os.close(w)
            os.close(in_r)
        out, timed_out = communicate(in_w, input or b"", {pipes[1][0]: 1, pipes[2][0]: 2},
                                      timeout, pid)
        proc = Process(self, argv, pid, None, None)
        proc.wait()
        if timed_out:
            proc.returncode = -signal.SIGKILL
        for fd in (1, 2):
            if out[fd]:
                self._log(argv, bytes(out[fd]))
        result = CommandResult(argv=argv, returncode=proc.returncode or 0, timed_out=timed_out,
                               stats=Stats(), oom_killed=False, pids_limited=False,
                               stdout=bytes(out[1]), stderr=bytes(out[2]))
        return result.check_returncode() if check else result

    def call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run func(*args, **kwargs) inside (a forked copy of this process that entered the
        container) and return its JSON-able value; what it raised comes back as
        WorkloadFailed, with the exception's type, message and traceback on `.result.error`."""
        if self.spec.layers or self.spec.rootfs:
            raise SpecError("call", getattr(func, "__name__", func), "a container of the host "
                            "root (an image has no copy of this Python environment): use run()")
        r, w = os.pipe2(os.O_CLOEXEC)

        def body() -> None:
            try:
                data = protocol.call_returned(func(*args, **kwargs))
            except BaseException as e:
                data = protocol.call_raised(type(e).__qualname__, str(e), traceback.format_exc())
            os.write(w, data)

        try:
            pid = self._enter(("call",), self._env(None), self.workdir, {}, body, (w,))
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        with os.fdopen(r, "rb") as f:
            data = f.read()
        os.waitpid(pid, 0)
        reply = protocol.decode(data, {"error": "the call died without a result"})
        if "error" in reply:
            error = WorkloadError(reply.get("type", "Error"), reply["error"], reply.get("tb", ""))
            raise WorkloadFailed(Result(error=error))
        return reply["ok"]

    # -- files ------------------------------------------------------------------------------

    def _open_inside(self, path: str, flags: int, mode: int = 0o644) -> int:
        if not isinstance(path, str) or not path.startswith("/"):
            raise SpecError("path", path, "an absolute path inside the container")
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        steps = plans.join_steps(self._userns, only=("mnt",))
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the helper
            try:
                a.close()
                run_steps(steps, Context(ns_fds=self._ns))
                fd = os.open(path, flags | os.O_CLOEXEC, mode)
                socket.send_fds(b, [b"k"], [fd])
            except (OSError, SetupError) as e:
                with contextlib.suppress(OSError):
                    b.sendall(protocol.failed(e.errno, getattr(e, "strerror", None) or str(e)))
            finally:
                os._exit(0)
        b.close()
        try:
            msg, fds, _, _ = socket.recv_fds(a, 4096, 1)
            for fd in fds:
                os.set_inheritable(fd, False)
        finally:
            a.close()
            os.waitpid(pid, 0)
        if fds:
            return fds[0]
        info = protocol.decode(msg, {"errno": None, "message": "helper died"})
        raise FileNotFoundError(info["errno"], f"{info['message']}: {path} (in the container)"
                                ) if info["errno"] == 2 else OSError(info["errno"],
                                                                     f"{info['message']}: {path}")

    def read_file(self, path: str) -> bytes:
        fd = self._open_inside(path, os.O_RDONLY)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def write_file(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        fd = self._open_inside(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)

    # -- state ------------------------------------------------------------------------------

    def _log(self, argv: Sequence[str], data: bytes) -> None:
        with self._log_lock:
            self._logs.append(f"[{' '.join(argv)}] {data.decode(errors='replace')}")

    @property
    def logs(self) -> str:
        """What the programs started in it wrote, in the order it arrived."""
        with self._log_lock:
            return "".join(self._logs)

    def stats(self) -> Stats:
        """CPU time, throttling, peak memory of its cgroup (empty without caps)."""
        if self._stopped:
            return self._proc.stats
        return self._proc.cgroup.stats()

    @property
    def running(self) -> bool:
        return not self._stopped

    def stop(self, grace: float = 5.0):
        """TERM to pid 1 (which forwards it), KILL after `grace` seconds; returns the
        container's Result. Every process of the container ends with it."""
        if self._stopped:
            return self._result
        self._stopped = True
        for fd in self._ns.values():
            os.close(fd)
        self._ns.clear()
        self._proc.send_signal(signal.SIGTERM)
        self._result = self._proc.wait(timeout=max(grace, 0.001))
        for p in self._processes:
            with contextlib.suppress(ChildProcessError):
                p.wait(timeout=5)
        return self._result

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        what = self.spec.image or self.spec.rootfs or "host root"
        return f"<Container {what} init={self.init_pid} {'running' if self.running else 'stopped'}>"
