"""Long-lived containers from busybox images and the host root: run, exec, spawn, files,
layers, caps, stop; and nothing left behind."""

from __future__ import annotations

import os
import socket
import time

import pytest

from pytest_isolate.runtime import Resources, SetupError, Spec, SpecError
from pytest_isolate.runtime.live import Container
from tests.conftest import children, require, require_caps, sleeps_with, wait_until
from tests.support import images as imgs

ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    missing = imgs.available()
    require(missing is None, missing or "")
    work = tmp_path_factory.mktemp("images")
    os.chmod(work, 0o755)
    return {"dir": imgs.rootfs(str(work / "tree")),
            "export": imgs.export_tar(str(work / "export.tar"), str(work)),
            "save": imgs.docker_save(str(work / "save.tar"), str(work)),
            "oci": imgs.oci_layout(str(work / "oci"), str(work))}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTEST_ISOLATE_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("kind", ["dir", "export", "save", "oci"])
def test_a_busybox_container_runs_in_the_images_root(built, kind):
    with Container(Spec(image=built[kind], hostname="bb")) as c:
        r = c.run(["sh", "-c", "echo $$; hostname; ls /; cat /etc/hello"])
        assert r.returncode == 0, r.stderr
        pid, hostname, *rest = r.stdout.decode().split()
        assert int(pid) > 2  # a child of pid 1, beside the workload that keeps it alive
        assert hostname == "bb"
        assert {"bin", "etc", "proc", "dev", "tmp"} <= set(rest)
        assert "hello" in rest and "usr" not in rest  # the image's root, not the host's


@pytest.mark.parametrize("kind", ["save", "oci"])
def test_layers_whiteouts_and_opaque_directories_apply(built, kind):
    with Container(Spec(image=built[kind])) as c:
        r = c.run(["sh", "-c", "ls /etc; echo ---; ls /opt/old; echo ---; pwd; echo $FOO"])
        etc, old, rest = r.stdout.decode().split("---")
        assert "gone" not in etc.split() and "layer2" in etc.split() and "hello" in etc.split()
        assert old.split() == ["b"]  # layer 1's /opt/old/a is hidden
        # WorkingDir and Env from the image config
        assert rest.split() == ["/opt", "bar" if kind == "save" else "oci"]


def test_exec_sees_what_an_earlier_run_wrote_and_files_go_both_ways(built):
    with Container(Spec(image=built["export"])) as c:
        c.run(["sh", "-c", "echo written > /tmp/note"], check=True)
        assert c.run(["cat", "/tmp/note"]).stdout == b"written\n"
        assert c.read_file("/tmp/note") == b"written\n"
        c.write_file("/etc/from-host", "hi")
        assert c.run(["cat", "/etc/from-host"]).stdout == b"hi"
        with pytest.raises(FileNotFoundError):
            c.read_file("/no/such/file")


def test_a_missing_program_is_a_clear_error(built):
    with Container(Spec(image=built["export"])) as c, pytest.raises(
            SetupError, match=r"(?s)exec: python3.*PATH"):
        c.run(["python3", "-c", "1"])


def test_a_spawned_server_is_reached_from_another_exec(built):
    with Container(Spec(image=built["export"])) as c:
        server = c.spawn(["httpd", "-f", "-p", "8080", "-h", "/etc"])
        for _ in range(100):
            r = c.run(["wget", "-qO-", "http://127.0.0.1:8080/hello"])
            if r.returncode == 0:
                break
            time.sleep(0.02)
        assert r.stdout == b"hello from the image\n"
        server.kill()
        assert server.wait(5) == -9


def test_a_spawned_server_is_reached_from_the_host_over_veth(built):
    if not ROOT:
        pytest.skip("rootless: a veth to the host needs root")

    with Container(Spec(image=built["export"], network="veth")) as c:
        c.spawn(["httpd", "-f", "-p", "8080", "-h", "/etc"])
        for _ in range(100):
            try:
                with socket.create_connection((c.ip, 8080), timeout=1) as s:
                    s.sendall(b"GET /hello HTTP/1.0\r\n\r\n")
                    reply = b""
                    while chunk := s.recv(4096):
                        reply += chunk
                break
            except ConnectionRefusedError:
                time.sleep(0.02)
        assert reply.endswith(b"hello from the image\n")


def test_the_memory_cap_applies_to_exec(built):
    require_caps()
    with Container(Spec(image=built["export"], resources=Resources(memory="32M"))) as c:
        r = c.run(["sh", "-c", "dd if=/dev/zero bs=1M count=200 | cat > /tmp/fill; echo $?"])
        assert c.stats().oom_kills > 0 or r.returncode != 0, r


def test_an_exec_that_cannot_be_placed_in_the_cgroup_runs_nothing(built, monkeypatch):
    # Where this process places the exec's helper (cgroup v2 without clone3) and the write
    # fails, the error reaches the caller and the program never runs outside the cgroup.
    require_caps()
    with Container(Spec(image=built["export"], resources=Resources(pids=64))) as c:
        cgroup = c._proc._launch.cgroup
        monkeypatch.setattr(cgroup, "self_join_files", lambda: [])

        def refuse(pid):
            raise SetupError("join cgroup", "cgroup.procs", 1, "refused by the test")
        monkeypatch.setattr(cgroup, "add_process", refuse)
        before = children()
        with pytest.raises(SetupError, match="refused by the test"):
            c.run(["sh", "-c", "echo > /tmp/ran"])
        assert children() == before, "the helper was not reaped"
        monkeypatch.undo()
        # the container is still usable, and the refused program never ran in it
        listing = c.run(["sh", "-c", "sleep 0.2; ls /tmp"])
        assert listing.returncode == 0 and b"ran" not in listing.stdout.split()


def test_call_runs_python_in_a_host_root_container_and_is_refused_for_images(built):
    with Container(Spec(hostname="h")) as c:
        assert c.call(lambda: (os.getpid() > 2, socket.gethostname())) == [True, "h"]
    with Container(Spec(image=built["export"])) as c, pytest.raises(SpecError, match="call"):
        c.call(lambda: 1)


def test_stop_ends_every_process_and_leaves_nothing(built):
    marker = f"{time.time():.6f}"
    c = Container(Spec(image=built["export"]))
    c.spawn(["sh", "-c", f"sleep 1000{marker} & sleep 1000{marker}"])
    assert wait_until(lambda: len(sleeps_with(marker)) == 2), sleeps_with(marker)
    c.stop(grace=1)
    assert sleeps_with(marker) == []
    assert not c.running
    with pytest.raises(SetupError, match="stopped"):
        c.run(["true"])


def test_failures_of_run_check_and_call_are_isolation_errors(built):
    from pytest_isolate.runtime import CommandFailed, IsolationError, WorkloadFailed

    with Container(Spec(image=built["dir"])) as c:
        with pytest.raises(CommandFailed, match=r"sh -c echo oops >&2; exit 3: exit status 3: "
                                                r"oops") as info:
            c.run(["sh", "-c", "echo oops >&2; exit 3"], check=True)
        assert isinstance(info.value, IsolationError) and info.value.result.returncode == 3
    with Container(Spec()) as c:
        def boom():
            raise KeyError("inside")
        with pytest.raises(WorkloadFailed, match="raised KeyError") as failed:
            c.call(boom)
        error = failed.value.result.error
        assert error.type == "KeyError" and "boom" in error.traceback
