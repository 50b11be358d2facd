"""Links between namespaces: veth pairs, bridge networks, and a container's link to the host.

Rule: every object here registers its undo when it acquires something (a lease, a namespace,
a link) and `close()` undoes all of it, in reverse, whatever failed. Links are never deleted
one by one: they die with their namespace, in the background (a synchronous veth delete costs
16 ms). The host side of a container link is the one exception: it lives in the host's
namespace, so it dies with its peer's namespace, which the container holds.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

from .. import syscalls as sc
from ..errors import SetupError, SpecError, UnsupportedError
from ..host.state import PREFIX, ensure_owner_lock, owner_alive
from . import leases
from .impairment import Impairment
from .netns import NetNamespace, Pod, create, entered, in_owner

_counter = itertools.count()


class Endpoint:
    """One end of a link: a namespace, the interface in it, and its address.

    `with end:` moves the current thread into its namespace (root); `socket`, `run` and
    `spawn` act inside it (root and rootless); `impair(...)` shapes what it sends.
    """

    def __init__(self, ns: NetNamespace, ifname: str, ip: str | None, prefixlen: int | None,
                 name: str) -> None:
        self.ns = ns
        self.ifname = ifname
        self.ip = ip
        self.prefixlen = prefixlen
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

    def __repr__(self) -> str:
        return f"<Endpoint {self.name} {self.ifname} {self.ip}/{self.prefixlen}>"


def _apply(ns: NetNamespace, ifname: str, imp: Impairment, previous: Impairment) -> None:
    from . import netlink

    fd = ns._fd()

    def apply() -> tuple[Any, list[int]]:
        with entered(fd), netlink.Rtnl() as nl:
            netlink.set_qdisc(nl, ifname, imp, previous)
        return None, []

    in_owner(ns.pod, apply)


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


def _want_pod(rootless: bool | None) -> bool:
    return not sc.host_root() if rootless is None else rootless


class VethPair(_Undo):
    """Two network namespaces, `a` and `b`, joined by one veth link (eth0 on both sides)."""

    def __init__(self, rootless: bool | None = None) -> None:
        super().__init__()
        try:
            self._build(rootless)
        except BaseException:
            self.close()
            raise

    def _build(self, rootless: bool | None) -> None:
        from . import netlink

        pod = Pod() if _want_pod(rootless) else None
        if pod is not None:
            self._push(pod.close)
        self.subnet = leases.allocate(2)
        self._push(lambda: leases.release(self.subnet))
        a_ns, b_ns = create(("a", "b"), pod)
        self._push(a_ns.close)
        self._push(b_ns.close)
        plen = self.subnet.prefixlen
        a_ip, b_ip = self.subnet.host(0), self.subnet.host(1)
        a_fd, b_fd = a_ns._fd(), b_ns._fd()

        def wire() -> tuple[Any, list[int]]:
            with entered(a_fd), netlink.Rtnl() as nl:
                netlink.add_veth(nl, "eth0", "eth0", b_fd)
                netlink.add_address(nl, "eth0", a_ip, plen)
            with entered(b_fd), netlink.Rtnl() as nl:
                netlink.set_up(nl, "eth0")
                netlink.add_address(nl, "eth0", b_ip, plen)
            return None, []

        in_owner(pod, wire)
        self.a = Endpoint(a_ns, "eth0", a_ip, plen, "a")
        self.b = Endpoint(b_ns, "eth0", b_ip, plen, "b")

    def impair(self, **kw: Any) -> Impairment:
        """The same impairment on both ends (a round trip pays a delay twice)."""
        imp = self.a.impair(**kw)
        self.b.impair(**kw)
        return imp

    def clear(self) -> None:
        self.a.clear()
        self.b.clear()

    def __repr__(self) -> str:
        return f"<VethPair {self.subnet}: a={self.a.ip} b={self.b.ip}>"


class Network(_Undo):
    """A bridge (in a namespace of its own) and N member namespaces, each joined to it by a
    veth, with addresses from one leased subnet. Members are `net[0]`, `net[1]`, ..."""

    def __init__(self, members: int, rootless: bool | None = None) -> None:
        super().__init__()
        if not isinstance(members, int) or isinstance(members, bool) or not 1 <= members <= 250:
            raise SpecError("members", members, "a whole number from 1 to 250")
        try:
            self._build(members, rootless)
        except BaseException:
            self.close()
            raise

    def _build(self, n: int, rootless: bool | None) -> None:
        from . import netlink

        pod = Pod() if _want_pod(rootless) else None
        if pod is not None:
            self._push(pod.close)
        self.subnet = leases.allocate(n)
        self._push(lambda: leases.release(self.subnet))
        names = [f"m{i}" for i in range(n)]
        spaces = create(["bridge", *names], pod)
        for ns in spaces:
            self._push(ns.close)
        self.hub = spaces[0]
        plen = self.subnet.prefixlen
        ips = [self.subnet.host(i) for i in range(n)]
        fds = [ns._fd() for ns in spaces]

        def wire() -> tuple[Any, list[int]]:
            with entered(fds[0]), netlink.Rtnl() as nl:
                netlink.add_bridge(nl, "br0")
                for i in range(n):
                    netlink.add_veth(nl, f"port{i}", "eth0", fds[i + 1])
                    netlink.set_master(nl, f"port{i}", "br0")
            for i in range(n):
                with entered(fds[i + 1]), netlink.Rtnl() as nl:
                    netlink.set_up(nl, "eth0")
                    netlink.add_address(nl, "eth0", ips[i], plen)
            return None, []

        in_owner(pod, wire)
        self.members = [Endpoint(ns, "eth0", ip, plen, ns.name)
                        for ns, ip in zip(spaces[1:], ips, strict=True)]
        self.ports = [Endpoint(self.hub, f"port{i}", None, None, f"bridge:port{i}")
                      for i in range(n)]

    def __getitem__(self, i: int) -> Endpoint:
        return self.members[i]

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self):
        return iter(self.members)

    def _member(self, target: Endpoint | int) -> int:
        if isinstance(target, int) and not isinstance(target, bool):
            if not 0 <= target < len(self.members):
                raise SpecError("member", target, f"an index from 0 to {len(self.members) - 1}")
            return target
        for i, m in enumerate(self.members):
            if m is target:
                return i
        raise SpecError("member", target, "a member of this network (net[i]) or its index")

    def impair(self, target: Endpoint | int, **kw: Any) -> Impairment:
        """Impair a member's link both ways: its own egress and the bridge port's egress
        towards it. A round trip to it pays a delay twice."""
        i = self._member(target)
        imp = self.members[i].impair(**kw)
        self.ports[i].impair(**kw)
        return imp

    def clear(self, target: Endpoint | int | None = None) -> None:
        for i in range(len(self.members)) if target is None else [self._member(target)]:
            self.members[i].clear()
            self.ports[i].clear()

    def __repr__(self) -> str:
        return f"<Network {self.subnet}: {', '.join(m.ip or '' for m in self.members)}>"


def host_link_name(pid: int, n: int) -> str:
    """`pti<pid hex>x<n hex>`: at most 15 bytes (IFNAMSIZ), owner readable from the name."""
    return f"{PREFIX}{pid:x}x{n % 0x100000:x}"


def _owner_of(ifname: str) -> int | None:
    rest = ifname[len(PREFIX):] if ifname.startswith(PREFIX) else ""
    pid, sep, n = rest.partition("x")
    try:
        int(n, 16)
        return int(pid, 16) if sep else None
    except ValueError:
        return None


class HostLink(_Undo):
    """A container's network namespace with eth0 linked to the host by a veth (root only).

    eth0 gets the second address of a leased /30, the host side the first; the default
    route goes via the host side, and the host does not forward what arrives on that link,
    so the container reaches the host and nothing beyond it."""

    def __init__(self) -> None:
        super().__init__()
        if not sc.host_root():
            raise UnsupportedError(
                "network='veth'", "a veth link to the host's network namespace needs root "
                "there, and without root a container's namespaces belong to its own user "
                "namespace", "run as root, or link namespaces to each other instead (the "
                "veth_pair and network fixtures work rootless)")
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        from . import netlink

        ensure_owner_lock()  # the link's name carries our pid: a dead run's links are found
        self.subnet = leases.allocate(2)
        self._push(lambda: leases.release(self.subnet))
        (self.ns,) = create(("container",))
        self._push(self.ns.close)
        self.host_ifname = host_link_name(os.getpid(), next(_counter))
        self.host_ip, self.ip = self.subnet.host(0), self.subnet.host(1)
        plen = self.subnet.prefixlen
        with netlink.Rtnl() as nl:
            try:
                netlink.add_veth(nl, self.host_ifname, "eth0", self.ns._fd())
            except SetupError as e:
                if e.errno != errno.EEXIST:  # a dead run with our pid left it: remove, retry
                    raise
                netlink.delete_link(nl, self.host_ifname)
                netlink.add_veth(nl, self.host_ifname, "eth0", self.ns._fd())
            _no_forwarding(self.host_ifname)
            netlink.add_address(nl, self.host_ifname, self.host_ip, plen)
        with entered(self.ns._fd()), netlink.Rtnl() as nl:
            netlink.set_up(nl, "eth0")
            netlink.add_address(nl, "eth0", self.ip, plen)
            netlink.add_default_route(nl, self.host_ip)

    @property
    def fd(self) -> int:
        return self.ns._fd()


def _no_forwarding(ifname: str) -> None:
    """Packets from the container are not routed beyond the host (per-interface switch, so
    the host's own forwarding setting is left alone)."""
    for path in (f"/proc/sys/net/ipv4/conf/{ifname}/forwarding",
                 f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"):
        with contextlib.suppress(FileNotFoundError), open(path, "w") as f:
            f.write("0" if "ipv4" in path else "1")


def remove_stale(pid: int) -> list[str]:
    """host/state.py cleaner: host-side links a dead owner left in this network namespace."""
    try:
        names = os.listdir("/sys/class/net")
    except OSError:
        return []
    stale = [n for n in names if _owner_of(n) == pid and not owner_alive(pid)]
    if not stale:
        return []
    from . import netlink

    removed = []
    with netlink.Rtnl() as nl:
        for name in stale:
            with contextlib.suppress(SetupError):
                netlink.delete_link(nl, name)
                removed.append(f"link {name}")
    return removed


def stale_owners() -> set[int]:
    with contextlib.suppress(OSError):
        return {p for n in os.listdir("/sys/class/net") if (p := _owner_of(n)) is not None}
    return set()


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
