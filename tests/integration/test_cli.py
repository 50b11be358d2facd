"""The CLI as a user runs it: a real subprocess, real containers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from pytest_isolate.runtime.confine.policy import syscall_table

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cli(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO}
    return subprocess.run([sys.executable, "-m", "pytest_isolate", *args], input=input,
                          capture_output=True, env=env, timeout=60)


def test_run_passes_exit_status_stdio_and_hostname_through():
    p = cli("run", "--hostname", "clibox", "--", "sh", "-c", "cat; hostname; echo $$; exit 7",
            input=b"from-stdin\n")
    assert p.returncode == 7
    assert p.stdout.decode().split() == ["from-stdin", "clibox", "2"]


def test_run_reports_a_signal_as_128_plus_n():
    assert cli("run", "--", "sh", "-c", "kill -KILL $$").returncode == 128 + 9


def test_run_of_a_missing_program_exits_127_with_a_hint():
    p = cli("run", "--", "no-such-program-pti")
    assert p.returncode == 127
    assert b"no-such-program-pti" in p.stderr and b"hint:" in p.stderr


def test_run_bad_option_value_names_the_option():
    p = cli("run", "--hostname", "x" * 65, "--", "true")
    assert p.returncode == 2 and b"--hostname" in p.stderr


def test_run_network_none_has_only_loopback():
    p = cli("run", "--", "ls", "/sys/class/net")
    assert p.stdout.split() == [b"lo"]


def test_run_network_veth_has_eth0_and_both_addresses():
    import os

    p = cli("run", "--network", "veth", "--", "sh", "-c",
            "ls /sys/class/net; echo $PYTEST_ISOLATE_IP $PYTEST_ISOLATE_HOST_IP")
    if os.geteuid() != 0:
        assert p.returncode == 125 and b"needs root" in p.stderr
        return
    words = p.stdout.split()
    assert words[:2] == [b"eth0", b"lo"] and words[2] != words[3], p.stdout


def test_check_lists_every_probe_with_a_verdict():
    p = cli("check")
    assert p.returncode == 0
    out = p.stdout.decode()
    for name in ("pid namespace", "pivot_root", "overlayfs in a user namespace", "cgroup mode",
                 "veth pairs between namespaces", "netem impairments", "time namespace",
                 "seccomp filter", "seccomp actions"):
        assert name in out
    assert "ok    veth pairs between namespaces" in out
    # the default filter was loaded for real and denied clock_settime (EPERM, not EINVAL)
    assert "ok    seccomp filter" in out and "ok    seccomp actions" in out, out
    assert ("user namespace for root" in out) == (os.geteuid() == 0)
    assert "available" in out.splitlines()[-1]
    # How capped containers join their cgroup, as the kernel here allows (the CLI has 1 thread).
    from pytest_isolate.runtime.cgroups import _detect

    placement = next(line for line in out.splitlines() if "cgroup placement" in line)
    expected = "at birth (clone3" if _detect()[0] == "v2" else "the container moves itself"
    assert expected in placement, placement


def test_run_takes_the_confinement_flags():
    if "uname" not in syscall_table():
        pytest.skip("no syscall table for this machine")
    p = cli("run", "--seccomp", "uname", "--seccomp-action", "kill", "--", "uname")
    assert p.returncode == 128 + signal.SIGSYS and b"killed by seccomp" in p.stderr, p
    p = cli("run", "--cap-drop", "net_raw", "--cap-add", "CAP_SYS_PTRACE,MKNOD", "--",
            "grep", "CapEff", "/proc/self/status")
    eff = int(p.stdout.split()[1], 16)
    assert eff >> 19 & 1 and eff >> 27 & 1 and not eff >> 13 & 1 and not eff >> 21 & 1
    p = cli("run", "--cap-add", "SYS_PTRCE", "--", "true")
    assert p.returncode == 2 and b"--cap-add" in p.stderr and b"SYS_PTRACE" in p.stderr
    if os.geteuid() == 0:
        p = cli("run", "--privileged", "--", "grep", "Seccomp:", "/proc/self/status")
        assert p.stdout.split()[1] == b"0"


def test_cleanup_runs_and_says_what_it_removed():
    p = cli("cleanup")
    assert p.returncode == 0 and b"leftover(s) of dead runs removed" in p.stdout


def test_run_with_caps_prints_the_figures_with_stats():
    from pytest_isolate.runtime.cgroups import writable_controllers

    if not {"cpu", "memory", "pids"} <= writable_controllers():
        import pytest

        pytest.skip("rootless: no writable cgroup here (cgroup v1 has no delegation to users)")
    p = cli("run", "--cpu", "0.5", "--memory", "64M", "--pids", "16", "--stats", "--",
            "sh", "-c", "exit 3")
    assert p.returncode == 3
    assert b"stats: cpu " in p.stderr and b"caps hit: none" in p.stderr


def test_run_timeout_kills_and_says_so():
    p = cli("run", "--timeout", "0.5", "--", "sleep", "30")
    assert p.returncode == 128 + 9
    assert b"timeout 0.5s exceeded" in p.stderr


def test_run_image_uses_the_images_root(tmp_path, monkeypatch):
    from tests.support import images as imgs

    os.chmod(tmp_path, 0o755)
    monkeypatch.setenv("PYTEST_ISOLATE_CACHE", str(tmp_path / "cache"))
    image = imgs.docker_save(str(tmp_path / "save.tar"), str(tmp_path))
    p = cli("run", "--image", image, "--", "sh", "-c", "pwd; echo $FOO; cat /etc/layer2")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [b"/opt", b"bar", b"from", b"layer", b"2"]
    bad = cli("run", "--image", str(tmp_path / "missing.tar"), "--", "true")
    assert bad.returncode == 125 and b"no such file" in bad.stderr
