"""Warm containers: built ahead of use by the zygote, joined by the caller's workload.

A cold container costs the caller two forks of itself (init, then the workload) and waits for
the namespaces and mounts in between. A warm one is built by a small helper process (zygote.py)
while the caller does other work; the caller then forks once, straight into the container's
pid namespace, and the child joins the other namespaces with one setns(pidfd) call. Measured
on the development machine: 2.6 ms from fork to the workload running, against 10.5 ms cold.

Which specs qualify (`eligible`): root (no user namespace), the host tree as root filesystem,
network "none" or "host", no extra mounts, no kept files, no time offsets. Everything else, and
any host where the zygote cannot start, takes the cold path in container.py.

The caller keeps one container of the last shape it used ready in advance: `take` returns it
and `ask_next` at once asks the zygote for the next, so the build overlaps the caller's own
work. With that ask go the caller's cgroup chores (make the next capped container's cgroup,
remove ended ones: cgroups/spares.py), which the zygote does after the build.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable

from .. import plan as plans
from ..errors import SetupError
from ..host import state
from ..kernel import mountinfo
from ..kernel.namespaces import pid_namespace_for_next_fork
from ..local import here
from ..process import protocol
from ..result import signal_name
from ..spec import Spec
from .nets import hold_net, release_nets
from .reaping import reap_closed as _reap_closed
from .reaping import reap_exiting

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
DISABLE_ENV = "PYTEST_ISOLATE_NO_WARM"  # "1": always build containers cold (for comparison)


def eligible(spec: Spec) -> bool:
    return (not spec.wants_userns() and spec.network in ("none", "host")
            and spec.rootfs is None and not spec.layers and spec.image is None
            and not spec.mounts and spec.keep_dir is None and spec.time_offsets is None
            and os.environ.get(DISABLE_ENV) != "1")


class WarmInit:
    """A ready container: a pidfd of its init, which the workload joins through."""

    def __init__(self, pidfd: int, network: str, hostname: str):
        self.pidfd = pidfd
        self.network = network
        self.hostname = hostname  # what init named its UTS namespace

    @property
    def pid(self) -> int | None:
        """init's pid in this process's pid namespace (for messages), None once it is gone."""
        try:
            with open(f"/proc/self/fdinfo/{self.pidfd}") as f:
                for line in f:
                    if line.startswith("Pid:"):
                        pid = int(line.split()[1])
                        return pid if pid > 0 else None
        except (OSError, ValueError):
            pass
        return None

    @property
    def join_flags(self) -> int:
        return plans.namespace_flags(self.network)

    def kill(self) -> None:
        """Kill init, and with it every process of the container (idempotent)."""
        if self.pidfd >= 0:
            if self.network == "none":
                hold_net(self.pidfd)
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            os.close(self.pidfd)
            self.pidfd = -1

    def pid_namespace_for_next_fork(self):
        """This thread's next fork is born in the container's pid namespace."""
        return pid_namespace_for_next_fork(join=self.pidfd)


class _Pool:
    """The zygote of this process and the one request it has in flight."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        code = (f"import sys; sys.path.insert(0, {_PACKAGE_PARENT!r}); "
                "from pytest_isolate.runtime.warm.zygote import main; main()")
        # -I -S: no user site, no .pth files, no PYTHON* variables: the runtime needs only the
        # standard library, and the zygote starts faster without them. It is pid 1 of a pid
        # namespace of its own: whatever way it dies, every container it built dies with it.
        with pid_namespace_for_next_fork():
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", code, str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, cwd="/")
        theirs.close()
        self.pending: str | None = None  # the network of the container asked for
        self.asked_at = 0  # mount_generation() when the pending container was asked for
        self.on_chores: Callable[[dict | None], None] | None = None  # for the pending ask
        self.ready: tuple[str, int, WarmInit | SetupError] | None = None  # answered early
        self.dead = False  # its socket said so (its exit may wait on our unreaped workloads)
        self.urgent = False  # its build is waited for: raised from SCHED_IDLE (_hurry)

    def _hurry(self, urgent: bool) -> None:
        """The zygote builds ahead at SCHED_IDLE (zygote.main), on CPU time nobody else
        wants. When the caller waits for its answer, that build is urgent: at SCHED_IDLE on
        a host whose CPUs are busy with other work it would get almost none (50 trivial
        tests took 44 s beside two spinning processes, against 1.1 s without them). So the
        caller raises the zygote, and an init it is building by fork, to SCHED_OTHER for
        the wait, and lowers it again with the next ask ahead. Only the caller changes it,
        under the lock: no race with the zygote's own steps."""
        if urgent == self.urgent:
            return
        self.urgent = urgent
        policy = os.SCHED_OTHER if urgent else os.SCHED_IDLE
        pid = self.proc.pid
        pids = [pid]
        if urgent:  # an init forked before the raise inherited SCHED_IDLE
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{pid}/children") as f:
                pids += [int(p) for p in f.read().split()]
        for p in pids:
            with contextlib.suppress(OSError):  # gone meanwhile
                os.sched_setscheduler(p, policy, os.sched_param(0))

    def _ask(self, network: str, chores: dict | None = None) -> None:
        self.asked_at = mountinfo.mount_generation()
        self._hurry(False)
        self.sock.send(protocol.zygote_request(network, chores))
        self.pending = network
        self.on_chores = None

    def _receive(self) -> WarmInit | SetupError:
        """The answer to the pending ask; its chores' outcome goes to their callback."""
        network, self.pending = self.pending, None
        on_chores, self.on_chores = self.on_chores, None
        if not select.select([self.sock], [], [], 0)[0]:
            self._hurry(True)
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, 1 << 16, 1)
        except OSError:
            data, fds = b"", []
        reply = json.loads(data) if data else None
        if reply is None or "error" in reply or not fds:
            for fd in fds:
                os.close(fd)
            fds = []
        if on_chores is not None:
            on_chores(None if reply is None else reply.get("chores"))
        # A zygote that died after answering took the container it built with it (its inits
        # die with it): say that, not the ESRCH of joining a dead init.
        if reply is None or self.proc.poll() is not None:
            for fd in fds:
                os.close(fd)
            self.dead = True
            return self.died()
        if "error" in reply:
            return SetupError.from_frame(reply["error"])
        if not fds:
            return SetupError("warm container", "zygote", None, "the answer carried no pidfd",
                              "set PYTEST_ISOLATE_NO_WARM=1 to build containers cold")
        return WarmInit(fds[0], network, reply["hostname"])  # type: ignore[arg-type]

    def hung_up(self) -> bool:
        """The zygote closed its end (it died): one poll, no answer consumed."""
        p = select.poll()
        p.register(self.sock, select.POLLHUP)
        if p.poll(0):
            self.dead = True
        return self.dead

    def died(self) -> SetupError:
        """What to say when the zygote is gone: how it ended, and the way around it."""
        reap_exiting()  # as pid 1 it ends only once the workloads we forked into it are reaped
        status = self.proc.poll()
        how = ("is gone" if status is None else f"was killed by {signal_name(-status)}"
               if status < 0 else f"exited with status {status}")
        return SetupError("warm container", f"zygote (pid {self.proc.pid})", None,
                          f"the helper process that builds containers ahead {how}",
                          "see what killed it (dmesg: the OOM killer?); set "
                          "PYTEST_ISOLATE_NO_WARM=1 to build containers without it")

    def _answer(self) -> tuple[str, int, WarmInit]:
        """(network, mount generation at the ask, container) of the last ask."""
        if self.ready is not None:
            (network, asked_at, got), self.ready = self.ready, None
        else:
            network, asked_at = self.pending, self.asked_at  # type: ignore[assignment]
            got = self._receive()
        if isinstance(got, SetupError):
            raise got
        return network, asked_at, got

    def ask(self, network: str, chores: dict | None = None,
            on_chores: Callable[[dict | None], None] | None = None) -> None:
        """Ask for the next container, unless one is asked for already; the zygote does
        `chores` after building it, and their outcome reaches `on_chores` (None: not done)."""
        on_chores = on_chores if chores is not None else None
        with self.lock:
            if self.pending is None and self.ready is None:
                try:
                    self._ask(network, chores)
                    self.on_chores = on_chores
                    return
                except OSError:
                    pass  # the zygote is gone: the next take says so, with the fix
        if on_chores is not None:
            on_chores(None)

    def take(self, network: str) -> WarmInit:
        """The container asked for ahead if it fits, else one built now."""
        with self.lock:
            warm = None
            if self.pending is not None or self.ready is not None:
                shape, asked_at, warm = self._answer()
                # A host mount made since the ask may be missing from the one built ahead.
                if shape != network or asked_at != mountinfo.mount_generation():
                    warm.kill()
                    warm = None
            if warm is None:
                self._ask(network)
                warm = self._answer()[2]
            return warm

    def settle(self) -> None:
        """Wait for the pending answer now if chores ride on it (kept for the next take)."""
        with self.lock:
            if self.pending is not None and self.on_chores is not None:
                network, asked_at = self.pending, self.asked_at
                self.ready = (network, asked_at, self._receive())

    def close(self) -> None:
        self.settle()  # chores in flight: their outcome says which cgroups exist
        if self.ready is not None and isinstance(self.ready[2], WarmInit):
            self.ready[2].kill()
        self.ready = None
        self.sock.close()  # EOF: the zygote exits, and its containers with it
        # As pid 1 of its pid namespace, the zygote's exit waits until every process of that
        # namespace is reaped, our workloads included (we are their parent): reap ours first.
        reap_exiting(block=True)
        # A workload still running (a container started and not waited for) holds it, until
        # that workload is reaped: then the next shutdown, or our exit, reaps the zygote.
        # Waiting on here could hang.
        here().closed.append(self.proc)
        _reap_closed(timeout=1)


