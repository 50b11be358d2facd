"""Packet capture on one end of a link: an AF_PACKET socket, a pcap file, no tcpdump.

Rule: the socket is bound to the interface before `start` returns, so nothing sent after it is
missed; `stop` drains what the socket holds before closing it, so `packets()` after `stop`
is everything. Timestamps are the kernel's (SO_TIMESTAMPNS). The pcap encoding is pure and
has its own unit test.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import tempfile
import threading
from dataclasses import dataclass

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35
LINKTYPE_ETHERNET = 1
PCAP_MAGIC_NS = 0xA1B23C4D  # nanosecond timestamps
_GLOBAL = struct.Struct("=IHHiIII")
_RECORD = struct.Struct("=IIII")
_TIMESPEC = struct.Struct("=qq")


@dataclass(frozen=True)
class Packet:
    """One frame: kernel time (seconds), the bytes from the Ethernet header on, and whether
    this end sent it."""

    time: float
    data: bytes
    outgoing: bool = False

    def summary(self) -> str:
        """'TCP 198.18.0.1:40000 > 198.18.0.2:80 [S]'-like text, or the ethertype."""
        if len(self.data) < 14:
            return f"short frame ({len(self.data)} bytes)"
        kind = struct.unpack_from("!H", self.data, 12)[0]
        body = self.data[14:]
        if kind == 0x0800 and len(body) >= 20:
            ihl = (body[0] & 0x0F) * 4
            proto, src, dst = body[9], socket.inet_ntoa(body[12:16]), socket.inet_ntoa(body[16:20])
            return _l4(proto, src, dst, body[ihl:])
        if kind == 0x86DD and len(body) >= 40:
            proto = body[6]
            src = socket.inet_ntop(socket.AF_INET6, body[8:24])
            dst = socket.inet_ntop(socket.AF_INET6, body[24:40])
            return _l4(proto, f"[{src}]", f"[{dst}]", body[40:])
        if kind == 0x0806:
            return "ARP"
        return f"ethertype {kind:#06x}"

    @property
    def tcp_flags(self) -> str:
        """The TCP flags as letters ('S', 'SA', 'FA', ...), or '' when it is not TCP."""
        text = self.summary()
        return text[text.rindex("[") + 1:-1] if text.startswith("TCP ") else ""


_FLAGS = "FSRPAU"


def _l4(proto: int, src: str, dst: str, seg: bytes) -> str:
    if proto in (6, 17) and len(seg) >= 4:
        sport, dport = struct.unpack_from("!HH", seg)
        if proto == 17:
            return f"UDP {src}:{sport} > {dst}:{dport}"
        flags = seg[13] if len(seg) > 13 else 0
        letters = "".join(c for i, c in enumerate(_FLAGS) if flags >> i & 1)
        return f"TCP {src}:{sport} > {dst}:{dport} [{letters}]"
    if proto in (1, 58):
        return f"ICMP{'v6' if proto == 58 else ''} {src} > {dst}"
    if proto == 0:
        return f"IPv6 hop-by-hop (MLD) {src} > {dst}"
    return f"IP proto {proto} {src} > {dst}"


def pcap_header(snaplen: int) -> bytes:
    return _GLOBAL.pack(PCAP_MAGIC_NS, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET)


def pcap_record(packet: Packet, snaplen: int) -> bytes:
    sec = int(packet.time)
    nsec = min(round((packet.time - sec) * 1e9), 999_999_999)
    data = packet.data[:snaplen]
    return _RECORD.pack(sec, nsec, len(data), len(packet.data)) + data


def read_pcap(path: str) -> list[Packet]:
    """The packets of a pcap file written here (nanosecond or microsecond timestamps)."""
    with open(path, "rb") as f:
        raw = f.read()
    magic = struct.unpack_from("=I", raw)[0]
    if magic not in (PCAP_MAGIC_NS, 0xA1B2C3D4):
        raise ValueError(f"{path}: not a pcap file of this machine's byte order")
    scale = 1e-9 if magic == PCAP_MAGIC_NS else 1e-6
    out, offset = [], _GLOBAL.size
    while offset + _RECORD.size <= len(raw):
        sec, frac, incl, _orig = _RECORD.unpack_from(raw, offset)
        offset += _RECORD.size
        out.append(Packet(sec + frac * scale, raw[offset:offset + incl]))
        offset += incl
    return out


class Capture:
    """Frames seen on `end` (both directions), written to `path` as pcap while they come.

    `path=None`: a new file in `directory` (default: the system's temporary directory),
    deleted by `close()` unless `keep` (default: kept when a path was given). A context
    manager: `with pair.capture("a") as cap: ...; cap.packets()`."""

    def __init__(self, end, path: str | None = None, snaplen: int = 65535,
                 keep: bool | None = None, directory: str | None = None) -> None:
        self.end, self.snaplen = end, snaplen
        if keep is None:
            keep = path is not None
        if path is None:
            fd, path = tempfile.mkstemp(prefix=f"{end.name.replace(':', '-')}-", suffix=".pcap",
                                        dir=directory)
            os.close(fd)
        self.path, self.keep = path, keep
        self._packets: list[Packet] = []
        self._lock = threading.Lock()
        self._sock = end.ns.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self._sock.bind((end.ifname, ETH_P_ALL))
            self._file = open(path, "wb")  # noqa: SIM115 - closed by stop()
        except BaseException:
            self._sock.close()
            raise
        self._file.write(pcap_header(snaplen))
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._loop, name=f"capture {end.name}",
                                        daemon=True)
        self._thread.start()

    def _read_one(self) -> bool:
        try:
            data, anc, _, addr = self._sock.recvmsg(self.snaplen, 64, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        when = 0.0
        for level, kind, value in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = _TIMESPEC.unpack_from(value)
                when = sec + nsec / 1e9
        packet = Packet(when, data, addr[2] == PACKET_OUTGOING)
        with self._lock:
            self._packets.append(packet)
            self._file.write(pcap_record(packet, self.snaplen))
        return True

    def _loop(self) -> None:
        while True:
            ready = select.select([self._sock, self._wake_r], [], [])[0]
            if self._wake_r in ready:
                return
            while self._read_one():
                pass

    def stop(self) -> list[Packet]:
        """Stop capturing (what the socket holds is read first); the packets."""
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join()
            self._thread = None
            while self._read_one():
                pass
            self._sock.close()
            self._file.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
        return self.packets()

    def packets(self) -> list[Packet]:
        with self._lock:
            return list(self._packets)

    def close(self) -> None:
        self.stop()
        if not self.keep:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"<Capture {self.end.name} {self.end.ifname}: {len(self._packets)} packets, "
                f"{self.path}>")
