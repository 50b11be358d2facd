import os

import pytest

from tests.conftest import can_contain, require


@pytest.fixture(autouse=True)
def _needs_containers():
    ok, reason = can_contain()
    require(ok, reason)


@pytest.fixture
def caps_ok():
    from pytest_isolate.runtime.cgroups import writable_controllers

    if os.geteuid() != 0 and not writable_controllers():
        pytest.skip("rootless: no writable cgroup here (cgroup v1 has no delegation to users)")
    require({"cpu", "memory", "pids"} <= writable_controllers(),
            "writable cpu, memory and pids cgroup controllers")