def _get_pool() -> _Pool:
    """This process's zygote (a forked child's is its own: the parent's socket stays open,
    close-on-exec, unused until it exits)."""
    local = here()
    with local.pool_lock:
        if local.pool is None:
            local.pool = _Pool()
        return local.pool


def prepare(network: str = "none") -> None:
    """Start the zygote and the first container now (e.g. at pytest_configure), not at first use."""
    _get_pool().ask(network)


def take(network: str) -> WarmInit:
    """A container built ahead (or now). The caller then asks for the next (`ask_next`).
    A zygote that died (killed by someone, mid-build or not) is replaced once: its
    containers died with it, and a new one builds this one."""
    pool = _get_pool()
    try:
        warm = pool.take(network)
        if not pool.hung_up():
            return warm
        warm.kill()  # built, then its zygote died: so did it
        raise pool.died()
    except (SetupError, OSError) as e:
        # an OSError here is the socket's: the zygote is gone
        if not (pool.dead or isinstance(e, OSError) or pool.proc.poll() is not None):
            raise
        died = pool.died()
        _drop(pool)
    try:
        return _get_pool().take(network)
    except OSError as e:  # the new one died too: say how the first did
        raise died from e


def explain(error: SetupError) -> SetupError:
    """A join of a taken container that failed with ESRCH because its zygote died meanwhile
    (after the take looked): say that; the next take replaces the zygote."""
    pool = here().pool
    if error.errno == errno.ESRCH and pool is not None and (
            pool.hung_up() or pool.proc.poll() is not None):
        return pool.died()
    return error


