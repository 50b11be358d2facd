"""Confinement through the isolated marker, as users see it: a call denied with action kill
fails the test naming the call and the cap-hit column says seccomp; errno gives EPERM;
privileged=True is said in the test's report; cap_add and cap_drop change what it holds."""

from __future__ import annotations

import textwrap

import pytest

from pytest_isolate.runtime.confine.policy import syscall_table

from .test_marker import run


def test_a_call_denied_with_kill_fails_the_test_naming_the_call(pytester):
    nr = syscall_table().get("ptrace")
    if nr is None:
        pytest.skip("no syscall table for this machine")
    result = run(pytester, """
        import ctypes, errno, os, pytest

        def ptrace():
            libc = ctypes.CDLL(None, use_errno=True)
            return libc.ptrace(0, 0, 0, 0), ctypes.get_errno()

        @pytest.mark.isolated(seccomp={"deny": ["ptrace"], "action": "kill"})
        def test_killed():
            ptrace()

        @pytest.mark.isolated(seccomp=["ptrace"])
        def test_eperm():
            assert ptrace() == (-1, errno.EPERM)

        @pytest.mark.isolated
        def test_default_allows_ptrace_traceme_here():
            assert ptrace()[0] == 0  # PTRACE_TRACEME is not in the default profile
    """, "--junit-xml=out.xml")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([f"*killed by seccomp: syscall ptrace ({nr}) denied*"])
    xml = (pytester.path / "out.xml").read_text()
    assert 'name="isolate_cap_hits" value="seccomp"' in xml
    assert "value=\"seccomp={'deny': ['ptrace'], 'action': 'kill'}\"" in xml
    assert "INTERNALERROR" not in result.stdout.str()


def test_privileged_is_said_in_the_report_and_caps_change_what_the_test_holds(pytester):
    result = run(pytester, """
        import pytest

        def eff():
            with open("/proc/self/status") as f:
                line = next(x for x in f if x.startswith("CapEff:"))
            return int(line.split()[1], 16)

        @pytest.mark.isolated(privileged=True)
        def test_privileged():
            assert eff() >> 21 & 1  # CAP_SYS_ADMIN
            assert 0, "show the report"

        @pytest.mark.isolated(cap_add=["SYS_PTRACE"], cap_drop=["CAP_NET_RAW"])
        def test_caps():
            assert eff() >> 19 & 1 and not eff() >> 13 & 1
            assert not eff() >> 21 & 1
    """, "--junit-xml=out.xml")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*pytest-isolate: privileged*",
                                 "*this test ran as full host root (privileged=True)*"])
    xml = (pytester.path / "out.xml").read_text()
    assert 'name="isolate_confinement" value="privileged"' in xml
    assert 'value="cap_add=SYS_PTRACE,cap_drop=NET_RAW"' in xml


def test_the_containers_fixture_takes_the_confinement_too(pytester):
    result = run(pytester, textwrap.dedent("""
        def test_it(containers):
            c = containers.start(seccomp=["uname"], cap_drop=["CHOWN"])
            out = c.run(["python3", "-c", "import os\\ntry:\\n os.uname()\\nexcept OSError as e:"
                         "\\n print(e.errno)"]).stdout
            assert out.strip() == b"1"
    """))
    result.assert_outcomes(passed=1)
