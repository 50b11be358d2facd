"""A container's link to the host: a veth from the host's network namespace (root only).

Rule: the host side is the one link of ours in the host's namespace; its name carries the
owner's pid (`pti<pid hex>x<n hex>`), so that what a dead run left is found and removed
(`remove_stale`, a host/state.py cleaner).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os

from .. import syscalls as sc
from ..errors import SetupError, UnsupportedError
from ..host.state import PREFIX, ensure_owner_lock, owner_alive
from . import leases
from .endpoint import _Undo
from .netns import create, entered

_counter = itertools.count()


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

    def __init__(self, ns=None, ifname: str = "eth0") -> None:
        """ns: a namespace of ours to link (a router's; kept open by its owner), else a new
        one for a container; ifname: the interface's name in it."""
        super().__init__()
        self._given, self.ifname = ns, ifname
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
        if self._given is not None:
            self.ns = self._given
        else:
            (self.ns,) = create(("container",))
            self._push(self.ns.close)
        ifname = self.ifname
        self.host_ifname = host_link_name(os.getpid(), next(_counter))
        self.host_ip, self.ip = self.subnet.host(0), self.subnet.host(1)
        plen = self.subnet.prefixlen
        with netlink.Rtnl() as nl:
            try:
                netlink.add_veth(nl, self.host_ifname, ifname, self.ns._fd())
            except SetupError as e:
                if e.errno != errno.EEXIST:  # a dead run with our pid left it: remove, retry
                    raise
                netlink.delete_link(nl, self.host_ifname)
                netlink.add_veth(nl, self.host_ifname, ifname, self.ns._fd())
            _no_forwarding(self.host_ifname)
            netlink.add_address(nl, self.host_ifname, self.host_ip, plen)
        with entered(self.ns._fd()), netlink.Rtnl() as nl:
            netlink.set_up(nl, ifname)
            netlink.add_address(nl, ifname, self.ip, plen)
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
