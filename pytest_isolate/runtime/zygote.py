"""The zygote: a small helper process that builds containers ahead of use ("warm" containers).

Why a separate, freshly started interpreter: a container's init forked from the caller copies
the caller's page tables (about 25 ms per GB), and the caller of a test suite is big. Forked
from this small process, an init costs well under a millisecond to create, and building its
namespaces and root filesystem overlaps whatever the caller does meanwhile.

Protocol, over a SOCK_SEQPACKET socket (one JSON message each way per container):
  caller: {"network": "none" | "host", "chores": {"mkdir": [dir], "write": [[file, value]],
           "rmdir": [dir]} (optional)}
  zygote: {"pid": <host pid of init>, "hostname": <its name>} or {"error": <setup_error frame>},
          with "chores": {"busy": [dirs not removed], "error": text or null} when asked
The chores are the caller's cgroup bookkeeping (cgroups/spares.py): the caller plans them, the
zygote carries them out after the build, while the caller sleeps through its current test.
A warm init has fresh mount, uts, ipc, cgroup and (unless network="host") net namespaces, the
host tree overlay, /proc, /sys, /dev, pivot_root done, lo up, and is pid 1 of a new pid
namespace. It runs no user code: it reaps orphans until it is killed. The caller's workload
joins it (see warm.py).

Lifetime: the zygote dies with the caller (PDEATHSIG, and EOF on the socket); each init dies
with the zygote (PDEATHSIG); the kernel kills a pid namespace when its init dies. So nothing
survives the caller, whatever way it ends.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import socket
import sys

from . import namespaces, rootfs
from . import syscalls as sc
from .channel import read_all_frames, write_frame
from .errors import SetupError

HOSTNAME = "isolated"  # Spec's default: a workload that keeps it need not set it again


def _init(network: str, plan, ready_w: int) -> None:
    """pid 1 of a warm container: build it, say so, then reap orphans until killed."""
    code = 125
    try:
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes pause() to reap
        # Its own cgroup namespace too, rooted at the caller's cgroup (the zygote's), which an
        # uncapped workload joins: /proc/self/cgroup shows "/" with no unshare of its own.
        flags = sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWCGROUP
        if network == "none":
            flags |= sc.CLONE_NEWNET
        namespaces.unshare_namespaces(flags)
        root = rootfs.prepare_scratch(None)
        rootfs.mount_host_tree(root, plan, False)
        rootfs.mount_proc(root)
        rootfs.mount_sys(root)
        rootfs.mount_dev(root, False)
        rootfs.pivot_into(root)
        namespaces.set_hostname(HOSTNAME)
        if network == "none":
            namespaces.bring_up_loopback()
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        write_frame(ready_w, {"t": "ready"})
        os.close(ready_w)
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                signal.pause()
            except InterruptedError:
                pass
    except SetupError as e:
        write_frame(ready_w, e.to_frame())
    except BaseException as e:  # any failure here is a setup failure to report
        err = SetupError("warm container setup", "-", getattr(e, "errno", None),
                         f"{type(e).__name__}: {e}")
        write_frame(ready_w, err.to_frame())
    finally:
        os._exit(code)


def _build(network: str) -> dict:
    plan = rootfs.host_plan(split=False)
    ready_r, ready_w = os.pipe()
    with namespaces.pid_namespace_for_next_fork():
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            _init(network, plan, ready_w)
    os.close(ready_w)
    frames = read_all_frames(ready_r)
    os.close(ready_r)
    if frames and frames[0]["t"] == "ready":
        return {"pid": pid, "hostname": HOSTNAME}
    with contextlib.suppress(ChildProcessError):  # SIGCHLD is ignored: may be reaped already
        os.waitpid(pid, 0)
    error = frames[0] if frames else SetupError(
        "warm container setup", "-", None, "init exited without a word").to_frame()
    return {"error": error}


def _chores(chores: dict) -> dict:
    """Remove the directories in "rmdir" (once each: EBUSY while exits settle is reported,
    not waited out); make those in "mkdir" and write the files, undoing the makes on error."""
    busy = []
    for d in chores.get("rmdir", ()):
        try:
            os.rmdir(d)
        except FileNotFoundError:
            pass
        except OSError:
            busy.append(d)
    made: list[str] = []
    path = ""
    try:
        for path in chores.get("mkdir", ()):
            os.mkdir(path)
            made.append(path)
        for path, value in chores.get("write", ()):
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
    except OSError as e:
        for d in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(d)
        return {"busy": busy, "error": f"{path}: {e.strerror}"}
    return {"busy": busy, "error": None}


def serve(sock: socket.socket) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # inits are reaped by the kernel
    while True:
        try:
            data = sock.recv(4096)
        except InterruptedError:
            continue
        except ConnectionResetError:  # the caller closed with our last reply unread
            return
        if not data:
            return
        request = json.loads(data)
        try:
            reply = _build(request["network"])
        except SetupError as e:
            reply = {"error": e.to_frame()}
        if "chores" in request:
            reply["chores"] = _chores(request["chores"])
        try:
            sock.send(json.dumps(reply).encode())
        except (BrokenPipeError, ConnectionResetError):
            return


def main() -> None:
    fd, parent = int(sys.argv[1]), int(sys.argv[2])
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the caller died before prctl
        os._exit(0)
    sock = socket.socket(fileno=fd)
    # SCHED_IDLE: build only on a CPU nobody else wants. Racing the caller's freshly forked
    # test for a CPU cost 0.6-0.9 ms per test on 2 CPUs (bench/per_test_overhead.py). The
    # caller never starves it: when it waits for a container its own CPU goes idle. Each
    # init returns to SCHED_OTHER before it says "ready". It is not "only on an idle CPU":
    # under EEVDF (Linux 6.6+) a waiting SCHED_IDLE task is still picked beside a running
    # test at times (docs/explanation/architecture.md, "Where the remaining gap is").
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    os.chdir("/")
    # Every page the zygote writes while an init it forked lives is copied. Its objects so far
    # are frozen out of the collector's reach, so that a collection does not touch them all.
    gc.freeze()
    serve(sock)
    # Nothing left to flush or free: skipping the interpreter's finalization makes the
    # caller's shutdown wait 1.3 ms instead of 7.5 ms (measured at session end).
    os._exit(0)


if __name__ == "__main__":
    main()
