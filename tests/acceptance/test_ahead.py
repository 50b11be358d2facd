"""Going ahead (runner.py): the next isolated test's container starts while the test before it
is still being reported, and only where nothing in the pytest process stands between them.

What a test saw is observable without timing: each container is a copy of the pytest process
made when it started, so a test that reads which tests the pytest process had logged by then
tells whether it started before or after the test before it was logged."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import textwrap

import pytest

from pytest_isolate import runner
from tests.conftest import children

from .test_marker import run

# Records, for each test, which tests the pytest process had logged when the test's container
# was made (the fixture runs in the container, on that copy of the process).
CONFTEST = """
    import json, pytest

    LOGGED = []
    SEEN = {}

    def pytest_runtest_logreport(report):
        if report.when == "teardown":
            SEEN[report.nodeid.split("::")[-1]] = dict(report.user_properties).get("seen")
            LOGGED.append(report.nodeid.split("::")[-1])

    def pytest_sessionfinish(session):
        with open("seen.json", "w") as f:
            json.dump(SEEN, f)

    @pytest.fixture
    def seen(record_property):
        record_property("seen", list(LOGGED))
"""

TESTS_A = """
    import pytest

    pytestmark = pytest.mark.isolated

    def test_1(seen): pass
    def test_2(seen): pass
    def test_3(seen): assert 0, "fails"
    def test_4(seen): pass
    @pytest.mark.filterwarnings("ignore::DeprecationWarning")
    def test_5(seen): pass
    def test_6(seen): pass
    def test_7(seen): pass
"""

TESTS_B = """
    import pytest

    @pytest.mark.isolated
    def test_8(seen): pass
"""


def _seen(pytester: pytest.Pytester, *args: str) -> dict:
    pytester.makeconftest(textwrap.dedent(CONFTEST))
    pytester.makepyfile(test_z=textwrap.dedent(TESTS_B))  # after test_it.py
    result = run(pytester, TESTS_A, *args)
    result.assert_outcomes(passed=7, failed=1)
    return json.loads((pytester.path / "seen.json").read_text())


@pytest.mark.skipif(len(__import__("os").sched_getaffinity(0)) < 2,
                    reason="going ahead needs two CPUs; this host has one")
def test_the_next_container_starts_before_the_test_before_is_logged(pytester):
    seen = _seen(pytester)
    assert seen["test_1"] == []
    assert seen["test_2"] == []  # started ahead: test_1 was not logged yet
    assert seen["test_3"] == ["test_1"]  # ahead of test_2's logging
    # Not after a failure (-x, --maxfail could stop the session there), not across warning
    # filters or modules: those start after the test before is logged.
    assert seen["test_4"] == ["test_1", "test_2", "test_3"]
    assert seen["test_5"] == ["test_1", "test_2", "test_3", "test_4"]
    assert seen["test_6"] == ["test_1", "test_2", "test_3", "test_4", "test_5"]
    assert seen["test_7"] == ["test_1", "test_2", "test_3", "test_4", "test_5"]  # ahead
    assert seen["test_8"] == [f"test_{i}" for i in range(1, 8)]


def test_isolate_ahead_false_logs_each_test_first(pytester):
    seen = _seen(pytester, "-o", "isolate_ahead=false")
    names = [f"test_{i}" for i in range(1, 9)]
    for i, name in enumerate(names):
        assert seen[name] == names[:i], name



def test_a_container_started_for_a_test_that_never_runs_is_killed(pytester):
    # A plugin stops the session while a passed test is logged: the next test's container is
    # running by then (it would sleep for ten minutes). The session ends without it, and no
    # process of it is left (in-process run: this process is the one that forked it).
    pytester.makeconftest("""
        SESSION = []

        def pytest_sessionstart(session):
            SESSION.append(session)

        def pytest_runtest_logreport(report):
            if report.when == "teardown" and report.nodeid.endswith("test_1"):
                SESSION[0].shouldstop = "stopped by a plugin"
    """)
    before = children()
    try:
        result = run(pytester, """
            import time, pytest

            pytestmark = pytest.mark.isolated

            def test_1(): pass
            def test_2(): time.sleep(600)
        """)
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(["*stopped by a plugin*"])
        assert runner._ahead is None
        assert children() <= before
    finally:
        for pid in children() - before:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)


def test_pytest_exit_in_the_next_tests_setup_comes_after_the_test_before(pytester):
    # test_2's module fixture is set up when its container is started ahead, during test_1's
    # turn: its pytest.exit must still leave test_1 reported, and end the session at test_2.
    result = run(pytester, """
        import pytest

        pytestmark = pytest.mark.isolated

        @pytest.fixture(scope="module")
        def stop():
            pytest.exit("stopped in a fixture", returncode=3)

        def test_1(): pass
        def test_2(stop): pass
        def test_3(): pass
    """)
    result.assert_outcomes(passed=1)
    assert result.ret == 3
    result.stdout.fnmatch_lines(["*stopped in a fixture*"])


def test_bad_isolate_ahead_is_a_usage_error(pytester):
    result = run(pytester, "def test_x(): pass\n", "-o", "isolate_ahead=maybe")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini isolate_ahead = 'maybe': expected one of true, false*"])
