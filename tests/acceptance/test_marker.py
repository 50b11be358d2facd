"""The isolated marker as users see it, through pytester: outcomes, reasons, mixing, markers on
classes and modules, precedence, bad values."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest


def run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_it=textwrap.dedent(source))
    # Plugins some developer machines have (not ours) are kept out: they slow each run.
    return pytester.runpytest("-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                              "-p", "no:benchmark", *args)


def test_outcomes_as_usual(pytester):
    result = run(pytester, """
        import os, pytest

        @pytest.fixture
        def broken_setup():
            raise RuntimeError("setup broke")

        @pytest.fixture
        def broken_teardown():
            yield
            raise RuntimeError("teardown broke")

        pytestmark = pytest.mark.isolated

        def test_pass(): assert os.getpid() == 2
        def test_fail(): assert 1 == 2
        def test_skip_inside(): pytest.skip("skipped inside")
        @pytest.mark.skip(reason="by mark")
        def test_skip_mark(): raise AssertionError("never runs")
        @pytest.mark.xfail(reason="known")
        def test_xfail(): assert 0
        @pytest.mark.xfail(reason="fixed")
        def test_xpass(): pass
        def test_setup_error(broken_setup): pass
        def test_teardown_error(broken_teardown): pass
    """, "--junit-xml=out.xml")  # JUnit XML wants a skip's longrepr as a tuple, not a list
    result.assert_outcomes(passed=2, failed=1, skipped=2, xfailed=1, xpassed=1, errors=2)
    result.stdout.fnmatch_lines(["*ERROR at setup of test_setup_error*",
                                 "*RuntimeError: setup broke*",
                                 "*ERROR at teardown of test_teardown_error*",
                                 "*RuntimeError: teardown broke*"])
    assert "INTERNALERROR" not in result.stdout.str()


def test_caps_hit_become_clear_failures(pytester, caps_ok):
    result = run(pytester, """
        import os, time, pytest

        def hog():
            x = bytearray(400 * 1024 * 1024)
            for i in range(0, len(x), 4096):
                x[i] = 1

        @pytest.mark.isolated(memory="64M")
        def test_oom():
            print("printed before the OOM kill")
            hog()

        @pytest.mark.isolated(pids=16)
        def test_fork_bomb():
            for _ in range(64):
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)

        @pytest.mark.isolated(timeout=1)
        def test_hang():
            time.sleep(60)

        @pytest.mark.isolated
        def test_crash():
            import ctypes
            ctypes.string_at(0)

        @pytest.mark.xfail(reason="hogs memory")
        @pytest.mark.isolated(memory="64M")
        def test_oom_xfail():
            hog()
    """)
    result.assert_outcomes(failed=4, xfailed=1)
    result.stdout.fnmatch_lines([
        "*killed by the OOM killer: memory cap 64M reached (peak 6*M; files the test wrote*",
        "*printed before the OOM kill*",
    ])
    result.stdout.fnmatch_lines(["*pids cap 16 reached: fork failed*"])
    result.stdout.fnmatch_lines([
        "*timeout 1s exceeded: every process of the test was killed*",
        "*Python stack of the test*",
        "*test_it.py*in test_hang*",
    ])
    result.stdout.fnmatch_lines(["*crashed with SIGSEGV*", "*Python stack of the test when it*",
                                 "*test_it.py*in test_crash*"])
    result.stdout.fnmatch_lines(["*isolated tests (pytest-isolate)*",
                                 "*test_oom_xfail*xfailed*memory=64M*oom*"])


def test_mixed_plain_and_isolated_keep_setup_state_in_step(pytester):
    pytester.makeconftest("""
        import pytest
        @pytest.fixture(scope="session")
        def shared(tmp_path_factory):
            log = tmp_path_factory.getbasetemp() / "log"
            with open(log, "a") as f:
                f.write("session setup\\n")
            yield log
            with open(log, "a") as f:
                f.write("session teardown\\n")
    """)
    result = run(pytester, """
        import os, pytest

        @pytest.fixture(scope="module")
        def mod(shared):
            with open(shared, "a") as f:
                f.write("module setup\\n")
            yield os.getpid()
            with open(shared, "a") as f:
                f.write("module teardown\\n")

        @pytest.fixture(scope="class")
        def cls(shared):
            with open(shared, "a") as f:
                f.write("class setup\\n")
            yield
            with open(shared, "a") as f:
                f.write("class teardown\\n")

        @pytest.mark.isolated
        def test_first(mod): assert mod != os.getpid()
        def test_plain(mod): assert mod == os.getpid()

        class TestMixed:
            @pytest.mark.isolated
            def test_a(self, cls, mod): assert os.getpid() == 2
            def test_b(self, cls, mod): assert os.getpid() != 2
            @pytest.mark.isolated
            def test_c(self, cls, mod): assert os.getpid() == 2

        @pytest.mark.isolated
        @pytest.mark.parametrize("n", range(20))
        def test_many(shared, n):
            with open(shared, "a") as f:   # the container's copy: never reaches the host
                f.write("written inside\\n")

        @pytest.mark.isolated
        def test_last(mod): pass
    """)
    result.assert_outcomes(passed=26)
    assert "PytestRemovedIn" not in result.stdout.str()  # wider fixtures set up as pytest wants
    log = (pytester.path.parent / "basetemp" / "log")
    if not log.exists():
        log = next(pytester.path.parent.rglob("log"))
    assert log.read_text().splitlines() == [
        "session setup", "module setup", "class setup", "class teardown",
        "module teardown", "session teardown"]


def test_output_of_wider_fixtures_in_the_pytest_process_goes_into_reports(pytester):
    # Set up and torn down in the pytest process, around the containers: captured there and
    # shown in the reports of the tests that caused it, as pytest does; never on the terminal.
    result = run(pytester, """
        import pytest

        @pytest.fixture(scope="module")
        def shared():
            print("SETUP-OF-SHARED")
            yield
            print("TEARDOWN-OF-SHARED")

        @pytest.mark.isolated
        def test_first(shared): assert False

        @pytest.mark.isolated
        @pytest.mark.parametrize("n", range(3))
        def test_more(shared, n): print(f"INSIDE-{n}")
    """, "-rA")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*_ test_first _*", "*- Captured stdout setup -*",
                                 "SETUP-OF-SHARED"])
    result.stdout.fnmatch_lines(["*_ test_more?2? _*", "*- Captured stdout call -*", "INSIDE-2",
                                 "*- Captured stdout teardown -*", "TEARDOWN-OF-SHARED"])
    out = result.stdout.str()
    assert out.count("SETUP-OF-SHARED") == out.count("TEARDOWN-OF-SHARED") == 1


def test_markers_on_class_and_module_and_precedence(pytester):
    pytester.makeini("""
        [pytest]
        isolate_timeout = 50
        isolate_network = none
    """)
    result = run(pytester, """
        import pytest
        pytestmark = pytest.mark.isolated(hostname="from-module", timeout=40)

        def test_module_level(isolation):
            assert isolation.spec.hostname == "from-module"
            assert isolation.sources["hostname"] == "pytestmark of module test_it.py"
            assert isolation.resources.timeout == 40

        @pytest.mark.isolated(hostname="from-class")
        class TestClass:
            def test_class_level(self, isolation):
                import socket
                assert socket.gethostname() == "from-class"
                assert isolation.sources["hostname"] == "marker on class TestClass"
                assert isolation.resources.timeout == 40   # module marker, still nearer than CLI

            @pytest.mark.isolated(timeout=30)
            def test_function_wins(self, isolation):
                assert isolation.resources.timeout == 30
                assert isolation.sources["timeout"] == "marker on test_function_wins"
                assert isolation.spec.network == "host"
                assert isolation.sources["network"] == "--isolate-network"  # over the ini
    """, "--isolate-network=host")
    result.assert_outcomes(passed=3)


def test_cli_beats_ini_and_all_and_off_modes(pytester):
    pytester.makeini("""
        [pytest]
        isolate_timeout = 50
    """)
    source = """
        import os, pytest

        def test_plain(isolation):
            assert isolation.resources.timeout == 20
            assert isolation.sources["timeout"] == "--isolate-timeout"

        @pytest.mark.isolated
        def test_marked():
            print("PID", os.getpid())
    """
    result = run(pytester, source, "--isolate=all", "--isolate-timeout=20")
    result.assert_outcomes(passed=2)
    result = run(pytester, source, "--isolate=off", "-s", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    assert "PID 2\n" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*only available in isolated tests*"])


def test_unmarked_tests_of_each_session_get_that_sessions_settings(pytester, monkeypatch):
    # The settings of unmarked tests are built once per session: a second session in the same
    # process (pytester runs in-process) must not see the first one's.
    source = """
        import os

        def test_one(isolation):
            assert isolation.resources.timeout == int(os.environ["EXPECT_TIMEOUT"])

        def test_two(isolation):
            assert isolation.resources.timeout == int(os.environ["EXPECT_TIMEOUT"])
    """
    for timeout in ("20", "25"):
        monkeypatch.setenv("EXPECT_TIMEOUT", timeout)
        run(pytester, source, "--isolate=all", f"--isolate-timeout={timeout}"
            ).assert_outcomes(passed=2)


@pytest.mark.parametrize(("marker", "expected"), [
    ('cpu="fast"', "*test_it.py::test_x: isolated(cpu='fast') from marker on test_x: expected "
                   "a number of CPUs > 0*"),
    ("cpus=1", "*isolated(cpus=1) from marker on test_x: unknown argument; did you mean 'cpu'?*"),
    ('memory="lots"', "*isolated(memory='lots') from marker on test_x: expected bytes or a size*"),
    ("pids=0", "*isolated(pids=0)*expected a whole number >= 2*"),
    ('network="wifi"', "*isolated(network='wifi')*expected one of none, host*"),
    ("1", "*isolated(*args=(1,))*keyword arguments only*"),
    ('cap_add=["SYS_PTRCE"]', "*isolated(cap_add=*SYS_PTRCE*) from marker on test_x: expected "
                              "*'SYS_PTRCE' is not one (did you mean 'SYS_PTRACE'?)*"),
    ('seccomp={"deny": ["ptrac"]}', "*isolated(seccomp={'deny': *ptrac*})*'ptrac' is not one "
                                    "(did you mean 'ptrace'?)*"),
    ('privileged="yes"', "*isolated(privileged='yes')*expected True or False*"),
])
def test_bad_marker_values_fail_that_test_at_setup(pytester, marker, expected):
    result = run(pytester, f"""
        import pytest
        @pytest.mark.isolated({marker})
        def test_x(): pass
        def test_y(): pass
    """)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at setup of test_x*", expected])
    assert "INTERNALERROR" not in result.stdout.str()


@pytest.mark.parametrize(("args", "ini", "expected"), [
    (["--isolate-memory=lots"], "", "*--isolate-memory='lots': expected bytes or a size*"),
    (["--isolate-cpu=0"], "", "*--isolate-cpu='0': expected a number of CPUs > 0*"),
    ([], "isolate_pids = many", "*ini isolate_pids='many': expected a whole number*"),
    ([], "isolate_unsupported = maybe", "*isolate_unsupported = 'maybe': expected one of fail*"),
    (["--isolate=all", "--pdb"], "", "*--pdb cannot debug a test inside a container*"
                                     "--isolate=off*"),
])
def test_bad_options_stop_the_run_with_a_usage_error(pytester, args, ini, expected):
    if ini:
        pytester.makeini(f"[pytest]\n{ini}\n")
    result = run(pytester, "def test_x(): pass\n", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_pdb_with_marked_tests_is_a_usage_error(pytester):
    result = run(pytester, """
        import pytest
        @pytest.mark.isolated
        def test_x(): pass
    """, "--pdb")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--pdb cannot debug*--isolate=off*test_it.py::test_x*"])


@pytest.mark.parametrize("mode", ["fail", "skip"])
def test_host_that_cannot_isolate(pytester, monkeypatch, mode):
    from pytest_isolate.runtime import UnsupportedError, probe

    err = UnsupportedError("rootless containers", "unprivileged user namespaces are blocked "
                           "(user.max_user_namespaces = 0)", "sysctl -w user.max_user_namespaces"
                           "=15000, or run as root")
    monkeypatch.setattr(probe, "blocker", lambda: err)
    pytester.makeini(f"[pytest]\nisolate_unsupported = {mode}\n")
    result = run(pytester, """
        import pytest
        @pytest.mark.isolated
        def test_x(): pass
        def test_plain(): pass
    """, "-rs")
    if mode == "fail":
        result.assert_outcomes(passed=1, errors=1)
    else:
        result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*this host cannot isolate the test: rootless containers: "
                                 "unprivileged user namespaces are blocked*"])


def test_refuses_to_load_beside_conflicting_packages(pytester):
    site = pytester.mkdir("site")
    info = site / "pytest_isolated-0.4.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pytest-isolated\nVersion: 0.4\n")
    pytester.syspathinsert(site)
    result = run(pytester, "def test_x(): pass\n")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*cannot run beside the installed package pytest-isolated*"
                                 "pip uninstall pytest-isolated*"])


def test_warnings_reach_the_summary(pytester):
    result = run(pytester, """
        import warnings, pytest

        @pytest.mark.isolated
        def test_warns():
            warnings.warn("raised inside the container", UserWarning)
    """)
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*UserWarning: raised inside the container*"])


def test_a_property_of_any_type_reaches_junit_xml_as_without_isolation(pytester):
    # A date cannot travel in a report frame as it is: it arrives as its str(), which is what
    # junitxml writes for it anyway.
    result = run(pytester, """
        import datetime, pytest

        @pytest.mark.isolated
        def test_prop(record_property):
            record_property("when", datetime.date(2020, 1, 2))
    """, "--junit-xml=out.xml")
    result.assert_outcomes(passed=1)
    assert 'name="when" value="2020-01-02"' in (pytester.path / "out.xml").read_text()


def test_junit_xml_gets_the_figures(pytester, caps_ok):
    result = run(pytester, """
        import pytest

        @pytest.mark.isolated(cpu=2)
        def test_capped():
            pass
    """, "--junit-xml=out.xml")
    result.assert_outcomes(passed=1)
    xml = (pytester.path / "out.xml").read_text()
    assert 'name="isolate_caps" value="cpu=2"' in xml
    assert 'name="isolate_cpu_seconds"' in xml
    assert 'name="isolate_cap_hits" value="none"' in xml


def test_xdist_two_workers(pytester):
    pytest.importorskip("xdist")
    result = run(pytester, """
        import os, pytest
        pytestmark = pytest.mark.isolated(timeout=60)

        @pytest.mark.parametrize("n", range(8))
        def test_n(n):
            assert os.getpid() == 2
    """, "-p", "xdist", "-n", "2")
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(["*8 isolated tests, 0 hit a cap*"])


@pytest.mark.parametrize("args, want", [
    (["--isolate=all"], ["sessionstart: zygote", "collection: zygote", "finish: zygote",
                         "unconfigure: zygote"]),
    (["--isolate=marked"], ["sessionstart: none", "collection: none", "finish: none",
                            "unconfigure: none"]),  # no marked test here
    (["--isolate=all", "-p", "xdist", "-n", "2"],  # a controller runs no test
     ["sessionstart: none", "finish: none", "unconfigure: none"]),
    (["--isolate=all", "--help"], ["unconfigure: none"]),  # no session
], ids=["all", "marked-none", "xdist-controller", "help"])
def test_the_zygote_starts_at_configure_and_only_where_tests_run(pytester, args, want):
    if "xdist" in args:
        pytest.importorskip("xdist")
    pytester.makeconftest(textwrap.dedent("""
        import sys

        def _say(node, when):  # a session, or the config
            config = getattr(node, "config", node)
            if hasattr(config, "workerinput"):
                return  # an xdist worker: its own process, its own zygote
            warm = sys.modules.get("pytest_isolate.runtime.warm.pool")
            up = warm is not None and warm.pool_process() is not None
            with open("zygote.log", "a") as f:
                f.write(f"{when}: {'zygote' if up else 'none'}\\n")

        def pytest_sessionstart(session):
            _say(session, "sessionstart")

        def pytest_collection(session):
            _say(session, "collection")

        def pytest_sessionfinish(session):
            _say(session, "finish")

        def pytest_unconfigure(config):  # before the plugin's, which stops the zygote
            _say(config, "unconfigure")
    """))
    pytester.makepyfile(test_it="""
        def test_one(): pass
        def test_two(): pass
    """)
    # A fresh process: the zygote of the process running this test must not count.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    if "--help" not in args:
        result.assert_outcomes(passed=2)
    if os.geteuid() != 0:  # warm containers are root's: rootless ones are built cold
        want = [line.replace("zygote", "none") for line in want]
    assert (pytester.path / "zygote.log").read_text().splitlines() == want


def test_coverage_counts_lines_run_inside(pytester):
    pytest.importorskip("pytest_cov")
    pytester.makepyfile(mod="""
        def inside(x):
            if x > 0:
                return "positive"
            return "other"
    """)
    pytester.makepyfile(test_it="""
        import pytest, mod

        @pytest.mark.isolated
        def test_inside():
            assert mod.inside(1) == "positive"
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--cov=mod",
                                           "--cov-report=term-missing")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["mod.py * 4 * 1 * 75%*4"])  # only `return "other"` missed


