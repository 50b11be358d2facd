"""The cgroup v2 lane: the caps tests (and the container battery) inside a User-Mode Linux guest
with pure cgroup v2, run strictly: a failure or a skip there fails here."""

from __future__ import annotations

import os
import sys

from tests.conftest import require
from tests.lanes.uml import run as uml

# The UML kernel (6.1) is built without CONFIG_TIME_NS: that one test cannot run there.
DESELECT = ("tests/integration/test_container.py::"
            "test_a_time_namespace_shifts_the_monotonic_clock")
TESTS = ("tests/unit/test_cgroup_files.py", "tests/integration/test_caps.py",
         "tests/integration/test_container.py", "tests/integration/test_nothing_left_behind.py")


def test_caps_and_containers_pass_on_pure_cgroup_v2_in_uml():
    missing = uml.available()
    require(missing is None, missing or "")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTEST_ISOLATE_STRICT": "1", "PYTHONPATH": repo}
    code, out = uml.run([sys.executable, "-m", "pytest", "-q", "-rs", "--color=no",
                         "-p", "no:cacheprovider", *TESTS, "--deselect", DESELECT],
                        timeout=600, cwd=repo, env=env)
    assert code == 0, out
    assert " passed" in out and "skipped" not in out.split("short test summary")[-1], out
