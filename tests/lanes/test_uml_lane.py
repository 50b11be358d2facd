"""The cgroup v2 and netem lane: the caps tests, the container battery and the network tests
inside a User-Mode Linux guest with pure cgroup v2 and sch_netem, run strictly: a failure or a
skip there fails here."""

from __future__ import annotations

import os
import sys

from tests.conftest import require
from tests.lanes.uml import run as uml

# The UML kernel (6.1) is built without CONFIG_TIME_NS and CONFIG_NF_TABLES_IPV4 (no NAT),
# and it has netem, so there is no refusal to check: those three tests cannot run there.
DESELECT = ("tests/integration/test_container.py::"
            "test_a_time_namespace_shifts_the_monotonic_clock",
            "tests/integration/test_network_faults.py::"
            "test_members_reach_a_host_server_through_the_routers_nat_and_the_host_is_unchanged",
            "tests/integration/test_network.py::"
            "test_netem_is_refused_naming_the_module_where_the_kernel_lacks_it")
TESTS = ("tests/unit/test_cgroup_files.py", "tests/integration/test_caps.py",
         "tests/integration/test_birth_placement.py",
         "tests/integration/test_container.py", "tests/integration/test_nothing_left_behind.py",
         "tests/integration/test_network.py", "tests/integration/test_network_faults.py",
         "tests/integration/test_live_containers.py",
         "examples/test_network_demo.py")


def test_caps_and_containers_pass_on_pure_cgroup_v2_in_uml():
    missing = uml.available()
    require(missing is None, missing or "")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTEST_ISOLATE_STRICT": "1", "PYTHONPATH": repo,
           "PYTEST_ISOLATE_LANE": "uml"}  # netem is in this kernel: its tests must run
    code, out = uml.run([sys.executable, "-m", "pytest", "-q", "-rs", "--color=no",
                         "-p", "no:cacheprovider",
                         "-o", "faulthandler_timeout=120",  # a hang shows its stacks in `out`
                         *TESTS, *(f"--deselect={d}" for d in DESELECT)],
                        timeout=600, cwd=repo, env=env)
    assert code == 0, out
    assert " passed" in out and "skipped" not in out.split("short test summary")[-1], out