@pytest.mark.parametrize("keep", ["failed", "always"])
def test_isolate_keep_leaves_what_the_test_wrote(pytester, keep):
    import glob

    from pytest_isolate.runner import remove_tree

    result = run(pytester, """
        import pytest
        pytestmark = pytest.mark.isolated

        def test_writes_and_fails():
            with open("/etc/pti-kept-marker", "w") as f:
                f.write("written inside")
            assert False

        def test_writes_and_passes():
            with open("/etc/pti-kept-marker", "w") as f:
                f.write("written inside")
    """, f"--isolate-keep={keep}")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*kept files (--isolate-keep*",
                                 "*test_writes_and_fails: /dev/shm/pytest-isolate-keep-*"])
    kept = {}
    for name in ("test_writes_and_fails", "test_writes_and_passes"):
        dirs = glob.glob(f"/dev/shm/pytest-isolate-keep-{os.getuid()}/test_it.py_{name}")
        kept[name] = bool(dirs)
        for d in dirs:
            layers = dict(line.split("\t")[::-1] for line in
                          Path(d, "layers").read_text().splitlines())
            upper = layers.get("/etc") or layers["/"] + "/etc"  # rootless: one per directory
            assert Path(d, upper, "pti-kept-marker").read_text() == "written inside"
            remove_tree(d)
    os.rmdir(f"/dev/shm/pytest-isolate-keep-{os.getuid()}")
    assert kept == {"test_writes_and_fails": True, "test_writes_and_passes": keep == "always"}
    assert not os.path.exists("/etc/pti-kept-marker")


def test_faulthandler_timeout_does_not_hang_isolated_tests(pytester):
    # pytest arms faulthandler's watchdog thread around each test: a fork used to copy its
    # state but not the thread, and the copy hung on its first faulthandler timer call
    pytester.makeini("[pytest]\nfaulthandler_timeout = 30\n")
    result = run(pytester, """
        import pytest

        @pytest.mark.isolated(timeout=20)
        def test_one(): pass

        @pytest.mark.isolated
        def test_two(): pass
    """)
    result.assert_outcomes(passed=2)
