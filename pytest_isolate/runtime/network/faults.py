"""Faults on links that exist: partitions, a link down or flapping, MTU changes.

Rule: nothing here deletes a link or a namespace. A partition is a permanent neighbour entry
for each address on the other side that points at a hardware address no interface has: the
frames go out and the other side drops them as not its own, so connects time out and datagrams
vanish, both ways, as on a cut path; healing deletes those entries and the kernel resolves the
addresses again. A link down is the interface set down (a veth's peer loses its carrier too);
IPv6 addresses, which the kernel removes with it, are put back when it comes up.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Iterable

from .. import syscalls as sc
from ..errors import SetupError, SpecError
from .netns import run_in


def neighbours(ifname: str, targets: list[str], lladdr: str | None) -> tuple[None, list]:
    """In the namespace it runs in (run_in): a permanent neighbour entry for each target."""
    from . import netlink

    with netlink.Rtnl() as nl:
        for address in targets:
            netlink.set_neighbour(nl, ifname, address, lladdr)
    return None, []


def link(ifname: str, up: bool | None, v6: list, mtu: int | None) -> tuple[None, list]:
    """In the namespace it runs in: the link up or down (then its IPv6 addresses put back,
    which the kernel dropped when it went down), and/or its MTU."""
    from . import netlink

    with netlink.Rtnl() as nl:
        netlink.set_link(nl, ifname, up=up, mtu=mtu)
        for address, plen in v6 if up else ():
            netlink.add_address(nl, ifname, address, plen, replace=True)
    return None, []


def addresses(end) -> list[str]:
    return [a for a in (end.ip, getattr(end, "ip6", None)) if a]


def cut(end, peers: Iterable, undo: bool = False) -> None:
    """Make end's frames to each peer's addresses go nowhere (undo: resolve them again)."""
    from . import netlink

    targets = [a for p in peers for a in addresses(p)]
    if targets:
        run_in(end.ns, neighbours, end.ifname, targets, None if undo else netlink.NOWHERE_MAC)


def set_link(end, up: bool) -> None:
    v6 = [[end.ip6, end.prefixlen6]] if getattr(end, "ip6", None) else []
    run_in(end.ns, link, end.ifname, up, v6, None)


def set_mtu(end, mtu: int) -> None:
    if not isinstance(mtu, int) or isinstance(mtu, bool) or not 68 <= mtu <= 65535:
        raise SpecError("mtu", mtu, "a whole number of bytes from 68 to 65535 (IPv6 needs "
                        "1280 or more)")
    run_in(end.ns, link, end.ifname, None, [], mtu)


class Flap:
    """A link going down and up every `period / 2` seconds for `seconds`, in a helper process
    (inside the namespace, or the pod); it leaves the link up. The constructor returns once
    the link is down the first time. `stop()` ends it early; `wait()` until it has ended; a
    context manager."""

    def __init__(self, end, seconds: float, period: float) -> None:
        for name, value in (("seconds", seconds), ("period", period)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise SpecError(name, value, "seconds as a number > 0")
        if period < 0.002:
            raise SpecError("period", period, "at least 0.002 s (a down and an up)")
        self.end, self.seconds, self.period = end, float(seconds), float(period)
        self.flips = 0
        self._r, w = os.pipe()
        ns_fd, pod_fd = end.ns._fd(), end.ns.pod.fd if end.ns.pod else None
        # SIGTERM (stop) held until the helper's handler is in place: a stop right after the
        # start then still ends with the link up and the count written
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            self.pid = os.fork()
        finally:
            if self.pid != 0:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if self.pid == 0:  # pragma: no cover - runs in the helper
            code = 1
            try:
                os.close(self._r)
                sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
                if pod_fd is not None:
                    sc.setns(pod_fd, sc.CLONE_NEWUSER)
                sc.setns(ns_fd, sc.CLONE_NEWNET)
                code = self._run(w)
            finally:
                os._exit(code)
        os.close(w)
        if os.read(self._r, 1) != b"~":  # the first change made: the link is down now
            os.close(self._r)
            os.waitpid(self.pid, 0)
            self.pid = None
            raise SetupError("flap", f"{end.name} {end.ifname}", None, "the helper could not "
                             "set the link down (see its stderr)")

    def _run(self, w: int) -> int:  # pragma: no cover - runs in the helper
        from . import netlink

        stopping = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        end, half = self.end, self.period / 2
        v6 = [(end.ip6, end.prefixlen6)] if getattr(end, "ip6", None) else []
        deadline = time.monotonic() + self.seconds
        flips = 0
        with netlink.Rtnl() as nl:
            try:
                while not stopping and time.monotonic() < deadline:
                    netlink.set_link(nl, end.ifname, up=False)
                    if not flips:
                        os.write(w, b"~")
                    flips += 1
                    time.sleep(min(half, max(0.0, deadline - time.monotonic())))
                    netlink.set_link(nl, end.ifname, up=True)
                    for address, plen in v6:
                        netlink.add_address(nl, end.ifname, address, plen, replace=True)
                    flips += 1
                    if not stopping:
                        time.sleep(min(half, max(0.0, deadline - time.monotonic())))
            finally:
                netlink.set_link(nl, end.ifname, up=True)
        os.write(w, str(flips).encode() if flips else b"~0")
        return 0

    @property
    def running(self) -> bool:
        return self.pid is not None and not select.select([self._r], [], [], 0)[0]

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the end (the link is up again); the number of changes it made."""
        if self.pid is None:
            return self.flips
        ready = select.select([self._r], [], [], timeout)[0]
        if not ready:
            raise TimeoutError(f"the link {self.end.name} still flaps after {timeout} s")
        data = os.read(self._r, 64).lstrip(b"~")
        os.close(self._r)
        os.waitpid(self.pid, 0)
        self.pid = None
        self.flips = int(data or b"0")
        return self.flips

    def stop(self) -> int:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            return self.wait(timeout=10)
        return self.flips

    def __enter__(self) -> Flap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "flapping" if self.running else f"done, {self.flips} changes"
        return f"<Flap {self.end.name} {self.seconds:g}s every {self.period:g}s: {state}>"
