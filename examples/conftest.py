"""Fixtures of the demo suite. Wider-scoped fixtures run once, in the pytest process on the
host, and every isolated test inherits them."""

import hashlib
import socket
import threading

import pytest


@pytest.fixture(scope="session")
def host_server():
    """A TCP server on the host's loopback, answering b"hello from the host"."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"hello from the host")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    stop.set()
    thread.join()
    srv.close()


@pytest.fixture(scope="session")
def hosts_digest():
    """The host's /etc/hosts as it was when the session started."""
    with open("/etc/hosts", "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