def _drop(pool: _Pool) -> None:
    """Forget a dead zygote (and reap it); the next _get_pool starts a new one."""
    local = here()
    with local.pool_lock:
        if local.pool is pool:
            local.pool = None
    on_chores, pool.on_chores = pool.on_chores, None
    pool.pending, pool.ready = None, None  # no answer will come: nothing to settle
    if on_chores is not None:
        on_chores(None)  # not done: their cgroups are planned again
    pool.close()


Plan = Callable[[], "tuple[dict | None, Callable[[dict | None], None] | None]"]


def ask_next(network: str, chores: dict | None = None,
             on_chores: Callable[[dict | None], None] | None = None,
             plan: Plan | None = None) -> None:
    """Have the zygote build the next container while this one is used, and do `chores`
    (see zygote.py), whose outcome reaches `on_chores` at a later take or `settle`. `plan`,
    instead: a function giving (chores, on_chores), called when the ask goes out (a held ask
    is planned at release_asks, off the path to the fork it was made beside)."""
    held = here().held
    if held is not None:
        held.append((network, chores, on_chores, plan))
        return
    if plan is not None:
        chores, on_chores = plan()
    _get_pool().ask(network, chores, on_chores)


def hold_asks() -> None:
    """Keep the next asks until release_asks: the caller wants the other CPU for a moment
    (a test started while the one before is still being reported, in the plugin's runner)."""
    local = here()
    if local.held is None:
        local.held = []


def release_asks() -> None:
    local = here()
    held, local.held = local.held, None
    for args in held or ():
        ask_next(*args)


def settle() -> None:
    """Get the answer to chores in flight now (cgroups/spares.py's flush)."""
    local = here()
    with local.pool_lock:
        pool = local.pool
    if pool is not None:
        pool.settle()


def shutdown() -> None:
    """Stop the zygote (and with it every container it built) and reap it."""
    local = here()
    local.held = None
    with local.pool_lock:
        pool, local.pool = local.pool, None
    if pool is not None:
        pool.close()
    else:
        _reap_closed(timeout=1)
    release_nets()  # after close(), which kills the container built ahead


def pool_process() -> subprocess.Popen | None:
    """This process's zygote, if it has one (for tests and diagnostics)."""
    pool = here().pool
    return None if pool is None else pool.proc


def _at_exit() -> None:
    with contextlib.suppress(Exception):
        shutdown()
    reap_exiting(block=True)


atexit.register(_at_exit)
state.before_release(_at_exit)  # its exit may be run after the owner lock's
