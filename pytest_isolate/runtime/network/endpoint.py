"""One end of a link (a namespace, its interface, its addresses) and the undo stack links use.

Rule: an Endpoint acts only on its own interface; what joins two ends is topology.py's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

from .impairment import Impairment
from .netns import NetNamespace, run_in


class Endpoint:
    """One end of a link: a namespace, the interface in it, and its address.

    `with end:` moves the current thread into its namespace (root); `socket`, `run` and
    `spawn` act inside it (root and rootless); `impair(...)` shapes what it sends;
    `capture()` records what crosses it.
    """

    def __init__(self, ns: NetNamespace, ifname: str, ip: str | None, prefixlen: int | None,
                 name: str, ip6: str | None = None, prefixlen6: int | None = None) -> None:
        self.ns = ns
        self.ifname = ifname
        self.ip = ip
        self.prefixlen = prefixlen
        self.ip6 = ip6  # None: IPv4 only (ipv6=False, or a kernel without IPv6)
        self.prefixlen6 = prefixlen6
        self.name = name
        self.impairment = Impairment()

    def __enter__(self) -> Endpoint:
        self.ns.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ns.__exit__(*exc)

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM,
               proto: int = 0) -> socket.socket:
        return self.ns.socket(family, type, proto)

    def run(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess:
        return self.ns.run(argv, **kw)

    def spawn(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen:
        return self.ns.spawn(argv, **kw)

    def impair(self, **kw: Any) -> Impairment:
        """Shape this end's egress: delay, jitter, loss, duplicate, reorder, corrupt, rate.
        No arguments clears it. Returns what is now applied."""
        imp = Impairment.parse(**kw)
        try:
            _apply(self.ns, self.ifname, imp, self.impairment)
        except BaseException:
            # The old qdisc may be gone already: leave the end unimpaired, known to be so.
            with contextlib.suppress(Exception):
                _apply(self.ns, self.ifname, Impairment(), self.impairment)
            self.impairment = Impairment()
            raise
        self.impairment = imp
        return imp

    def clear(self) -> None:
        self.impair()

    def capture(self, path: str | None = None, snaplen: int = 65535):
        """Start capturing what this end sends and receives (capture.Capture)."""
        from .capture import Capture

        return Capture(self, path, snaplen)

    def __repr__(self) -> str:
        v6 = f" [{self.ip6}]/{self.prefixlen6}" if self.ip6 else ""
        return f"<Endpoint {self.name} {self.ifname} {self.ip}/{self.prefixlen}{v6}>"


def _apply(ns: NetNamespace, ifname: str, imp: Impairment, previous: Impairment) -> None:
    run_in(ns, qdisc, ifname, dataclasses.asdict(imp), dataclasses.asdict(previous))


def qdisc(ifname: str, imp: dict, previous: dict) -> tuple[None, list]:
    """In the namespace it runs in (run_in): ifname's root qdisc for the impairment."""
    from . import netlink

    with netlink.Rtnl() as nl:
        netlink.set_qdisc(nl, ifname, Impairment(**imp), Impairment(**previous))
    return None, []


class _Undo:
    """A stack of undo callbacks run in reverse by close(); errors do not stop the rest."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def _push(self, fn: Callable[[], None]) -> None:
        self._undo.append(fn)

    def close(self) -> None:
        while self._undo:
            with contextlib.suppress(Exception):
                self._undo.pop()()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


