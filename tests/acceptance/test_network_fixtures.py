"""Network fixtures and network="veth" as users see them, through pytester."""

from __future__ import annotations

import os

from tests.acceptance.test_marker import run

ROOT = os.geteuid() == 0


def test_veth_pair_and_network_fixtures_carry_tcp_and_leave_nothing(pytester):
    pytester.makeini("[pytest]\nisolate_subnet_pool = 198.19.7.0/24\n")
    result = run(pytester, """
        import socket, threading

        def echo_once(srv):
            conn, _ = srv.accept()
            with conn:
                conn.sendall(conn.recv(16))

        def test_pair(veth_pair):
            assert veth_pair.a.ip.startswith("198.19.7."), "the ini's pool is used"
            srv = veth_pair.a.socket()
            srv.bind((veth_pair.a.ip, 0)); srv.listen()
            threading.Thread(target=echo_once, args=(srv,), daemon=True).start()
            c = veth_pair.b.socket(); c.settimeout(2); c.connect(srv.getsockname())
            c.sendall(b"over veth"); assert c.recv(16) == b"over veth"

        def test_bridge(network):
            net = network(3)
            assert [m.ip for m in net] == [net[0].ip, net[1].ip, net[2].ip]
            srv = net[2].socket(); srv.bind((net[2].ip, 0)); srv.listen()
            threading.Thread(target=echo_once, args=(srv,), daemon=True).start()
            c = net[0].socket(); c.settimeout(2); c.connect(srv.getsockname())
            c.sendall(b"over bridge"); assert c.recv(16) == b"over bridge"

        def test_bad_impairment_names_the_argument(veth_pair):
            import pytest
            from pytest_isolate.runtime import SpecError
            with pytest.raises(SpecError, match="delay='fast'.*50ms"):
                veth_pair.impair(delay="fast")
    """)
    result.assert_outcomes(passed=3)


def test_a_veth_test_reaches_the_hosts_server_from_a_session_fixture(pytester):
    result = run(pytester, """
        import socket, threading, pytest

        @pytest.fixture(scope="session")
        def host_server():
            srv = socket.create_server(("0.0.0.0", 0))
            def serve():
                while True:
                    try:
                        conn, _ = srv.accept()
                    except OSError:
                        return
                    with conn:
                        conn.sendall(b"from the host")
            threading.Thread(target=serve, daemon=True).start()
            yield srv.getsockname()[1]
            srv.close()

        @pytest.mark.isolated(network="veth")
        def test_reaches(host_server, isolation):
            assert isolation.ip and isolation.host_ip != isolation.ip
            with socket.create_connection((isolation.host_ip, host_server), timeout=2) as c:
                assert c.recv(32) == b"from the host"

        @pytest.mark.isolated
        def test_hermetic_by_default(host_server, isolation):
            assert isolation.host_ip is None
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", host_server), timeout=1)
    """)
    if ROOT:
        result.assert_outcomes(passed=2)
    else:
        result.assert_outcomes(passed=1, errors=1)  # the host cannot isolate it: a setup error
        result.stdout.fnmatch_lines(["*veth link to the host*needs root*"])


def test_a_bad_subnet_pool_in_ini_is_a_usage_error(pytester):
    pytester.makeini("[pytest]\nisolate_subnet_pool = 10.0.0.0/33\n")
    result = run(pytester, "def test_x(): pass")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*ini isolate_subnet_pool = '10.0.0.0/33': expected an IPv4 "
                                 "network like 198.18.0.0/15*"])
