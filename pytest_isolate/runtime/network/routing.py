"""Between bridge networks: a router namespace, and the names members know each other by.

Rule: a Router joins networks that already exist (each keeps one spare address for it, see
bridge.Network) and adds, in every member, a route to each other network through it; it
undoes nothing by itself (its namespace, links and routes die with the namespaces). Names are
an /etc/hosts file per set of joined networks, bound over /etc/hosts for programs run in a
member (netns.NetNamespace.spawn/run) and for containers on the network.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from ..errors import SpecError, UnsupportedError
from .endpoint import Endpoint, _Undo
from .netns import create, entered, in_owner


def _joined(net) -> list:
    """The networks reachable from net through routers (net first)."""
    seen, todo = [net], [net]
    while todo:
        for router in todo.pop().routers:
            for other in router.networks:
                if other not in seen:
                    seen.append(other)
                    todo.append(other)
    return seen


def hosts_text(net) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    for n in _joined(net):
        for m in n.members:
            lines.append(f"{m.ip}\t{m.name}")
            if m.ip6:
                lines.append(f"{m.ip6}\t{m.name}")
    return "\n".join(lines) + "\n"


def write_hosts(net) -> None:
    """(Re)write the hosts file every network joined to `net` binds (one per group)."""
    text = hosts_text(net)
    for n in _joined(net):
        if n.hosts_file is None:
            fd, n.hosts_file = tempfile.mkstemp(prefix="pti-hosts-")
            os.close(fd)
            os.chmod(n.hosts_file, 0o644)
            n._push(lambda n=n: _remove(n))
        for m in n.members:  # members attached later too
            m.ns.hosts_file = n.hosts_file
        with open(n.hosts_file, "w") as f:
            f.write(text)


def _remove(net) -> None:
    if net.hosts_file is not None:
        try:
            os.unlink(net.hosts_file)
        except FileNotFoundError:
            pass
        net.hosts_file = None


class Router(_Undo):
    """A namespace with one port in each network's bridge (eth0, eth1, ...), each with that
    network's spare address, forwarding IPv4 and IPv6; every member gets a route to each
    other network through it."""

    def __init__(self, *networks) -> None:
        super().__init__()
        if not networks or len({id(n) for n in networks}) != len(networks):
            raise SpecError("networks", networks, "one or more different Network objects")
        pods = {id(n.pod) for n in networks}
        if len(pods) != 1:
            raise UnsupportedError(
                "a router between networks of different pods",
                "without root, links join only namespaces of one user namespace, and each "
                "of these networks was made in its own",
                "make them with one pod: the network fixture's networks share one, or pass "
                "pod= to Network")
        self.networks = list(networks)
        self.link = None  # uplink(): the HostLink to the host
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        for n in networks:
            n.routers.append(self)
            n.used.add(n.router_index)
        write_hosts(networks[0])

    def uplink(self) -> str:
        """NAT to the host (root): a veth from this router to the host's namespace (the host
        side named `pti<pid hex>x<n>`, a leased /30, no forwarding there), the router's and
        every member's default route through it, and a masquerade rule on it in the router's
        own namespace (nothing in the host's tables changes). Returns the host side's
        address: a server on the host bound to it (or to 0.0.0.0) is reachable from every
        member, and sees the router's address as the client's. IPv4 only."""
        if self.link is not None:
            return self.link.host_ip
        if self.networks[0].pod is not None:
            raise UnsupportedError(
                "NAT to the host", "a link into the host's network namespace needs root "
                "there, and these networks belong to a rootless pod", "run as root; "
                "rootless, serve from a member of the network instead")
        from . import netlink, nftables
        from .hostlink import HostLink

        self.link = HostLink(ns=self.ns, ifname="up0")
        self._push(self.link.close)
        with entered(self.ns._fd()):
            nftables.apply("up0")
        for net in self.networks:
            gw = self.ends[self.networks.index(net)].ip
            for m in net.members:
                with entered(m.ns._fd()), netlink.Rtnl() as nl:
                    netlink.add_default_route(nl, gw)
        return self.link.host_ip

    def routes_for(self, net) -> list[tuple[str, int, str]]:
        """(destination, prefix length, gateway) a member of `net` needs to reach the other
        networks (and, with an uplink, the host) through this router."""
        k = self.networks.index(net)
        gw4, gw6 = self.ends[k].ip, self.ends[k].ip6
        out = [("0.0.0.0", 0, gw4)] if self.link is not None else []
        for other in self.networks:
            if other is net:
                continue
            n4 = other.subnet.network
            out.append((str(n4.network_address), n4.prefixlen, gw4))
            if gw6 and other.members[0].ip6:
                out.append((str(other.subnet.network6.network_address), 64, gw6))
        return out

    def _build(self) -> None:
        from . import netlink

        nets = self.networks
        pod = nets[0].pod
        (self.ns,) = create(("router",), pod)
        self._push(self.ns.close)
        me = self.ns._fd()
        for n in nets:
            if n.router_index in n.used:
                raise SpecError("networks", n, "a network with a free address for the router "
                                "(every address of its subnet is a member's)")
        # each network's last address: members take theirs from the first on (Network.attach)
        ips = [n.subnet.host(n.router_index) for n in nets]
        ip6s = [n.subnet.host6(n.router_index) if n.members[0].ip6 else None for n in nets]
        hubs = [n.hub._fd() for n in nets]
        port = f"rt{id(self) % 0xFFFF:x}"
        members = [[m.ns._fd() for m in n.members] for n in nets]

        def wire() -> tuple[Any, list[int]]:
            with entered(me), netlink.Rtnl() as nl:
                netlink.set_forwarding()
                for k, hub in enumerate(hubs):
                    netlink.add_veth(nl, f"eth{k}", port, hub)
                    netlink.add_address(nl, f"eth{k}", ips[k], nets[k].subnet.prefixlen)
                    if ip6s[k]:
                        netlink.add_address(nl, f"eth{k}", ip6s[k], 64)
            for hub in hubs:
                with entered(hub), netlink.Rtnl() as nl:
                    netlink.set_master(nl, port, "br0")
            for k, fds in enumerate(members):
                others = [j for j in range(len(nets)) if j != k]
                for fd in fds:
                    with entered(fd), netlink.Rtnl() as nl:
                        for j in others:
                            net4 = nets[j].subnet.network
                            netlink.add_route(nl, str(net4.network_address), net4.prefixlen,
                                              ips[k])
                            if ip6s[k] and ip6s[j]:
                                net6 = nets[j].subnet.network6
                                netlink.add_route(nl, str(net6.network_address), 64, ip6s[k])
            return None, []

        in_owner(pod, wire)
        self.ends = [Endpoint(self.ns, f"eth{k}", ips[k], nets[k].subnet.prefixlen,
                              f"router:eth{k}", ip6s[k], 64 if ip6s[k] else None)
                     for k in range(len(nets))]

    def __repr__(self) -> str:
        return f"<Router {', '.join(str(n.subnet) for n in self.networks)}>"
