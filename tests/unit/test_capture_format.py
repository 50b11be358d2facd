"""pcap encoding and frame summaries (pure), and the IPv6 /64 of each leased IPv4 subnet."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from pytest_isolate.runtime import SpecError
from pytest_isolate.runtime.network import leases
from pytest_isolate.runtime.network.capture import (
    Packet,
    pcap_header,
    pcap_record,
    read_pcap,
)

MACS = bytes(6) + bytes.fromhex("020000000001")


def _tcp_syn(src: str, dst: str, sport: int, dport: int) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, socket.inet_aton(src),
                     socket.inet_aton(dst))
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, 0x02, 1024, 0, 0)
    return MACS + b"\x08\x00" + ip + tcp


def test_a_pcap_written_here_reads_back_with_nanoseconds(tmp_path):
    packets = [Packet(1700000000.123456789, _tcp_syn("10.0.0.1", "10.0.0.2", 4000, 80)),
               Packet(1700000001.5, MACS + b"\x08\x06" + bytes(28))]
    path = tmp_path / "x.pcap"
    path.write_bytes(pcap_header(65535) + b"".join(pcap_record(p, 65535) for p in packets))
    back = read_pcap(str(path))
    assert [p.data for p in back] == [p.data for p in packets]
    assert abs(back[0].time - packets[0].time) < 1e-6
    magic, major, minor, _, _, snaplen, linktype = struct.unpack_from("=IHHiIII",
                                                                      path.read_bytes())
    assert (magic, major, minor, snaplen, linktype) == (0xA1B23C4D, 2, 4, 65535, 1)


def test_a_record_is_cut_at_the_snaplen_but_keeps_the_original_length():
    record = pcap_record(Packet(1.0, bytes(100)), 60)
    _, _, incl, orig = struct.unpack_from("=IIII", record)
    assert (incl, orig, len(record)) == (60, 100, 16 + 60)


def test_summaries_name_protocols_addresses_ports_and_tcp_flags():
    syn = Packet(0, _tcp_syn("198.18.0.1", "198.18.0.2", 40000, 80))
    assert syn.summary() == "TCP 198.18.0.1:40000 > 198.18.0.2:80 [S]"
    assert syn.tcp_flags == "S"
    assert Packet(0, MACS + b"\x08\x06" + bytes(28)).summary() == "ARP"
    addrs = b"".join(socket.inet_pton(socket.AF_INET6, a) for a in ("fd00::1", "fd00::2"))
    v6 = (MACS + b"\x86\xdd" + struct.pack("!IHBB", 0x60000000, 8, 17, 64) + addrs
          + struct.pack("!HHHH", 53, 5353, 8, 0))
    assert Packet(0, v6).summary() == "UDP [fd00::1]:53 > [fd00::2]:5353"
    assert Packet(0, b"\x00").summary().startswith("short frame")
    assert Packet(0, MACS + b"\x88\xcc").summary() == "ethertype 0x88cc"


def test_each_leased_ipv4_subnet_has_its_own_ipv6_slash_64():
    a = leases.network6_for(ipaddress.IPv4Network("198.18.0.0/30"))
    b = leases.network6_for(ipaddress.IPv4Network("198.18.0.4/30"))
    c = leases.network6_for(ipaddress.IPv4Network("198.19.255.252/30"))
    assert len({a, b, c}) == 3 and all(n.prefixlen == 64 for n in (a, b, c))
    assert all(n.subnet_of(ipaddress.IPv6Network(leases.DEFAULT_POOL6)) for n in (a, b, c))
    assert leases.Subnet(ipaddress.IPv4Network("198.18.0.4/30")).host6(1) == str(
        b.network_address + 2)


def test_the_ipv6_pool_must_be_unique_local_and_big_enough(monkeypatch):
    with pytest.raises(SpecError, match="unique local"):
        leases.parse_pool6("2001:db8::/48")
    with pytest.raises(SpecError, match="an IPv6 network"):
        leases.parse_pool6("fd00::1/48")
    monkeypatch.setattr(leases, "_pool6", leases.parse_pool6("fd00::/62"))
    with pytest.raises(SpecError, match="room for a /64"):
        leases.network6_for(ipaddress.IPv4Network("198.18.0.16/30"))  # the 5th /30


def _messages(batch: bytes) -> list[tuple[int, int, int, bytes]]:
    out, offset = [], 0
    while offset < len(batch):
        length, kind, flags, seq, _ = struct.unpack_from("=IHHII", batch, offset)
        out.append((kind, flags, seq, batch[offset + 16:offset + length]))
        offset += length
    return out


def test_the_masquerade_batch_is_one_table_one_nat_chain_one_rule_between_begin_and_end():
    from pytest_isolate.runtime.network import nftables

    batch, acks = nftables.masquerade_batch("up0", seq=10)
    msgs = _messages(batch)
    sub = nftables.NFNL_SUBSYS_NFTABLES << 8
    assert [m[0] for m in msgs] == [nftables.NFNL_MSG_BATCH_BEGIN, sub | 0, sub | 3, sub | 6,
                                    nftables.NFNL_MSG_BATCH_END]
    assert [m[2] for m in msgs] == [10, 11, 12, 13, 14] and acks == [11, 12, 13]
    assert all(m[1] & nftables.NLM_F_ACK for m in msgs[1:4])
    family, version, res = struct.unpack_from("=BBH", msgs[0][3])
    assert (family, version, socket.ntohs(res)) == (0, 0, nftables.NFNL_SUBSYS_NFTABLES)
    chain, rule = msgs[2][3], msgs[3][3]
    assert chain[0] == nftables.NFPROTO_IPV4 and b"nat\0" in chain and b"pti_nat\0" in chain
    assert struct.pack("!I", nftables.NF_INET_POST_ROUTING) in chain
    assert b"up0".ljust(16, b"\0") in rule and b"masq\0" in rule and b"meta\0" in rule
    assert all(len(m[3]) % 4 == 0 for m in msgs)  # every attribute padded to 4 bytes
    with pytest.raises(ValueError):
        nftables.masquerade_batch("x" * 16)
