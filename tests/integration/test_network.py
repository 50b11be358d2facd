"""Network namespaces and links on the real kernel: veth pairs, bridges, a container's link to
the host, tc impairments, the address pool, and nothing left behind. Runs as root and, in the
rootless lane, as nobody (links between namespaces of one user namespace)."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from pytest_isolate.runtime import Spec, SpecError, UnsupportedError, run
from pytest_isolate.runtime.host.state import cleanup_stale
from pytest_isolate.runtime.network import Network, VethPair, leases
from pytest_isolate.runtime.network.hostlink import host_link_name
from tests.conftest import net_fds, require_netem, wait_until
from tests.support.net import accept_loop, echo_all

ROOT = os.geteuid() == 0


def _serve_echo(end) -> tuple[socket.socket, threading.Thread]:
    """A TCP echo server living in `end`'s namespace, on a thread."""
    srv = end.socket()
    srv.bind((end.ip, 0))
    srv.listen(8)
    return srv, accept_loop(srv, echo_all)


def _connect(end, addr, timeout: float = 2.0) -> socket.socket:
    c = end.socket()
    c.settimeout(timeout)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.connect(addr)
    return c


def _echo(end, srv: socket.socket, payload: bytes = b"ping") -> bytes:
    with _connect(end, srv.getsockname()) as c:
        c.sendall(payload)
        return c.recv(len(payload))


def _rtts(c: socket.socket, n: int = 10) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        c.sendall(b"x")
        assert c.recv(1) == b"x"
        out.append(time.perf_counter() - t0)
    return out


@pytest.fixture
def clean_network():
    """No lease of ours, no namespace fd and no new host link outlive the test."""
    links = set(os.listdir("/sys/class/net"))
    netns = net_fds()
    held = leases.in_use()
    yield
    assert leases.in_use() == held, "a subnet is still handed out"
    assert net_fds() == netns, "a network namespace is still held"
    # host links die with their peer's namespace, async
    wait_until(lambda: not set(os.listdir("/sys/class/net")) - links)
    assert set(os.listdir("/sys/class/net")) - links == set()


pytestmark = pytest.mark.usefixtures("clean_network")


def test_tcp_echo_crosses_a_veth_pair_both_ways():
    with VethPair() as pair:
        assert pair.a.ip != pair.b.ip and pair.a.ifname == pair.b.ifname == "eth0"
        for server, client in ((pair.a, pair.b), (pair.b, pair.a)):
            srv, _ = _serve_echo(server)
            with srv:
                assert _echo(client, srv, b"across") == b"across"


def test_the_namespaces_are_not_the_hosts():
    with VethPair() as pair:
        out = pair.a.run(["cat", "/proc/net/dev"], text=True).stdout
        names = {line.split(":")[0].strip() for line in out.splitlines()[2:]}
        assert names == {"lo", "eth0"}
        with pair.b.socket() as s, pytest.raises(OSError):  # the host's loopback is not there
            s.connect(("127.0.0.1", 9))


def test_with_endpoint_moves_only_this_thread_in_and_back():
    if not ROOT:
        with VethPair() as pair, pytest.raises(UnsupportedError, match=r"ns\.socket"):
            pair.a.__enter__()
        return
    before = os.readlink("/proc/thread-self/ns/net")
    go, other = threading.Event(), []
    t = threading.Thread(target=lambda: (go.wait(), other.append(
        os.readlink("/proc/thread-self/ns/net"))))
    t.start()  # started outside: a thread started inside would inherit the namespace
    with VethPair() as pair:
        with pair.a:
            inside = os.readlink("/proc/thread-self/ns/net")
            srv = socket.create_server((pair.a.ip, 0))
            go.set()
            t.join()
        assert inside != before and other == [before]
        assert os.readlink("/proc/thread-self/ns/net") == before
        with srv, _connect(pair.b, srv.getsockname()):  # the socket stayed in a
            pass


def test_a_bridge_with_three_members_connects_every_pair():
    with Network(3) as net:
        assert len({m.ip for m in net}) == 3
        servers = [_serve_echo(m)[0] for m in net]
        try:
            for i, client in enumerate(net):
                for j, srv in enumerate(servers):
                    if i != j:
                        assert _echo(client, srv) == b"ping"
        finally:
            for s in servers:
                s.close()


def test_rate_via_tbf_caps_throughput():
    with VethPair() as pair:
        imp = pair.impair(rate="4mbit")
        assert not imp.needs_netem
        srv, _ = _serve_echo(pair.a)
        payload = b"x" * 256 * 1024
        with srv, _connect(pair.b, srv.getsockname(), timeout=10) as c:
            received = 0
            t0 = time.perf_counter()
            c.sendall(payload)
            while received < len(payload):
                received += len(c.recv(65536))
            seconds = time.perf_counter() - t0
        mbit = len(payload) * 8 / seconds / 1e6
        assert mbit < 4 * 1.3, f"{mbit:.2f} Mbit/s through a 4mbit link"
        pair.clear()
        assert pair.a.impairment.empty


def test_netem_is_refused_naming_the_module_where_the_kernel_lacks_it():
    from tests.conftest import netem_available

    if netem_available():
        pytest.skip("this kernel has netem: nothing to refuse")
    with VethPair() as pair:
        with pytest.raises(UnsupportedError, match=r"sch_netem.*CONFIG_NET_SCH_NETEM"):
            pair.impair(delay="10ms")
        srv, _ = _serve_echo(pair.a)  # the link still works, unimpaired
        with srv:
            assert _echo(pair.b, srv) == b"ping"


