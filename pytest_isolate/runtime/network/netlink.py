"""rtnetlink requests, encoded with pyroute2's message classes, in the calling thread's netns.

Rule: every function acts in the network namespace the calling thread is in (the caller
enters it; see netns.py) and raises `SetupError` naming the step and the interface. Requests
go over a plain netlink socket (about 0.1 ms each; pyroute2's IPRoute object costs 1 ms to
open, a link lookup 1 ms more, and it may open its socket lazily, outside the namespace).
"""

from __future__ import annotations

import errno as _errno
import os
import socket
import struct

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink.rtnl import (
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_DELQDISC,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTM_NEWQDISC,
    RTM_NEWROUTE,
    TC_H_ROOT,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg
from pyroute2.netlink.rtnl.tcmsg import plugins as tc_plugins
from pyroute2.netlink.rtnl.tcmsg import tcmsg

from ..errors import SetupError, UnsupportedError
from .impairment import Impairment

_NLMSG_ERROR = 2
_IFF_UP = 1
_RT_TABLE_MAIN = 254
_RTPROT_STATIC = 4
_RT_SCOPE_UNIVERSE = 0
_RTN_UNICAST = 1
_IFA_F_NODAD = 0x02
_NUD_PERMANENT = 0x80
# A locally administered unicast address no interface has: frames sent to it reach the other
# side of the link and are dropped there as not its own (a partition without deleting links).
NOWHERE_MAC = "02:70:74:69:00:00"

NETEM_MISSING = UnsupportedError(
    "netem impairments (delay, jitter, loss, duplicate, reorder, corrupt)",
    "this kernel has no netem qdisc (module sch_netem, CONFIG_NET_SCH_NETEM)",
    "load it (modprobe sch_netem) or use a kernel built with CONFIG_NET_SCH_NETEM; a bare "
    "rate works without it (tbf); this project's UML lane has netem")


class Rtnl:
    """A NETLINK_ROUTE socket bound in the calling thread's network namespace."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        self.sock.bind((0, 0))
        self.seq = 0

    def request(self, msg, mtype: int, flags: int, step: str, target: str) -> None:
        self.seq += 1
        msg["header"]["type"] = mtype
        msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | flags
        msg["header"]["sequence_number"] = self.seq
        msg.encode()
        self.sock.send(msg.data)
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + 20 <= len(data):
                length, kind, _, seq, _, err = struct.unpack_from("=IHHIIi", data, offset)
                offset += max(length, 20)
                if kind == _NLMSG_ERROR and seq == self.seq:
                    if err:
                        raise SetupError(step, target, -err, os.strerror(-err))
                    return

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def index_of(ifname: str) -> int:
    try:
        return socket.if_nametoindex(ifname)
    except OSError as e:
        raise SetupError("find interface", ifname, e.errno or _errno.ENODEV,
                         "no such interface in this network namespace") from None


def add_veth(nl: Rtnl, name: str, peer: str, peer_netns_fd: int) -> None:
    """A veth pair: `name` here (up), `peer` created directly in the other namespace
    (moving a link later costs 22-33 ms of RCU grace periods)."""
    msg = ifinfmsg()
    msg["flags"] = msg["change"] = _IFF_UP
    peer_info = {"attrs": [("IFLA_IFNAME", peer), ("IFLA_NET_NS_FD", peer_netns_fd)]}
    msg["attrs"] = [("IFLA_IFNAME", name), ("IFLA_LINKINFO", {"attrs": [
        ("IFLA_INFO_KIND", "veth"),
        ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", peer_info)]})]})]
    nl.request(msg, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, "create veth", f"{name} <-> {peer}")


def add_bridge(nl: Rtnl, name: str) -> None:
    msg = ifinfmsg()
    msg["flags"] = msg["change"] = _IFF_UP
    msg["attrs"] = [("IFLA_IFNAME", name),
                    ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "bridge")]})]
    nl.request(msg, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, "create bridge", name)


def set_master(nl: Rtnl, ifname: str, master: str) -> None:
    msg = ifinfmsg()
    msg["index"] = index_of(ifname)
    msg["flags"] = msg["change"] = _IFF_UP
    msg["attrs"] = [("IFLA_MASTER", index_of(master))]
    nl.request(msg, RTM_NEWLINK, 0, "attach to bridge", f"{ifname} -> {master}")


def set_up(nl: Rtnl, ifname: str) -> None:
    msg = ifinfmsg()
    msg["index"] = index_of(ifname)
    msg["flags"] = msg["change"] = _IFF_UP
    nl.request(msg, RTM_NEWLINK, 0, "link up", ifname)


def delete_link(nl: Rtnl, ifname: str) -> None:
    msg = ifinfmsg()
    msg["index"] = index_of(ifname)
    nl.request(msg, RTM_DELLINK, 0, "delete link", ifname)


def set_link(nl: Rtnl, ifname: str, up: bool | None = None, mtu: int | None = None) -> None:
    """Set a link up or down (a veth's peer then loses its carrier too), and/or its MTU."""
    msg = ifinfmsg()
    msg["index"] = index_of(ifname)
    if up is not None:
        msg["flags"] = _IFF_UP if up else 0
        msg["change"] = _IFF_UP
    if mtu is not None:
        msg["attrs"] = [("IFLA_MTU", mtu)]
    what = ", ".join(x for x in ("up" if up else "down" if up is not None else "",
                                 f"mtu {mtu}" if mtu is not None else "") if x)
    nl.request(msg, RTM_NEWLINK, 0, "set link", f"{ifname} {what}")


def add_address(nl: Rtnl, ifname: str, address: str, prefixlen: int,
                replace: bool = False) -> None:
    """An IPv4 or IPv6 address (IPv6 without duplicate address detection: usable at once)."""
    msg = ifaddrmsg()
    v6 = ":" in address
    msg["family"] = socket.AF_INET6 if v6 else socket.AF_INET
    msg["prefixlen"] = prefixlen
    msg["index"] = index_of(ifname)
    msg["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address)]
    if v6:
        msg["flags"] = _IFA_F_NODAD
        msg["attrs"] = [("IFA_ADDRESS", address), ("IFA_FLAGS", _IFA_F_NODAD)]
    nl.request(msg, RTM_NEWADDR, NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL),
               "add address", f"{address}/{prefixlen} on {ifname}")


def set_neighbour(nl: Rtnl, ifname: str, address: str, lladdr: str | None) -> None:
    """A permanent neighbour entry for `address` (IPv4 or IPv6) on ifname, pointing at
    `lladdr`; None deletes ours, and the kernel resolves the address again."""
    msg = ndmsg()
    msg["family"] = socket.AF_INET6 if ":" in address else socket.AF_INET
    msg["ifindex"] = index_of(ifname)
    msg["state"] = _NUD_PERMANENT
    msg["attrs"] = [("NDA_DST", address)]
    if lladdr is None:
        try:
            nl.request(msg, RTM_DELNEIGH, 0, "delete neighbour", f"{address} on {ifname}")
        except SetupError as e:
            if e.errno != _errno.ENOENT:
                raise
        return
    msg["attrs"].append(("NDA_LLADDR", lladdr))
    nl.request(msg, RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, "set neighbour",
               f"{address} -> {lladdr} on {ifname}")


def add_default_route(nl: Rtnl, gateway: str) -> None:
    msg = rtmsg()
    msg["family"] = socket.AF_INET
    msg["table"] = _RT_TABLE_MAIN
    msg["proto"] = _RTPROT_STATIC
    msg["scope"] = _RT_SCOPE_UNIVERSE
    msg["type"] = _RTN_UNICAST
    msg["attrs"] = [("RTA_GATEWAY", gateway)]
    nl.request(msg, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, "add route", f"default via {gateway}")


def add_route(nl: Rtnl, destination: str, prefixlen: int, gateway: str) -> None:
    """A static route to destination/prefixlen (IPv4 or IPv6) via gateway."""
    msg = rtmsg()
    msg["family"] = socket.AF_INET6 if ":" in gateway else socket.AF_INET
    msg["dst_len"] = prefixlen
    msg["table"] = _RT_TABLE_MAIN
    msg["proto"] = _RTPROT_STATIC
    msg["scope"] = _RT_SCOPE_UNIVERSE
    msg["type"] = _RTN_UNICAST
    msg["attrs"] = [("RTA_DST", destination), ("RTA_GATEWAY", gateway)]
    nl.request(msg, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, "add route",
               f"{destination}/{prefixlen} via {gateway}")


def set_forwarding() -> None:
    """Route between interfaces, IPv4 and IPv6, in the calling thread's network namespace."""
    for path in ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"):
        try:
            with open(path, "w") as f:
                f.write("1")
        except FileNotFoundError:  # no IPv6 in this kernel
            continue
        except OSError as e:
            if e.errno in (_errno.EROFS, _errno.EACCES, _errno.EPERM):
                raise UnsupportedError(
                    "a router between networks here", f"{path} is read-only: IP forwarding "
                    "is a sysctl, and an isolated test's /proc/sys is read-only (the default "
                    "confinement)", "build routed networks in a test that is not isolated"
                ) from None
            raise SetupError("forwarding", path, e.errno, str(e)) from None


def _qdisc_msg(index: int, kind: str | None = None, params: dict | None = None):
    msg = tcmsg()
    msg["index"] = index
    msg["parent"] = TC_H_ROOT
    if kind is not None:
        msg["handle"] = 0x10000
        # pyroute2's tc plugins encode the options (netem's struct, tbf's rate table)
        msg["attrs"] = [("TCA_KIND", kind),
                        ("TCA_OPTIONS", tc_plugins[kind].get_parameters(params or {}))]
    return msg


def set_qdisc(nl: Rtnl, ifname: str, impairment: Impairment, previous: Impairment) -> None:
    """Replace the root qdisc of ifname's egress; an empty impairment removes it. `previous`
    is what was applied before: a qdisc of another kind is removed first (tc cannot change a
    qdisc's kind in place)."""
    index = index_of(ifname)
    if not previous.empty and (impairment.empty
                               or previous.qdisc()[0] != impairment.qdisc()[0]):
        try:
            nl.request(_qdisc_msg(index), RTM_DELQDISC, 0, "tc qdisc del", ifname)
        except SetupError as e:
            if e.errno not in (_errno.ENOENT, _errno.EINVAL):  # nothing was set: fine
                raise
    if impairment.empty:
        return
    kind, params = impairment.qdisc()
    try:
        nl.request(_qdisc_msg(index, kind, params), RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE,
                   f"tc qdisc replace {kind}", f"{ifname} ({impairment.describe()})")
    except SetupError as e:
        if kind == "netem" and e.errno in (_errno.ENOENT, _errno.EOPNOTSUPP):
            raise NETEM_MISSING from None
        raise
