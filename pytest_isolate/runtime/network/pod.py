"""The rootless pod: a user namespace that owns a test's network namespaces, and the
processes that work inside it.

Rule: a process outside the pod cannot `setns` into the pod's namespaces, so work there runs
in a process that joined the pod first. Building (namespaces, links, addresses: closures of
the caller's) goes to a fork made for it (`in_owner`); the calls made often go to the pod's
agent, one long-lived helper that runs module-level functions by name (`Pod.call`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import traceback
from collections.abc import Callable
from typing import Any

from .. import syscalls as sc
from ..errors import SetupError, SpecError, UnsupportedError

# Set in a pod helper or agent: it joined a user namespace that has no rights over the
# namespace it came from, so it cannot (and need not) go back after entering one.
one_way = False


class Pod:
    """Rootless: a user namespace (mapping only the caller's ids) that owns the namespaces.

    Links can only join namespaces of one user namespace without root, so a pair or a
    bridge network made without root shares one pod.
    """

    def __init__(self) -> None:
        def make() -> tuple[Any, list[int]]:
            from ..kernel.namespaces import enter_user_namespace

            enter_user_namespace(os.geteuid(), os.getegid())
            return None, [os.open("/proc/self/ns/user", os.O_RDONLY | os.O_CLOEXEC)]

        _, fds = _in_child(make, join=None)
        self.fd: int | None = fds[0]
        self._agent: _Agent | None = None

    def call(self, ns_fd: int, fn: Callable, args: tuple) -> tuple[Any, list[int]]:
        """fn(*args) in the namespace ns_fd, by the pod's agent (started on first use, and
        again if it died: it dies with the thread that started it)."""
        for attempt in (0, 1):
            if self._agent is None:
                if self.fd is None:
                    raise ValueError("the pod is closed")
                self._agent = _Agent(self.fd)
            try:
                return self._agent.call(ns_fd, fn, args)
            except (BrokenPipeError, ConnectionError):
                self._agent.close()
                self._agent = None
                if attempt:
                    raise SetupError("pod agent", "network namespace", None,
                                     "the pod's agent died twice in a row") from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._agent is not None:
            self._agent.close()
            self._agent = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def in_owner(pod: Pod | None, fn: Callable[[], tuple[Any, list[int]]]) -> tuple[Any, list[int]]:
    """Run `fn` where it may create and configure the namespaces: this thread as root, else a
    forked helper inside the pod. `fn` returns (a JSON value, fds to hand back)."""
    if pod is None:
        return fn()
    return _in_child(fn, join=pod.fd)


def _in_child(fn: Callable[[], tuple[Any, list[int]]], join: int | None) -> tuple[Any, list[int]]:
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the helper
        global one_way
        one_way = True
        code = 1
        try:
            parent_end.close()
            if join is not None:
                sc.setns(join, sc.CLONE_NEWUSER)
            value, fds = fn()
            socket.send_fds(child_end, [json.dumps({"ok": value}).encode()], fds)
            code = 0
        except BaseException as e:
            with contextlib.suppress(OSError):
                child_end.sendall(json.dumps({"error": _error_of(e)}).encode())
        finally:
            os._exit(code)
    child_end.close()
    try:
        msg, fds, _, _ = socket.recv_fds(parent_end, 1 << 20, 64)
        chunks = [msg]
        while msg:
            msg = parent_end.recv(1 << 20)
            chunks.append(msg)
    finally:
        parent_end.close()
        os.waitpid(pid, 0)
    return _reply(json.loads(b"".join(chunks)
                             or b'{"error": {"type": "?", "text": "helper died"}}'), fds)


def _error_of(e: BaseException) -> dict:
    err = {"type": type(e).__name__, "text": str(e), "tb": traceback.format_exc()}
    if isinstance(e, SetupError):
        err["setup"] = e.to_frame()
    elif isinstance(e, UnsupportedError):
        err["unsupported"] = [e.what, e.why, e.fix]
    elif isinstance(e, SpecError):
        err["spec"] = [e.field, repr(e.value), e.expected]
    return err


def _reply(reply: dict, fds: list[int]) -> tuple[Any, list[int]]:
    for fd in fds:
        os.set_inheritable(fd, False)
    if "error" in reply:
        for fd in fds:
            os.close(fd)
        err = reply["error"]
        if "setup" in err:
            raise SetupError.from_frame(err["setup"])
        if "unsupported" in err:
            raise UnsupportedError(*err["unsupported"])
        if "spec" in err:
            raise SpecError(*err["spec"])
        raise SetupError("pod helper", "network namespace", None,
                         f"{err['type']}: {err['text']}\n{err.get('tb', '')}")
    return reply["ok"], fds


class _Agent:
    """A helper that lives in the pod for as long as the pod: rootless, the calls made often
    (a socket in a namespace, a neighbour entry, a link's state, a qdisc) go to it over a
    socket (0.1-0.3 ms) rather than each to a fresh fork of the caller (4-10 ms)."""

    def __init__(self, pod_fd: int) -> None:
        from ..process.launch import close_all_but

        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the agent
            global one_way
            one_way = True
            try:
                sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
                # it must hold nothing of the caller's (a listening socket the test closes)
                close_all_but({child_end.fileno(), pod_fd})
                sc.setns(pod_fd, sc.CLONE_NEWUSER)
                os.close(pod_fd)
                _serve(child_end)
            finally:
                os._exit(0)
        child_end.close()
        self.sock, self.pid = parent_end, pid
        self.lock = threading.Lock()

    def call(self, ns_fd: int, fn: Callable, args: tuple) -> tuple[Any, list[int]]:
        request = json.dumps({"fn": f"{fn.__module__}:{fn.__qualname__}",
                              "args": list(args)}).encode()
        with self.lock:
            socket.send_fds(self.sock, [request], [ns_fd])
            msg, fds, _, _ = socket.recv_fds(self.sock, 1 << 20, 16)
        if not msg:
            raise BrokenPipeError("the pod's agent is gone")
        return _reply(json.loads(msg), fds)

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _serve(sock: socket.socket) -> None:  # pragma: no cover - runs in the agent
    import importlib

    while True:
        msg, fds, _, _ = socket.recv_fds(sock, 1 << 20, 1)
        if not msg:
            return
        out_fds: list[int] = []
        try:
            request = json.loads(msg)
            sc.setns(fds[0], sc.CLONE_NEWNET)
            os.close(fds[0])
            module, _, name = request["fn"].partition(":")
            value, out_fds = getattr(importlib.import_module(module), name)(*request["args"])
            reply = {"ok": value}
        except BaseException as e:
            reply = {"error": _error_of(e)}
        socket.send_fds(sock, [json.dumps(reply).encode()], out_fds)
        for fd in out_fds:
            os.close(fd)