@pytest.mark.parametrize("bad, field", [({"delay": "fast"}, "delay"), ({"loss": 1.5}, "loss"),
                                        ({"rate": "lots"}, "rate"), ({"jitter": "5ms"}, "jitter")])
def test_bad_impairments_are_refused_before_tc_is_touched(bad, field):
    with VethPair() as pair, pytest.raises(SpecError, match=f"^{field}="):
        pair.a.impair(**bad)


def test_200_pairs_created_and_destroyed_leave_nothing():
    for _ in range(200 if ROOT else 40):
        with VethPair() as pair:
            assert pair.a.ip


def test_an_exhausted_pool_is_a_clear_error():
    try:
        leases.set_pool("198.19.255.248/29")  # room for two /30s
        with VethPair(), VethPair(), pytest.raises(
                UnsupportedError, match=r"(?s)198\.19\.255\.248/29 is exhausted.*"
                                        r"isolate_subnet_pool"):
            VethPair()
    finally:
        leases.set_pool(leases.DEFAULT_POOL)


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_a_dead_runs_leases_and_links_are_cleaned_not_reused():
    dead = _dead_pid()
    with leases._locked_table() as table:
        table["198.18.0.0/30"] = dead
    name = host_link_name(dead, 0)
    if ROOT:
        subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"],
                       check=True)
    removed = cleanup_stale()
    assert "lease 198.18.0.0/30" in removed, removed
    assert dead not in leases.leases().values()
    if ROOT:
        assert f"link {name}" in removed
        assert not os.path.exists(f"/sys/class/net/{name}")


def test_two_processes_creating_pairs_at_once_never_clash(tmp_path):
    script = textwrap.dedent("""
        import json, sys, time
        from pytest_isolate.runtime.network import VethPair
        pairs = [VethPair() for _ in range(15)]
        print(json.dumps([str(p.subnet) for p in pairs]), flush=True)
        time.sleep(0.5)  # hold them while the other process allocates
        for p in pairs:
            p.close()
    """)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              env=env, text=True) for _ in range(2)]
    got = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(got[0]) == len(got[1]) == 15
    assert set(got[0]).isdisjoint(got[1])


# -- a container's link to the host (network="veth") -------------------------------------------

def _reach(addr: tuple[str, int], timeout: float = 0.5) -> str:
    import socket as s

    try:
        with s.create_connection(addr, timeout=timeout) as c:
            return c.recv(64).decode()
    except OSError as e:
        return type(e).__name__


def test_a_veth_container_reaches_the_host_side_and_nothing_beyond():
    if not ROOT:
        with pytest.raises(UnsupportedError, match=r"veth link to the host.*needs root"):
            run(Spec(network="veth"), lambda: None)
        return
    srv = socket.create_server(("0.0.0.0", 0))
    port = srv.getsockname()[1]
    accept_loop(srv, lambda conn: conn.sendall(b"host"))
    from pytest_isolate.runtime.api import start

    # A second container with a server of its own: the first must not reach it via the host.
    other = start(Spec(network="veth"), lambda: _serve_once(os.environ["PYTEST_ISOLATE_IP"]))
    with srv:
        r = run(Spec(network="veth"), lambda: (
            os.environ["PYTEST_ISOLATE_IP"], os.environ["PYTEST_ISOLATE_HOST_IP"],
            _reach((os.environ["PYTEST_ISOLATE_HOST_IP"], port)), _reach((other.ip, 7))))
    other.kill()
    other.wait()
    assert r.error is None, r.error
    ip, host_ip, from_host, from_other = r.value
    assert host_ip != ip and from_host == "host"
    assert from_other in ("TimeoutError", "ConnectionRefusedError", "OSError"), from_other


def _serve_once(ip: str) -> None:
    with socket.create_server((ip, 7)) as s:
        s.settimeout(30)
        conn, _ = s.accept()
        conn.sendall(b"other")


# -- netem (the UML lane; skipped with the module named where the kernel lacks it) ------------

def test_delay_on_both_ends_shows_in_the_round_trip():
    require_netem()
    with VethPair() as pair:
        srv, _ = _serve_echo(pair.a)
        with srv, _connect(pair.b, srv.getsockname()) as c:
            base = statistics.median(_rtts(c))
            pair.impair(delay="50ms")
            slow = statistics.median(_rtts(c, 5))
            pair.clear()
            again = statistics.median(_rtts(c))
    assert 0.100 <= slow < 0.200, f"round trip {slow * 1e3:.1f} ms with 50 ms each way"
    assert again < 0.001 or again < 2 * base + 0.0005, f"{again * 1e3:.2f} ms after clearing"


def test_total_loss_makes_a_connect_time_out():
    require_netem()
    with VethPair() as pair:
        srv, _ = _serve_echo(pair.a)
        pair.b.impair(loss=1.0)
        with srv, pytest.raises(TimeoutError):
            _connect(pair.b, srv.getsockname(), timeout=1.0)


def test_a_netem_rate_keeps_throughput_under_the_cap():
    require_netem()
    with VethPair() as pair:
        pair.impair(rate="1mbit", delay="1ms")  # netem (a delay is asked too) with its rate
        srv, _ = _serve_echo(pair.a)
        payload = b"x" * 64 * 1024
        with srv, _connect(pair.b, srv.getsockname(), timeout=20) as c:
            t0 = time.perf_counter()
            c.sendall(payload)
            received = 0
            while received < len(payload):
                received += len(c.recv(65536))
            seconds = time.perf_counter() - t0
    mbit = len(payload) * 8 / seconds / 1e6
    assert mbit < 1.3, f"{mbit:.2f} Mbit/s through a 1mbit link"
