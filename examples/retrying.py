"""A small client with retries: the kind of code the network demo verifies against real links.

`fetch(connect, request)` sends a request and reads the reply until the server closes; a
timeout, a refused connection or an unreachable network (any socket error) is retried with a
doubling backoff, up to `attempts` times.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


class GaveUp(Exception):
    """Every attempt failed; `errors` holds what each one hit."""

    def __init__(self, errors: list[BaseException]):
        self.errors = errors
        super().__init__(f"gave up after {len(errors)} attempts: "
                         + ", ".join(type(e).__name__ for e in errors))


def fetch(connect: Callable[[], socket.socket], request: bytes, attempts: int = 5,
          timeout: float = 0.5, backoff: float = 0.05) -> tuple[bytes, int]:
    """(reply, attempts used). `connect()` returns a connected TCP socket; it is called once
    per attempt. `timeout` bounds a whole attempt, not each read: a slow trickle fails too."""
    errors: list[BaseException] = []
    for attempt in range(1, attempts + 1):
        deadline = time.monotonic() + timeout
        try:
            with connect() as s:
                s.settimeout(timeout)
                s.sendall(request)
                chunks = []
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(f"no full reply within {timeout}s")
                    s.settimeout(left)
                    data = s.recv(65536)
                    if not data:
                        return b"".join(chunks), attempt
                    chunks.append(data)
        except OSError as e:  # TimeoutError, ConnectionError, ENETUNREACH, ...
            errors.append(e)
            time.sleep(backoff * 2 ** (attempt - 1))
    raise GaveUp(errors)
