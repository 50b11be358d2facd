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
and at once asks the zygote for the next, so the build overlaps the caller's own work.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading

from . import namespaces, rootfs
from . import syscalls as sc
from .errors import SetupError
from .spec import Spec

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DISABLE_ENV = "PYTEST_ISOLATE_NO_WARM"  # "1": always build containers cold (for comparison)


def eligible(spec: Spec) -> bool:
    return (not spec.wants_userns() and spec.network in ("none", "host")
            and spec.rootfs is None and not spec.layers and spec.image is None
            and not spec.mounts and spec.keep_dir is None and spec.time_offsets is None
            and os.environ.get(DISABLE_ENV) != "1")


class WarmInit:
    """A ready container: its init's pid and a pidfd that the workload joins through."""

    def __init__(self, pid: int, network: str, hostname: str):
        self.pid = pid
        self.network = network
        self.hostname = hostname  # what init named its UTS namespace
        self.pidfd = os.pidfd_open(pid)

    @property
    def join_flags(self) -> int:
        flags = sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWCGROUP
        return flags | sc.CLONE_NEWNET if self.network == "none" else flags

    def kill(self) -> None:
        """Kill init, and with it every process of the container (idempotent)."""
        if self.pidfd >= 0:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            os.close(self.pidfd)
            self.pidfd = -1

    def pid_namespace_for_next_fork(self):
        """This thread's next fork is born in the container's pid namespace."""
        return namespaces.pid_namespace_for_next_fork(join=self.pidfd)


class _Pool:
    """The zygote of this process and the one request it has in flight."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        code = (f"import sys; sys.path.insert(0, {_PACKAGE_PARENT!r}); "
                "from pytest_isolate.runtime.zygote import main; main()")
        # -I -S: no user site, no .pth files, no PYTHON* variables: the runtime needs only the
        # standard library, and the zygote starts faster without them.
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", code, str(theirs.fileno()), str(os.getpid())],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, cwd="/")
        theirs.close()
        self.pending: str | None = None
        self.asked_at = 0  # mount_generation() when the pending container was asked for

    def _ask(self, network: str) -> None:
        self.asked_at = rootfs.mount_generation()
        self.sock.send(json.dumps({"network": network}).encode())
        self.pending = network

    def _answer(self) -> WarmInit:
        network, self.pending = self.pending, None
        data = self.sock.recv(1 << 16)
        if not data:
            raise SetupError("warm container", "zygote", None,
                             f"the helper process exited (status {self.proc.poll()})",
                             "set PYTEST_ISOLATE_NO_WARM=1 to build containers cold")
        reply = json.loads(data)
        if "error" in reply:
            raise SetupError.from_frame(reply["error"])
        return WarmInit(reply["pid"], network, reply["hostname"])  # type: ignore[arg-type]

    def prepare(self, network: str) -> None:
        with self.lock:
            if self.pending is None:
                self._ask(network)

    def take(self, network: str) -> WarmInit:
        with self.lock:
            warm = None
            if self.pending is not None:
                shape = self.pending
                # A host mount made since the ask may be missing from the one built ahead.
                stale = self.asked_at != rootfs.mount_generation()
                warm = self._answer()
                if shape != network or stale:
                    warm.kill()
                    warm = None
            if warm is None:
                self._ask(network)
                warm = self._answer()
            self._ask(network)  # the next one builds while this one is used
            return warm

    def close(self) -> None:
        self.sock.close()  # EOF: the zygote exits, and its inits with it (PDEATHSIG)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_pool: _Pool | None = None
_pool_lock = threading.Lock()
_pool_pid = os.getpid()  # the process that _pool and _pool_lock belong to


def _own_lock() -> threading.Lock:
    """The module's lock, after forgetting a parent's zygote in a forked child (whose lock may
    have been held by another thread at the fork). Checked at use, not in an at-fork handler:
    a handler runs in every forked child, each test's included, and the three this package
    had cost a test's child 144 page faults (about 0.5 ms) before its first line ran. The
    child keeps the parent's socket open (close-on-exec) until it exits, unused."""
    global _pool, _pool_lock, _pool_pid
    if _pool_pid != os.getpid():
        _pool, _pool_lock, _pool_pid = None, threading.Lock(), os.getpid()
    return _pool_lock


def _get_pool() -> _Pool:
    global _pool
    with _own_lock():
        if _pool is None:
            _pool = _Pool()
        return _pool


def prepare(network: str = "none") -> None:
    """Start the zygote and the first container now (e.g. at session start), not at first use."""
    _get_pool().prepare(network)


def take(network: str) -> WarmInit:
    return _get_pool().take(network)


def shutdown() -> None:
    global _pool
    with _own_lock():
        pool, _pool = _pool, None
    if pool is not None:
        pool.close()


def _at_exit() -> None:
    with contextlib.suppress(Exception):
        shutdown()


atexit.register(_at_exit)
