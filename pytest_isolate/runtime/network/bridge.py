"""Bridge networks: a bridge in a namespace of its own and N member namespaces, dual stack,
with the faults, names and routers that span its members.

Rule: as topology.py's: every acquisition registers its undo, `close()` undoes all of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import SpecError
from . import faults, leases
from .capture import Capture
from .endpoint import Endpoint
from .impairment import Impairment
from .netns import Pod, create, entered, in_owner
from .topology import _HOSTNAME, _dual_stack, _Faults, _want_pod


class Network(_Faults):
    """A bridge (in a namespace of its own) and N member namespaces, each joined to it by a
    veth, with IPv4 and IPv6 addresses from one leased subnet. Members are `net[0]`, ..."""

    def __init__(self, members: int, rootless: bool | None = None,
                 ipv6: bool | None = None, names: Sequence[str] | None = None,
                 pod: Pod | None = None, spare: int = 2) -> None:
        super().__init__()
        if not isinstance(members, int) or isinstance(members, bool) or not 1 <= members <= 250:
            raise SpecError("members", members, "a whole number from 1 to 250")
        names = list(names) if names is not None else [f"m{i}" for i in range(members)]
        if len(names) != members or len(set(names)) != members or not all(
                isinstance(n, str) and _HOSTNAME.match(n) for n in names):
            raise SpecError("names", names, f"{members} distinct host names (letters, digits, "
                            "'-'), one a member")
        self.groups: list[list[int]] | None = None
        self.routers: list = []
        self.hosts_file: str | None = None
        self.used: set[int] = set()  # subnet.host(i) indices taken (members, a router)
        if not isinstance(spare, int) or isinstance(spare, bool) or spare < 0:
            raise SpecError("spare", spare, "a whole number of addresses >= 0")
        self.spare = spare
        try:
            self._build(members, rootless, ipv6, names, pod)
        except BaseException:
            self.close()
            raise

    def _build(self, n: int, rootless: bool | None, ipv6: bool | None, names: list[str],
               pod: Pod | None) -> None:
        from . import netlink

        if pod is None and _want_pod(rootless):
            pod = Pod()
            self._push(pod.close)
        self.pod = pod
        self.ipv6 = ipv6
        # room beyond the members: a router's address (the last), members attached later
        self.subnet = leases.allocate(n + self.spare)
        self._push(lambda: leases.release(self.subnet))
        spaces = create(["bridge", *names], pod)
        for ns in spaces:
            self._push(ns.close)
        self.hub = spaces[0]
        subnet = self.subnet
        fds = [ns._fd() for ns in spaces]

        def wire() -> tuple[Any, list[int]]:
            with entered(fds[0]), netlink.Rtnl() as nl:
                netlink.add_bridge(nl, "br0")
                for i in range(n):
                    netlink.add_veth(nl, f"port{i}", "eth0", fds[i + 1])
                    netlink.set_master(nl, f"port{i}", "br0")
            v6 = []
            for i in range(n):
                with entered(fds[i + 1]), netlink.Rtnl() as nl:
                    netlink.set_up(nl, "eth0")
                    v6.append(_dual_stack(nl, "eth0", subnet, i, ipv6))
            return v6, []

        v6, _ = in_owner(pod, wire)
        plen = subnet.prefixlen
        self.members = [Endpoint(ns, "eth0", subnet.host(i), plen, ns.name, v6[i],
                                 64 if v6[i] else None)
                        for i, ns in enumerate(spaces[1:])]
        self.ports = [Endpoint(self.hub, f"port{i}", None, None, f"bridge:port{i}")
                      for i in range(n)]
        self.used = set(range(n))
        from .routing import write_hosts

        write_hosts(self)

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

    def impair(self, target: Endpoint | int, outbound: dict | None = None,
               inbound: dict | None = None, **kw: Any) -> Impairment:
        """Impair a member's link both ways (its own egress and the bridge port's egress
        towards it: a round trip to it pays a delay twice), or per direction:
        `outbound=` what it sends, `inbound=` what it receives. Returns its outbound one."""
        i = self._member(target)
        if outbound is None and inbound is None:
            imp = self.members[i].impair(**kw)
            self.ports[i].impair(**kw)
            return imp
        if kw:
            raise SpecError(next(iter(kw)), kw[next(iter(kw))], "either both ways (keywords) "
                            "or per direction (outbound=, inbound=), not both")
        Impairment.parse(**(outbound or {}))
        Impairment.parse(**(inbound or {}))
        imp = self.members[i].impair(**(outbound or {}))
        self.ports[i].impair(**(inbound or {}))
        return imp

    def clear(self, target: Endpoint | int | None = None) -> None:
        for i in range(len(self.members)) if target is None else [self._member(target)]:
            self.members[i].clear()
            self.ports[i].clear()

    def partition(self, *groups) -> None:
        """Members reach only those of their own group: `net.partition([0], [1, 2])`; members
        in no group form one more. Replaces an earlier partition."""
        if not groups:
            raise SpecError("groups", groups, "at least one group of members, e.g. "
                            "partition([0], [1, 2])")
        seen: dict[int, int] = {}
        for g, group in enumerate(groups):
            if isinstance(group, (Endpoint, int)):
                group = [group]
            for m in group:
                i = self._member(m)
                if i in seen:
                    raise SpecError("groups", groups, f"each member in one group; member {i} "
                                    "is in two")
                seen[i] = g
        rest = len(groups)
        of = [seen.get(i, rest) for i in range(len(self.members))]
        self.heal()
        for i, me in enumerate(self.members):
            faults.cut(me, [m for j, m in enumerate(self.members) if of[j] != of[i]])
        self.groups = [[i for i in range(len(of)) if of[i] == g] for g in sorted(set(of))]

    def heal(self) -> None:
        """Undo partition(): every member reaches every other again."""
        if self.groups is None:
            return
        for i, me in enumerate(self.members):
            faults.cut(me, [m for j, m in enumerate(self.members) if j != i], undo=True)
        self.groups = None

    def link_down(self, target: Endpoint | int) -> None:
        faults.set_link(self.members[self._member(target)], up=False)

    def link_up(self, target: Endpoint | int) -> None:
        faults.set_link(self.members[self._member(target)], up=True)

    def flap(self, target: Endpoint | int, seconds: float, period: float = 0.2) -> faults.Flap:
        return self._flap(self.members[self._member(target)], seconds, period)

    def set_mtu(self, mtu: int) -> None:
        """Every member's eth0 and every bridge port."""
        for end in [*self.members, *self.ports]:
            faults.set_mtu(end, mtu)

    def capture(self, target: Endpoint | int, path: str | None = None) -> Capture:
        return self._capture(self.members[self._member(target)], path)

    @property
    def router_index(self) -> int:
        """The subnet address index a router takes here: the last one."""
        return self.subnet.capacity - 1

    def attach(self, name: str | None = None) -> Endpoint:
        """One more member: a namespace joined to the bridge, with the next free addresses,
        routes through this network's routers and its name in every member's hosts file.
        Its Endpoint is also what `Spec(network=...)` and `containers.start(network=...)`
        take, to put a container on the network (root)."""
        from . import netlink
        from .routing import write_hosts

        # the last address stays a router's
        i = next((k for k in range(self.router_index) if k not in self.used), None)
        if i is None:
            raise SpecError("attach", name, f"a free address in {self.subnet}: make the network "
                            "with room (Network(members, spare=...))")
        name = name or f"m{i}"
        if not _HOSTNAME.match(name) or name in {m.name for m in self.members}:
            raise SpecError("name", name, "a host name (letters, digits, '-') no member has")
        (ns,) = create((name,), self.pod)
        self._push(ns.close)
        hub, fd, subnet = self.hub._fd(), ns._fd(), self.subnet
        port, v6 = f"port{len(self.ports)}", self.members[0].ip6 is not None
        routes = [r for router in self.routers for r in router.routes_for(self)]

        def wire() -> tuple[Any, list[int]]:
            with entered(hub), netlink.Rtnl() as nl:
                netlink.add_veth(nl, port, "eth0", fd)
                netlink.set_master(nl, port, "br0")
            with entered(fd), netlink.Rtnl() as nl:
                netlink.set_up(nl, "eth0")
                ip6 = _dual_stack(nl, "eth0", subnet, i, None if v6 else False)
                for dst, plen, gw in routes:
                    if gw:
                        netlink.add_route(nl, dst, plen, gw)
            return ip6, []

        ip6, _ = in_owner(self.pod, wire)
        end = Endpoint(ns, "eth0", subnet.host(i), subnet.prefixlen, name, ip6,
                       64 if ip6 else None)
        self.used.add(i)
        self.members.append(end)
        self.ports.append(Endpoint(self.hub, port, None, None, f"bridge:{port}"))
        write_hosts(self)
        return end

    def route_to(self, *others: Network):
        """A routing.Router joining this network and `others` (closed with this one)."""
        from .routing import Router

        router = Router(self, *others)
        self._push(router.close)
        return router

    def uplink(self) -> str:
        """NAT to the host through this network's router (one is made if it has none; see
        routing.Router.uplink); returns the host side's address (root, IPv4)."""
        router = self.routers[0] if self.routers else self.route_to()
        return router.uplink()

    def address_of(self, name: str, ipv6: bool = False) -> str:
        """The address of the member called `name`, here or in a routed network."""
        from .routing import _joined

        for net in _joined(self):
            for m in net.members:
                if m.name == name:
                    if ipv6 and not m.ip6:
                        raise SpecError("ipv6", ipv6, f"a member with IPv6 ({name} has none)")
                    return m.ip6 if ipv6 else m.ip
        raise SpecError("name", name, "the name of a member: " + ", ".join(
            m.name for net in _joined(self) for m in net.members))

    def hosts(self) -> str:
        """/etc/hosts lines naming every member (and the members of routed networks)."""
        from .routing import hosts_text

        return hosts_text(self)

    def __repr__(self) -> str:
        return f"<Network {self.subnet}: {', '.join(m.ip or '' for m in self.members)}>"
