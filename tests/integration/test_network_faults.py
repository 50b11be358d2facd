"""Faults and observation on real links: IPv6 beside IPv4, per-direction impairments,
partitions that heal, links down and flapping, MTU, packet capture, and nothing left after
hundreds of them. Runs as root and, in the rootless lane, as nobody (in a pod)."""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
from pathlib import Path

import pytest

from pytest_isolate.runtime import SpecError
from pytest_isolate.runtime.network import Network, VethPair, read_pcap
from tests.conftest import children, net_fds, require_netem
from tests.support.net import echo_server

SIOCGIFMTU = 0x8921


def _connect(end, host: str, port: int, timeout: float = 2.0,
             family: int = socket.AF_INET) -> socket.socket:
    c = end.socket(family)
    c.settimeout(timeout)
    try:
        c.connect((host, port))
    except OSError:
        c.close()
        raise
    return c


def _echo(c: socket.socket, data: bytes = b"ping") -> bytes:
    c.sendall(data)
    got = b""
    while len(got) < len(data):
        got += c.recv(65536)
    return got


def test_every_end_has_ipv6_beside_ipv4_and_tcp_works_over_both():
    with VethPair() as pair, Network(3) as net:
        assert pair.a.ip6 and pair.b.ip6 and pair.a.prefixlen6 == 64
        assert pair.subnet.network6.network_address.packed[:6] == bytes.fromhex("fd7074697465")
        srv, port = echo_server(pair.b, socket.AF_INET6)
        with _connect(pair.a, pair.b.ip6, port, family=socket.AF_INET6) as c:
            assert _echo(c) == b"ping"
        srv.close()
        srv, port = echo_server(net[2], socket.AF_INET6)
        with _connect(net[0], net[2].ip6, port, family=socket.AF_INET6) as c:
            assert _echo(c) == b"ping"
        srv.close()
    with VethPair(ipv6=False) as pair:
        assert pair.a.ip6 is None


TC = shutil.which("tc", path="/usr/sbin:/sbin:/usr/bin:/bin") or "tc"  # sbin: not on a user's PATH


def _qdisc(end) -> str:
    return end.run([TC, "qdisc", "show", "dev", end.ifname], check=True).stdout.decode()


def test_impairments_per_direction_are_applied_to_each_end_and_cleared():
    with VethPair() as pair:
        pair.impair(a_to_b={"rate": "8mbit"}, b_to_a={"rate": "20mbit"})
        assert "8Mbit" in _qdisc(pair.a) and "20Mbit" in _qdisc(pair.b)
        # what a sends is paced at 8 Mbit/s: 1 MB takes at least ~1 s (a lower bound only)
        srv = pair.b.socket()
        srv.bind((pair.b.ip, 0))
        srv.listen()
        got = []

        def sink() -> None:
            conn, _ = srv.accept()
            with conn:
                n = 0
                while data := conn.recv(1 << 16):
                    n += len(data)
                got.append(n)
        t = threading.Thread(target=sink)
        t.start()
        with _connect(pair.a, pair.b.ip, srv.getsockname()[1], timeout=10) as c:
            start = time.monotonic()
            c.sendall(b"x" * 1_000_000)
        t.join(10)
        assert got == [1_000_000] and time.monotonic() - start > 0.6
        srv.close()
        pair.impair(a_to_b={"rate": "4mbit"})  # b_to_a not given: cleared
        assert "4Mbit" in _qdisc(pair.a) and "tbf" not in _qdisc(pair.b)
        pair.clear()
        assert "tbf" not in _qdisc(pair.a) + _qdisc(pair.b)
        with pytest.raises(SpecError, match="not both"):
            pair.impair(a_to_b={"rate": "4mbit"}, rate="1mbit")
        with pytest.raises(SpecError, match="delay"):
            pair.impair(a_to_b={"delay": "soon"})
        assert "tbf" not in _qdisc(pair.a)  # nothing changed by a bad call


def _round_trip(c: socket.socket) -> float:
    times = []
    for _ in range(5):
        start = time.monotonic()
        _echo(c, b"r")
        times.append(time.monotonic() - start)
    return sorted(times)[2]


def test_a_delay_each_way_adds_to_the_round_trip_by_its_own_amount():
    require_netem()
    with VethPair() as pair:
        srv, port = echo_server(pair.b)
        with _connect(pair.a, pair.b.ip, port, timeout=5) as c:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair.impair(a_to_b={"delay": "100ms"})
            assert _round_trip(c) >= 0.1  # one way only: once
            pair.impair(a_to_b={"delay": "100ms"}, b_to_a={"delay": "60ms"})
            assert _round_trip(c) >= 0.16
            assert "delay 60ms" in _qdisc(pair.b) and "delay 100ms" in _qdisc(pair.a)
            pair.clear()
            assert _round_trip(c) < 0.1
        srv.close()


