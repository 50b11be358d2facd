"""Coverage of isolated tests: lines run inside a container are counted (pytest-cov, coverage).

Rule: coverage is optional; without an active `coverage.Coverage` every function is a no-op.
The container's collector is a fork of the parent's and keeps collecting; its whole data set
travels back and is merged (a union, so what the parent already had counts once). Emptying it
first (stop, erase, start) cost more (10 ms) than sending it (7 ms for a small project).
"""

from __future__ import annotations

import base64
from typing import Any


def _current() -> Any:
    try:
        import coverage
    except ImportError:
        return None
    return coverage.Coverage.current()


def in_container() -> Any:
    """The coverage measuring this process (inherited through fork), or None."""
    return _current()


def payload(cov: Any) -> str:
    """In the container, after the test: this test's coverage data as text."""
    return base64.b64encode(cov.get_data().dumps()).decode()


def merge(text: str) -> None:
    """In the pytest process: add a container's data to the running coverage."""
    cov = _current()
    if cov is None:
        return
    from coverage import CoverageData

    other = CoverageData(no_disk=True)
    other.loads(base64.b64decode(text))
    cov.get_data().update(other)
