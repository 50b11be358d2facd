"""What a capped workload makes of its "placed" pipe (written by the zygote or the caller)."""

from __future__ import annotations

import json
import os

import pytest

from pytest_isolate.runtime.container import _wait_placed
from pytest_isolate.runtime.errors import SetupError


def _pipe_with(data: bytes) -> int:
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    return r


def test_p_lets_the_workload_go_on():
    _wait_placed(_pipe_with(b"p"))
    _wait_placed(None)  # uncapped: nothing to wait for


def test_x_carries_the_reason_it_was_not_placed():
    err = SetupError("join cgroup", "/sys/fs/cgroup/pids/pti-1-0/cgroup.procs", 13,
                     "Permission denied")
    with pytest.raises(SetupError) as info:
        _wait_placed(_pipe_with(b"x" + json.dumps(err.to_frame()).encode()))
    assert str(info.value) == str(err)


def test_eof_says_the_placing_process_ended_first():
    with pytest.raises(SetupError, match="ended before it was done"):
        _wait_placed(_pipe_with(b""))
