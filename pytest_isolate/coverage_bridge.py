"""Coverage of isolated tests: lines run inside a container are counted (pytest-cov, coverage).

Rule: coverage is optional; without an active `coverage.Coverage` every function is a no-op.
The container's collector is a fork of the parent's and keeps collecting; its whole data set
travels back and is merged (a union, so what the parent already had counts once). Emptying it
first (stop, erase, start) cost more (10 ms) than sending it (7 ms for a small project).
"""

from __future__ import annotations

import base64
import sys
from typing import Any


def _current() -> Any:
    # Only look: when nothing imported coverage, nothing measures (and importing it would
    # cost every container about 80 ms).
    coverage = sys.modules.get("coverage")
    return coverage.Coverage.current() if coverage is not None else None


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
