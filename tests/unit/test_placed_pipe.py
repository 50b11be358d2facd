"""What a capped container makes of its "placed" pipe (the caller writes it where it places
the container by a cgroup.procs write: cgroup v2 with clone3 refused)."""

from __future__ import annotations

import os

import pytest

from pytest_isolate.runtime.errors import SetupError
from pytest_isolate.runtime.process.child import wait_placed as _wait_placed


def _pipe_with(data: bytes) -> int:
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    return r


def test_p_lets_the_workload_go_on():
    _wait_placed(_pipe_with(b"p"))
    _wait_placed(None)  # uncapped: nothing to wait for


def test_eof_says_it_was_not_placed():
    with pytest.raises(SetupError, match="did not place this container"):
        _wait_placed(_pipe_with(b""))
