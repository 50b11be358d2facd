"""Links between namespaces: veth pairs, dual stack, and what pairs and bridge networks
(bridge.py) share.

Rule: every object here registers its undo when it acquires something (a lease, a namespace,
a link, a capture, a flapping helper) and `close()` undoes all of it, in reverse, whatever
failed. Links are never deleted one by one: they die with their namespace, in the background
(a synchronous veth delete costs 16 ms). Faults (faults.py) change links that exist.
"""

from __future__ import annotations

import errno
import os
import re
from typing import Any

from .. import syscalls as sc
from ..errors import SetupError, SpecError, UnsupportedError
from . import faults, leases
from .capture import Capture
from .endpoint import Endpoint, _Undo
from .impairment import Impairment
from .netns import Pod, create, entered, in_owner

_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def _want_pod(rootless: bool | None) -> bool:
    return not sc.host_root() if rootless is None else rootless


def _dual_stack(nl, ifname: str, subnet: leases.Subnet, i: int, ipv6: bool | None
                ) -> str | None:
    """Give ifname the subnet's i-th IPv4 address and, unless ipv6 is False, its i-th IPv6
    one; None for IPv6 where the kernel has none and ipv6 was not asked for (True)."""
    from . import netlink

    netlink.add_address(nl, ifname, subnet.host(i), subnet.prefixlen)
    if ipv6 is False:
        return None
    try:
        netlink.add_address(nl, ifname, subnet.host6(i), 64)
    except SetupError as e:
        if e.errno not in (errno.EAFNOSUPPORT, errno.EACCES, errno.EPERM) or ipv6:
            raise
        return None  # IPv6 disabled here: IPv4 only, as ipv6=None allows
    return subnet.host6(i)


class _Faults(_Undo):
    """What VethPair and Network share: captures and flaps stopped at close. `capture_dir`:
    where captures without a path go (the fixtures set it; their files are kept only for a
    failed test, and named in its report)."""

    capture_dir: str | None = None

    def _capture(self, end: Endpoint, path: str | None) -> Capture:
        if path is None and self.capture_dir is not None:
            os.makedirs(self.capture_dir, exist_ok=True)
        cap = Capture(end, path, directory=self.capture_dir)
        self._push(cap.close)
        self.captures.append(cap)
        return cap

    @property
    def captures(self) -> list[Capture]:
        if "_captures" not in self.__dict__:
            self._captures: list[Capture] = []
        return self._captures

    def _flap(self, end: Endpoint, seconds: float, period: float) -> faults.Flap:
        flap = faults.Flap(end, seconds, period)
        self._push(flap.stop)
        return flap


class VethPair(_Faults):
    """Two network namespaces, `a` and `b`, joined by one veth link (eth0 on both sides),
    with an IPv4 and (unless ipv6=False) an IPv6 address each."""

    def __init__(self, rootless: bool | None = None, ipv6: bool | None = None) -> None:
        super().__init__()
        self.partitioned = False
        try:
            self._build(rootless, ipv6)
        except BaseException:
            self.close()
            raise

    def _build(self, rootless: bool | None, ipv6: bool | None) -> None:
        from . import netlink

        pod = Pod() if _want_pod(rootless) else None
        if pod is not None:
            self._push(pod.close)
        self.subnet = leases.allocate(2)
        self._push(lambda: leases.release(self.subnet))
        a_ns, b_ns = create(("a", "b"), pod)
        self._push(a_ns.close)
        self._push(b_ns.close)
        subnet = self.subnet
        a_fd, b_fd = a_ns._fd(), b_ns._fd()

        def wire() -> tuple[Any, list[int]]:
            with entered(a_fd), netlink.Rtnl() as nl:
                netlink.add_veth(nl, "eth0", "eth0", b_fd)
                a6 = _dual_stack(nl, "eth0", subnet, 0, ipv6)
            with entered(b_fd), netlink.Rtnl() as nl:
                netlink.set_up(nl, "eth0")
                b6 = _dual_stack(nl, "eth0", subnet, 1, ipv6)
            return [a6, b6], []

        (a6, b6), _ = in_owner(pod, wire)
        plen, plen6 = subnet.prefixlen, 64 if a6 else None
        self.a = Endpoint(a_ns, "eth0", subnet.host(0), plen, "a", a6, plen6)
        self.b = Endpoint(b_ns, "eth0", subnet.host(1), plen, "b", b6, plen6)

    def impair(self, a_to_b: dict | None = None, b_to_a: dict | None = None,
               **kw: Any) -> Impairment:
        """The same impairment on both ends (a round trip pays a delay twice), or one per
        direction: `impair(a_to_b={"delay": "50ms"}, b_to_a={"loss": 0.1})` (a direction not
        given is cleared). Returns what a now sends with."""
        if a_to_b is None and b_to_a is None:
            imp = self.a.impair(**kw)
            self.b.impair(**kw)
            return imp
        if kw:
            raise SpecError(next(iter(kw)), kw[next(iter(kw))], "either both ways (keywords) "
                            "or per direction (a_to_b=, b_to_a=), not both")
        for name, value in (("a_to_b", a_to_b), ("b_to_a", b_to_a)):
            if value is not None and not isinstance(value, dict):
                raise SpecError(name, value, 'a dict of impairments, e.g. {"delay": "50ms"}')
        Impairment.parse(**(a_to_b or {}))  # both checked before either end changes
        Impairment.parse(**(b_to_a or {}))
        imp = self.a.impair(**(a_to_b or {}))
        self.b.impair(**(b_to_a or {}))
        return imp

    def clear(self) -> None:
        self.a.clear()
        self.b.clear()

    def partition(self) -> None:
        """Cut the link both ways without deleting it: connects time out, datagrams vanish."""
        faults.cut(self.a, [self.b])
        faults.cut(self.b, [self.a])
        self.partitioned = True

    def heal(self) -> None:
        """Undo partition(): the ends find each other again (ARP, neighbour discovery)."""
        faults.cut(self.a, [self.b], undo=True)
        faults.cut(self.b, [self.a], undo=True)
        self.partitioned = False

    def link_down(self) -> None:
        """a's eth0 down: b's loses its carrier; sends fail at once (ENETUNREACH)."""
        faults.set_link(self.a, up=False)

    def link_up(self) -> None:
        faults.set_link(self.a, up=True)

    def flap(self, seconds: float, period: float = 0.2) -> faults.Flap:
        """The link down and up every period/2 for `seconds`, in the background; up after."""
        return self._flap(self.a, seconds, period)

    def set_mtu(self, mtu: int) -> None:
        faults.set_mtu(self.a, mtu)
        faults.set_mtu(self.b, mtu)

    def capture(self, end: str = "a", path: str | None = None) -> Capture:
        """Record what crosses end "a" or "b" (both directions) into a pcap file."""
        if end not in ("a", "b"):
            raise SpecError("end", end, '"a" or "b"')
        return self._capture(self.a if end == "a" else self.b, path)

    def __repr__(self) -> str:
        return f"<VethPair {self.subnet}: a={self.a.ip} b={self.b.ip}>"


_netem: list[str | None] = []


def probe_netem() -> str | None:
    """None when this kernel applies netem, else the reason (cached per process)."""
    if not _netem:
        try:
            with VethPair() as pair:
                pair.a.impair(delay="1ms")
            _netem.append(None)
        except UnsupportedError as e:
            _netem.append(f"{e.what}: {e.why}")
        except Exception as e:  # cannot even build the pair: report that instead
            _netem.append(f"netem: cannot test it here: {e}")
    return _netem[0]
