"""One nftables rule over NETLINK_NETFILTER: masquerade what leaves by one interface.

Rule: the encoding is pure (`masquerade_batch`, unit-tested byte for byte against the
attribute layout of linux/netfilter/nf_tables.h); `apply` sends it in the calling thread's
network namespace, which must be one of ours (a router's): nothing here touches the host's
tables. No nft binary and no new dependency: a table, a nat chain at postrouting and a rule
`meta oifname <ifname> masquerade`, in one batch.
"""

from __future__ import annotations

import os
import socket
import struct

from ..errors import SetupError

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_NEWTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE = 0, 3, 6
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE = 0x1, 0x4, 0x400
NLA_F_NESTED = 0x8000
NF_INET_POST_ROUTING = 4
NFPROTO_IPV4 = 2
NFT_META_OIFNAME = 7
NFT_REG_1 = 1
NFT_CMP_EQ = 0
IFNAMSIZ = 16
TABLE, CHAIN = "pti_nat", "postrouting"
_NLMSG_ERROR = 2


def _attr(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _nest(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(attrs))


def _str(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def _be32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("!I", value))


def _msg(kind: int, seq: int, family: int, body: bytes, flags: int = 0,
         res_id: int = 0) -> bytes:
    payload = struct.pack("=BBH", family, 0, socket.htons(res_id)) + body
    return struct.pack("=IHHII", 16 + len(payload), kind, NLM_F_REQUEST | flags, seq, 0) + \
        payload


def _expr(name: str, *data: bytes) -> bytes:
    parts = [_str(1, name)]  # NFTA_EXPR_NAME
    if data:
        parts.append(_nest(2, *data))  # NFTA_EXPR_DATA
    return _nest(1, *parts)  # NFTA_LIST_ELEM


def masquerade_batch(ifname: str, seq: int = 1) -> tuple[bytes, list[int]]:
    """(the batch, the sequence numbers acknowledged) for: table ip pti_nat, chain
    postrouting (type nat, hook postrouting, priority 100), rule oifname ifname masquerade."""
    if not ifname or len(ifname.encode()) >= IFNAMSIZ:
        raise ValueError(f"an interface name of 1-15 bytes, not {ifname!r}")
    sub = NFNL_SUBSYS_NFTABLES << 8
    flags = NLM_F_CREATE | NLM_F_ACK
    table = _msg(sub | NFT_MSG_NEWTABLE, seq + 1, NFPROTO_IPV4, _str(1, TABLE), flags)
    chain = _msg(sub | NFT_MSG_NEWCHAIN, seq + 2, NFPROTO_IPV4, b"".join([
        _str(1, TABLE), _str(3, CHAIN),  # NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME
        _nest(4, _be32(1, NF_INET_POST_ROUTING), _be32(2, 100)),  # NFTA_CHAIN_HOOK
        _str(7, "nat"),  # NFTA_CHAIN_TYPE
    ]), flags)
    name = ifname.encode().ljust(IFNAMSIZ, b"\0")
    rule = _msg(sub | NFT_MSG_NEWRULE, seq + 3, NFPROTO_IPV4, b"".join([
        _str(1, TABLE), _str(2, CHAIN),  # NFTA_RULE_TABLE, NFTA_RULE_CHAIN
        _nest(4,  # NFTA_RULE_EXPRESSIONS
              _expr("meta", _be32(2, NFT_META_OIFNAME), _be32(1, NFT_REG_1)),
              _expr("cmp", _be32(1, NFT_REG_1), _be32(2, NFT_CMP_EQ),
                    _nest(3, _attr(1, name))),  # NFTA_CMP_DATA { NFTA_DATA_VALUE }
              _expr("masq")),
    ]), flags)
    begin = _msg(NFNL_MSG_BATCH_BEGIN, seq, socket.AF_UNSPEC, b"", res_id=NFNL_SUBSYS_NFTABLES)
    end = _msg(NFNL_MSG_BATCH_END, seq + 4, socket.AF_UNSPEC, b"", res_id=NFNL_SUBSYS_NFTABLES)
    return begin + table + chain + rule + end, [seq + 1, seq + 2, seq + 3]


def apply(ifname: str) -> None:
    """Masquerade what leaves this thread's network namespace by ifname."""
    batch, acks = masquerade_batch(ifname)
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             NETLINK_NETFILTER)
    except OSError as e:
        raise SetupError("nftables", ifname, e.errno, str(e),
                         "a kernel with CONFIG_NF_TABLES and CONFIG_NFT_MASQ") from None
    with sock:
        sock.bind((0, 0))
        sock.send(batch)
        waiting = set(acks)
        while waiting:
            data = sock.recv(65536)
            offset = 0
            while offset + 20 <= len(data):
                length, kind, _, seq, _, err = struct.unpack_from("=IHHIIi", data, offset)
                offset += max(length, 20)
                if kind == _NLMSG_ERROR:
                    if err:
                        raise SetupError("nftables", f"masquerade on {ifname}", -err,
                                         os.strerror(-err), "a kernel with CONFIG_NF_TABLES, "
                                         "CONFIG_NF_TABLES_IPV4, CONFIG_NFT_NAT and "
                                         "CONFIG_NFT_MASQ")
                    waiting.discard(seq)
