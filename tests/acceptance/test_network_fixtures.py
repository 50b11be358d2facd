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


def test_a_failed_test_keeps_its_captures_and_its_report_names_them(pytester):
    import glob
    import tempfile

    base = os.path.join(tempfile.gettempdir(), f"pytest-isolate-captures-{os.geteuid()}")
    before = set(glob.glob(os.path.join(base, "*", "*.pcap")))
    dirs_before = set(glob.glob(os.path.join(base, "*")))
    try:
        _check_kept_captures(pytester, base, before)
    finally:  # what the inner run kept is this test's to remove, whatever it asserted
        import shutil

        for d in set(glob.glob(os.path.join(base, "*"))) - dirs_before:
            shutil.rmtree(d, ignore_errors=True)
        if os.path.isdir(base) and not os.listdir(base):
            os.rmdir(base)


def _check_kept_captures(pytester, base: str, before: set) -> None:
    import glob

    result = run(pytester, """
        import socket, pytest

        def talk(pair):
            srv = pair.b.socket(); srv.bind((pair.b.ip, 0)); srv.listen()
            c = pair.a.socket(); c.settimeout(2); c.connect(srv.getsockname()); c.close()

        def test_fails(veth_pair):
            veth_pair.capture("a")
            talk(veth_pair)
            assert 0, "look at the capture"

        def test_passes(veth_pair):
            veth_pair.capture("b")
            talk(veth_pair)

        @pytest.mark.isolated
        def test_fails_inside_a_container(network):
            net = network(2)
            net.capture(0)
            net.partition([0], [1])
            c = net[0].socket(); c.settimeout(0.3)
            c.connect((net[1].ip, 9))
    """)
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(["*packet capture a eth0*", "*.pcap (* packets)*",
                                 "*> TCP * > *[S]*", "*packet capture m0 eth0*"])
    kept = [line.split()[0] for line in out.splitlines() if line.strip().endswith("packets)")
            and ".pcap" in line]
    assert len(kept) == 2 and all(os.path.exists(p) for p in kept), kept
    left = set(glob.glob(os.path.join(base, "*", "*.pcap"))) - before
    assert left == set(kept)  # the passing test's capture is gone


def test_a_container_and_a_namespace_on_one_bridge_talk_both_ways_by_name(pytester):
    if not ROOT:
        import pytest

        pytest.skip("rootless: a container on a network needs root")
    result = run(pytester, """
        import socket, threading

        def test_both_ways(network, containers):
            net = network(1, names=["client"])
            box = containers.start(network=net, hostname="box")
            srv = net[0].socket(); srv.bind((net[0].ip, 0)); srv.listen()
            port = srv.getsockname()[1]
            def answer():
                conn, _ = srv.accept()
                with conn:
                    conn.sendall(b"from client")
            threading.Thread(target=answer, daemon=True).start()
            code = ("import socket; s = socket.create_connection(('client', %d), 2); "
                    "print(s.recv(32).decode())" % port)
            assert box.run(["python3", "-c", code], check=True).stdout == b"from client\\n"
            server = box.spawn(["python3", "-c",
                                "import socket; s = socket.create_server(('', 8080)); "
                                "c, _ = s.accept(); c.sendall(b'from box')"])
            out = b""
            for _ in range(50):  # until the server in the box listens
                r = net[0].run(["python3", "-c", "import socket; print(socket.create_connection("
                                "('box', 8080), 1).recv(16).decode())"])
                if r.returncode == 0:
                    out = r.stdout
                    break
                import time; time.sleep(0.05)
            assert out == b"from box\\n"
            assert net.address_of("box") == box.ip
            server.wait(5)
    """)
    result.assert_outcomes(passed=1)