def test_a_partition_times_connects_out_and_heal_restores_them_and_open_connections():
    with VethPair() as pair:
        srv, port = echo_server(pair.b)
        kept = _connect(pair.a, pair.b.ip, port)
        udp_b = pair.b.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp_b.bind((pair.b.ip, 0))
        udp_b.settimeout(0.3)
        pair.partition()
        with pytest.raises(TimeoutError):
            _connect(pair.a, pair.b.ip, port, timeout=0.4)
        with pytest.raises(TimeoutError):
            _connect(pair.b, pair.a.ip6, 9, timeout=0.4, family=socket.AF_INET6)
        udp_a = pair.a.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp_a.sendto(b"lost", udp_b.getsockname())
        with pytest.raises(TimeoutError):
            udp_b.recv(10)
        pair.heal()
        assert _echo(kept, b"after") == b"after"  # the open connection lived through it
        with _connect(pair.a, pair.b.ip, port) as c:
            assert _echo(c) == b"ping"
        udp_a.sendto(b"seen", udp_b.getsockname())
        assert udp_b.recv(10) == b"seen"
        for s in (kept, udp_a, udp_b, srv):
            s.close()


def test_a_network_partition_splits_members_into_groups():
    with Network(3) as net:
        srv, port = echo_server(net[2])
        net.partition([0], [1, 2])
        assert net.groups == [[0], [1, 2]]
        with _connect(net[1], net[2].ip, port) as c:
            assert _echo(c) == b"ping"
        with pytest.raises(TimeoutError):
            _connect(net[0], net[2].ip, port, timeout=0.4)
        net.partition([0, 2])  # replaces it: member 1, in no group, is alone now
        with _connect(net[0], net[2].ip, port) as c:
            assert _echo(c) == b"ping"
        with pytest.raises(TimeoutError):
            _connect(net[1], net[2].ip, port, timeout=0.4)
        net.heal()
        with _connect(net[1], net[2].ip, port) as c:
            assert _echo(c) == b"ping"
        with pytest.raises(SpecError, match="in two"):
            net.partition([0, 1], [1])
        srv.close()


def test_link_down_fails_sends_at_once_and_link_up_restores_both_families():
    with VethPair() as pair:
        srv, port = echo_server(pair.b)
        srv6, port6 = echo_server(pair.b, socket.AF_INET6)
        pair.link_down()
        with pytest.raises(OSError) as err:
            _connect(pair.a, pair.b.ip, port)
        assert err.value.errno == errno.ENETUNREACH
        pair.link_up()
        with _connect(pair.a, pair.b.ip, port) as c:
            assert _echo(c) == b"ping"
        with _connect(pair.a, pair.b.ip6, port6, family=socket.AF_INET6) as c:
            assert _echo(c) == b"ping"
        srv.close()
        srv6.close()


def _mtu(end) -> int:
    s = end.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        req = struct.pack("16si", end.ifname.encode(), 0)
        return struct.unpack("16si", fcntl.ioctl(s, SIOCGIFMTU, req))[1]
    finally:
        s.close()


def test_a_flapping_link_goes_down_and_up_and_ends_up():
    with VethPair() as pair:
        srv, port = echo_server(pair.b)
        with pair.flap(2, period=2.0), pytest.raises(OSError):  # down when flap() returns
            _connect(pair.a, pair.b.ip, port, timeout=0.05)
        flap = pair.flap(0.6, period=0.1)
        assert flap.running
        flips = flap.wait(timeout=5)
        assert flips >= 6 and not flap.running
        with _connect(pair.a, pair.b.ip, port) as c:
            assert _echo(c) == b"ping"
        stopped = pair.flap(30, period=0.2)  # returns with the link down: one change made
        assert stopped.stop() >= 1  # stop() ends it early, with the link up
        with _connect(pair.a, pair.b.ip, port) as c:
            assert _echo(c) == b"ping"
        srv.close()
        with pytest.raises(SpecError, match="period"):
            pair.flap(1, period=0)


def test_mtu_changes_on_both_ends():
    with VethPair() as pair, Network(2) as net:
        pair.set_mtu(1280)
        assert _mtu(pair.a) == _mtu(pair.b) == 1280
        net.set_mtu(9000)
        assert _mtu(net[0]) == _mtu(net.ports[1]) == 9000
        with pytest.raises(SpecError, match="mtu"):
            pair.set_mtu(20)


def test_a_capture_holds_the_syn_of_a_connect_and_its_pcap_reads_back(tmp_path):
    with VethPair() as pair:
        srv, port = echo_server(pair.b)
        path = str(tmp_path / "a.pcap")
        with pair.capture("a", path=path) as cap, _connect(pair.a, pair.b.ip, port) as c:
            _echo(c)
        packets = cap.packets()
        syn = [p for p in packets if p.tcp_flags == "S"]
        assert syn and syn[0].outgoing
        assert f"{pair.a.ip}:" in syn[0].summary() and f"> {pair.b.ip}:{port}" in syn[0].summary()
        assert any(p.tcp_flags == "SA" and not p.outgoing for p in packets)
        on_disk = read_pcap(path)
        assert [p.data for p in on_disk] == [p.data for p in packets]
        assert all(abs(d.time - p.time) < 1e-6 for d, p in zip(on_disk, packets, strict=True))
        assert abs(packets[0].time - time.time()) < 60  # kernel wall-clock timestamps
        srv.close()
    assert os.path.exists(path)  # a path given is the caller's to keep


