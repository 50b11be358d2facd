"""Servers for the network tests: an accept loop on a thread, and an echo server in a
namespace (sockets made there live there, whatever thread uses them)."""

from __future__ import annotations

import socket
import threading


def accept_loop(srv: socket.socket, handle, threaded: bool = False) -> threading.Thread:
    """Serve each connection with handle(conn) on a thread, until srv is closed; threaded:
    each connection on a thread of its own (an open one does not hold up the next)."""
    def serve(conn: socket.socket) -> None:
        with conn:
            handle(conn)

    def loop() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            if threaded:
                threading.Thread(target=serve, args=(conn,), daemon=True).start()
            else:
                serve(conn)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def echo_all(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def echo_server(end, family: int = socket.AF_INET) -> tuple[socket.socket, int]:
    """A TCP echo server in `end`'s namespace, on its IPv4 or IPv6 address: (socket, port)."""
    srv = end.socket(family)
    srv.bind((end.ip6 if family == socket.AF_INET6 else end.ip, 0))
    srv.listen(16)
    accept_loop(srv, echo_all, threaded=True)
    return srv, srv.getsockname()[1]
