"""Network code verified against real links: `python -m pytest examples`.

The `veth_pair` fixture gives two network namespaces joined by a veth link; tc shapes it, and
faults cut it (a partition that heals, a flapping link). A bare rate (tbf) and the faults work
on any kernel; loss and delay need netem (sch_netem), which the development kernel lacks: that
test is skipped there, naming the module, and runs in the project's UML lane.
"""

import socket
import threading

import pytest
from retrying import GaveUp, fetch

PAYLOAD = b"x" * 48 * 1024  # 48 KiB: 0.4 s through a 1 Mbit/s link


@pytest.fixture
def serve():
    """serve(end) -> address: a server in `end`'s namespace answering each request with
    PAYLOAD. Stopped at teardown: an open socket would keep its namespace alive."""
    servers = []

    def start(end) -> tuple[str, int]:
        srv = end.socket()
        srv.bind((end.ip, 0))
        srv.listen(8)

        def answer(conn):
            with conn:
                try:
                    conn.settimeout(10)
                    conn.recv(64)
                    conn.sendall(PAYLOAD)
                except OSError:  # a client that gave up
                    pass

        def loop():
            while not stop.is_set():
                try:
                    conn, _ = srv.accept()
                except OSError:  # shut down
                    return
                # one thread per client: a client that gave up must not hold up the next
                threading.Thread(target=answer, args=(conn,), daemon=True).start()

        stop = threading.Event()
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        servers.append((srv, stop, thread))
        return srv.getsockname()

    yield start
    for srv, stop, thread in servers:
        stop.set()
        srv.shutdown(socket.SHUT_RDWR)  # wakes the accept
        thread.join(5)
        srv.close()


def connector(end, addr, timeout: float = 1.0):
    def connect() -> socket.socket:
        s = end.socket()
        s.settimeout(timeout)
        s.connect(addr)
        return s
    return connect


def test_the_client_waits_long_enough_on_a_slow_link(veth_pair, serve):
    veth_pair.impair(rate="1mbit")  # both directions
    addr = serve(veth_pair.a)
    reply, attempts = fetch(connector(veth_pair.b, addr), b"GET", timeout=2.0)
    assert reply == PAYLOAD and attempts == 1


def test_the_client_gives_up_when_its_timeout_is_too_short_for_the_link(veth_pair, serve):
    veth_pair.impair(rate="1mbit")
    addr = serve(veth_pair.a)
    with pytest.raises(GaveUp) as info:
        fetch(connector(veth_pair.b, addr), b"GET", attempts=3, timeout=0.05)
    assert len(info.value.errors) == 3
    assert all(isinstance(e, TimeoutError) for e in info.value.errors)


def test_the_client_gets_through_a_lossy_slow_link_by_retrying(veth_pair, serve):
    from pytest_isolate.runtime.network import probe_netem

    missing = probe_netem()
    if missing:
        pytest.skip(missing)
    veth_pair.impair(delay="20ms", loss=0.05, rate="2mbit")
    addr = serve(veth_pair.a)
    reply, attempts = fetch(connector(veth_pair.b, addr), b"GET", attempts=10, timeout=5.0)
    assert reply == PAYLOAD
    print(f"through 5% loss each way: {attempts} attempt(s)")


def test_the_client_retries_through_a_partition_until_it_heals(veth_pair, serve):
    addr = serve(veth_pair.a)
    veth_pair.partition()  # both ways, the link stays: connects time out
    healer = threading.Timer(0.4, veth_pair.heal)
    healer.start()
    try:
        reply, attempts = fetch(connector(veth_pair.b, addr, timeout=0.2), b"GET",
                                attempts=8, timeout=1.0)
    finally:
        healer.join()
    assert reply == PAYLOAD and attempts > 1
    print(f"through a partition healed after 0.4 s: {attempts} attempts")


def test_the_client_gets_through_a_flapping_link_by_retrying(veth_pair, serve):
    addr = serve(veth_pair.a)
    with veth_pair.flap(seconds=1.0, period=0.2) as flap:  # down 0.1 s, up 0.1 s, ...
        reply, attempts = fetch(connector(veth_pair.b, addr, timeout=0.2), b"GET",
                                attempts=10, timeout=1.0)
    assert reply == PAYLOAD
    print(f"through a flapping link ({flap.flips} changes): {attempts} attempt(s)")