def test_hundreds_of_faults_and_captures_leave_nothing_behind():
    before_fds, before_kids = net_fds(), children()
    before_files = set(glob.glob(os.path.join(tempfile.gettempdir(), "*.pcap")))
    with VethPair() as pair:
        srv, port = echo_server(pair.b)
        for _ in range(200):
            pair.partition()
            pair.heal()
        for _ in range(20):
            with pair.capture("b"):
                pass
        pair.flap(0.05, period=0.01).wait(5)
        with _connect(pair.a, pair.b.ip, port) as c:
            assert _echo(c) == b"ping"
        srv.close()
    with Network(3) as net:
        for _ in range(50):
            net.partition([0], [1, 2])
            net.heal()
        net.capture(1)
        net.flap(0, 30, period=0.2)  # still flapping at close: stopped by it
    assert net_fds() == before_fds
    assert children() == before_kids
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "*.pcap"))) == before_files


def test_a_router_joins_two_networks_both_ways_over_ipv4_and_ipv6_and_names_resolve():
    from pytest_isolate.runtime import syscalls as sc
    from pytest_isolate.runtime.network import Pod

    pod = None if sc.host_root() else Pod()  # rootless: one pod, or no link between them
    try:
        with Network(2, names=["client", "web"], pod=pod) as front, \
                Network(1, names=["db"], pod=pod) as back:
            router = front.route_to(back)
            assert router.ends[0].ip == front.subnet.host(front.subnet.capacity - 1)
            for family, addr in ((socket.AF_INET, back[0].ip), (socket.AF_INET6, back[0].ip6)):
                srv, port = echo_server(back[0], family)
                with _connect(front[0], addr, port, family=family) as c:
                    assert _echo(c) == b"ping"
                srv.close()
            srv, port = echo_server(front[1])
            with _connect(back[0], front[1].ip, port) as c:  # and back
                assert _echo(c) == b"ping"
            out = front[0].run(["getent", "hosts", "db"], check=True).stdout.decode()
            assert out.split() == [back[0].ip6, "db"]
            code = (f"import socket; s = socket.create_connection(('web', {port}), 2); "
                    "s.sendall(b'hi'); print(s.recv(2).decode())")
            got = back[0].run(["python3", "-c", code], check=True).stdout
            assert got == b"hi\n"
            assert front.address_of("db") == back[0].ip
            late = back.attach("cache")  # a member added later: routes and names too
            srv2, port2 = echo_server(late)
            with _connect(front[0], late.ip, port2) as c:
                assert _echo(c) == b"ping"
            assert "cache" in front.hosts()
            srv.close()
            srv2.close()
            with pytest.raises(SpecError, match="no member has"):
                back.attach("db")
    finally:
        if pod is not None:
            pod.close()


def test_routed_networks_leave_no_hosts_file_behind():
    from pytest_isolate.runtime import syscalls as sc
    from pytest_isolate.runtime.network import Pod

    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "pti-hosts-*")))
    pod = None if sc.host_root() else Pod()
    with Network(1, pod=pod) as a, Network(1, pod=pod) as b:
        a.route_to(b)
        assert os.path.exists(a.hosts_file)
    if pod is not None:
        pod.close()
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "pti-hosts-*"))) == before


def test_routers_in_different_pods_are_refused_saying_why():
    from pytest_isolate.runtime import UnsupportedError
    from pytest_isolate.runtime.network import Pod

    pods = [Pod(), Pod()]
    try:
        with Network(1, pod=pods[0]) as a, Network(1, pod=pods[1]) as b, \
                pytest.raises(UnsupportedError, match="different pods"):
            a.route_to(b)
    finally:
        for pod in pods:
            pod.close()


def test_members_reach_a_host_server_through_the_routers_nat_and_the_host_is_unchanged():
    from pytest_isolate.runtime import UnsupportedError
    from pytest_isolate.runtime import syscalls as sc

    if not sc.host_root():
        from pytest_isolate.runtime.network import Pod

        pod = Pod()
        try:
            with Network(1, pod=pod) as net, pytest.raises(UnsupportedError, match="root"):
                net.uplink()
        finally:
            pod.close()
        return
    forward = Path("/proc/sys/net/ipv4/ip_forward")
    forwarding = forward.read_text()
    with Network(2) as net:
        host_ip = net.uplink()
        srv = socket.create_server((host_ip, 0))
        peers = []

        def answer() -> None:
            for _ in range(2):
                conn, peer = srv.accept()
                peers.append(peer[0])
                with conn:
                    conn.sendall(b"host")
        t = threading.Thread(target=answer, daemon=True)
        t.start()
        for end in (net[1], net.attach("late")):
            with _connect(end, host_ip, srv.getsockname()[1]) as c:
                assert c.recv(4) == b"host"
        t.join(5)
        assert peers == [net.routers[0].link.ip] * 2  # masqueraded: the router's address
        srv.close()
    assert forward.read_text() == forwarding
