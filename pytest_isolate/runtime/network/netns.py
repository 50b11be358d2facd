"""Network namespaces held by file descriptors, entered per thread, and the rootless "pod".

Rule: a namespace lives exactly as long as its fd (and whatever runs inside): nothing is
bind-mounted under /run/netns, so a crashed run leaves no namespace behind. Entering is per
thread (`setns` on the calling thread), so `with ns:` moves only the current thread and puts
it back. Without root the namespaces belong to one user namespace, the pod, held by its fd;
work inside them runs in a forked helper that joins the pod first (`in_owner`), because a
process outside the pod cannot `setns` into its namespaces (see docs/explanation/network.md).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .. import syscalls as sc
from ..errors import SetupError, UnsupportedError
from . import pod as pods
from .pod import Pod, in_owner

_tls = threading.local()


def _own_netns() -> int:
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


@contextlib.contextmanager
def entered(fd: int) -> Iterator[None]:
    """Move the calling thread into the network namespace `fd`, and back afterwards."""
    back = _own_netns()
    try:
        try:
            sc.setns(fd, sc.CLONE_NEWNET)
        except OSError as e:
            raise SetupError("setns", "network namespace", e.errno, str(e),
                             "entering needs root (rootless: use ns.socket(), ns.run() or "
                             "ns.spawn(), which work through the pod)") from None
        try:
            yield
        finally:
            if not pods.one_way:
                sc.setns(back, sc.CLONE_NEWNET)
    finally:
        os.close(back)


def new_netns_fd() -> int:
    """Create a network namespace; return an fd holding it. The calling thread stays put."""
    back = _own_netns()
    try:
        try:
            sc.unshare(sc.CLONE_NEWNET)
        except OSError as e:
            raise SetupError("unshare", "network namespace", e.errno, str(e),
                             "run as root, or create the namespaces in a Pod (rootless)") from None
        try:
            fd = _own_netns()
        finally:
            if not pods.one_way:
                sc.setns(back, sc.CLONE_NEWNET)
    finally:
        os.close(back)
    return fd


class NetNamespace:
    """A network namespace. `with ns:` moves the current thread in (root only); `socket`,
    `run` and `spawn` work as root and rootless."""

    def __init__(self, fd: int, pod: Pod | None = None, name: str = "") -> None:
        self.fd: int | None = fd
        self.pod = pod
        self.name = name
        # a network member's: bound over /etc/hosts for the programs run inside (routing.py)
        self.hosts_file: str | None = None

    # -- entering ------------------------------------------------------------------------

    def __enter__(self) -> NetNamespace:
        if self.pod is not None:
            raise UnsupportedError(
                f"entering network namespace {self.name!r} from this thread",
                "without root a process cannot setns into a namespace owned by a user "
                "namespace it is not in",
                "use ns.socket(...), ns.run([...]) or ns.spawn([...]), or run as root")
        stack = getattr(_tls, "stack", None)
        if stack is None:
            stack = _tls.stack = []
        cm = entered(self._fd())
        cm.__enter__()
        stack.append(cm)
        return self

    def __exit__(self, *exc: object) -> None:
        _tls.stack.pop().__exit__(*exc)

    def _fd(self) -> int:
        if self.fd is None:
            raise ValueError(f"network namespace {self.name!r} is closed")
        return self.fd

    # -- working inside ------------------------------------------------------------------

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM,
               proto: int = 0) -> socket.socket:
        """A socket that lives in this namespace (whatever thread uses it later)."""
        _, fds = run_in(self, make_socket, family, type, proto)
        return socket.socket(fileno=fds[0])

    def _preexec(self) -> Callable[[], None]:
        fd, pod_fd = self._fd(), (self.pod.fd if self.pod else None)
        hosts = self.hosts_file

        def enter() -> None:
            if pod_fd is not None:
                sc.setns(pod_fd, sc.CLONE_NEWUSER)
            sc.setns(fd, sc.CLONE_NEWNET)
            if hosts is not None:  # the members' names, in a mount namespace of its own
                sc.unshare(sc.CLONE_NEWNS)
                sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
                sc.mount(hosts, "/etc/hosts", None, sc.MS_BIND)
        return enter

    def spawn(self, argv: Sequence[str], **popen: Any) -> subprocess.Popen:
        """Start argv inside (subprocess.Popen keywords apply); returns the Popen."""
        if isinstance(argv, (str, bytes)) or not argv:
            raise TypeError("argv: a non-empty list of str, e.g. ['ip', 'addr']")
        return subprocess.Popen(list(argv), preexec_fn=self._preexec(), **popen)

    def run(self, argv: Sequence[str], input: bytes | str | None = None,
            timeout: float | None = None, check: bool = False,
            **popen: Any) -> subprocess.CompletedProcess:
        """Run argv inside and wait; output is captured (subprocess.run semantics)."""
        popen.setdefault("capture_output", True)
        if isinstance(argv, (str, bytes)) or not argv:
            raise TypeError("argv: a non-empty list of str, e.g. ['ip', 'addr']")
        return subprocess.run(list(argv), input=input, timeout=timeout, check=check,
                              preexec_fn=self._preexec(), **popen)

    def close(self) -> None:
        """Let go of the namespace: it and its links die once nothing else holds it (the
        kernel does that in the background, off the caller's time)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __repr__(self) -> str:
        state = "closed" if self.fd is None else f"fd {self.fd}"
        return f"<NetNamespace {self.name!r} {state}{' rootless' if self.pod else ''}>"


def run_in(ns: NetNamespace, fn: Callable[..., tuple[Any, list[int]]],
           *args: Any) -> tuple[Any, list[int]]:
    """fn(*args) inside ns, returning (a JSON value, fds): on this thread as root; rootless by
    the pod's agent, so fn must be a module-level function and args JSON-able."""
    if ns.pod is None:
        with entered(ns._fd()):
            return fn(*args)
    return ns.pod.call(ns._fd(), fn, args)


def make_socket(family: int, type: int, proto: int) -> tuple[None, list[int]]:
    s = socket.socket(family, type, proto)
    return None, [s.detach()]  # detach: the fd must outlive the object


def _no_dad() -> None:
    """No duplicate address detection on this namespace's interfaces to come: no one else is
    on our links, and a link-local address that is still tentative (1-2 s) keeps a router
    from resolving its next hop. Per namespace: the thread's, as /proc/sys/net is."""
    try:
        with open("/proc/sys/net/ipv6/conf/default/accept_dad", "w") as f:
            f.write("0")
    except FileNotFoundError:  # a kernel without IPv6
        pass
    except OSError:  # read-only /proc/sys (inside an isolated test): addresses wait out DAD
        pass


def create(names: Sequence[str], pod: Pod | None = None) -> list[NetNamespace]:
    """New namespaces, each with lo up; made in the pod when one is given."""
    def make() -> tuple[Any, list[int]]:
        fds = []
        try:
            for _ in names:
                fd = new_netns_fd()
                fds.append(fd)
                with entered(fd):
                    sc.set_link_up("lo")
                    _no_dad()
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return None, fds

    _, fds = in_owner(pod, make)
    return [NetNamespace(fd, pod, name) for fd, name in zip(fds, names, strict=True)]


