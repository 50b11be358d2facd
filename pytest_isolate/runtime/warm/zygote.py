"""The zygote: a small helper process that builds containers ahead of use ("warm" containers).

Why a separate, freshly started interpreter: a container's init forked from the caller copies
the caller's page tables (about 25 ms per GB), and the caller of a test suite is big. Built by
this small process, a container costs the caller nothing but the join, and building its
namespaces and root filesystem overlaps whatever the caller does meanwhile.

Protocol, over a SOCK_SEQPACKET socket (one JSON message each way per container):
  caller: {"network": "none" | "host", "chores": {"mkdir": [dir], "write": [[file, value]],
           "rmdir": [dir]} (optional)}
  zygote: {"hostname": <its name>} with a pidfd of the container's init (SCM_RIGHTS), or
          {"error": <setup_error frame>}, with "chores": {"busy": [dirs not removed],
          "error": text or null} when asked
The chores are the caller's cgroup bookkeeping (cgroups/spares.py): the caller plans them, the
zygote carries them out after the build, while the caller sleeps through its current test.
A warm init has fresh mount, uts, ipc, cgroup and (unless network="host") net namespaces, the
host tree overlay, /proc, /sys, /dev, pivot_root done, lo up, and is pid 1 of a new pid
namespace. It runs no user code. The caller's workload joins it (see warm.py).

How a container is built (`_build_around_sleeper`): its init is a *sleeper*, a clone of this
process that shares its memory (CLONE_VM) and only sits in pause(), made with all the new
namespaces at once; the zygote then joins them, mounts the tree, pivots, and goes back home.
So no init ever runs Python: no page of the zygote is copied, no page table either, and an
init's exit frees no memory. (The init used to be a fork that built its container itself: of
its 4.6 ms of CPU per container, 1.1 ms were copy-on-write faults on the zygote's pages and
0.35 ms the unmapping at its exit.) The new /proc must show the init's pid namespace, not the
zygote's: proc's "pidns" option does that. Kernels without it (before 2025) get the forked
init (`_build_forked`); the first build finds out which.

Lifetime: the zygote dies with the caller (PDEATHSIG, and EOF on the socket); it is pid 1 of a
pid namespace of its own, in which every init it makes is nested, so when it dies, however it
dies, the kernel kills every init (and with it every container) it made. So nothing survives
the caller, whatever way it ends.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import signal
import socket
import sys

from .. import plan as plans
from .. import syscalls as sc
from ..errors import SetupError
from ..kernel import mountinfo
from ..kernel.namespaces import pid_namespace_for_next_fork
from ..process import protocol
from ..setup import Context, run_steps

HOSTNAME = "isolated"  # Spec's default: a workload that keeps it need not set it again


def _init(network: str, layers: tuple, ready_w: int) -> None:
    """pid 1 of a warm container: build it, say so, then reap orphans until killed."""
    code = 125
    try:
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes pause() to reap
        # Its own cgroup namespace too, rooted at the caller's cgroup (the zygote's), which an
        # uncapped workload joins: /proc/self/cgroup shows "/" with no unshare of its own.
        plan = plans.build_plan(network, HOSTNAME)
        run_steps([s for s in plan.init if s.name != plans.FORK_WORKLOAD], Context(layers))
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        protocol.write_frame(ready_w, protocol.ready())
        os.close(ready_w)
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                signal.pause()
            except InterruptedError:
                pass
    except SetupError as e:
        protocol.write_frame(ready_w, e.to_frame())
    except BaseException as e:  # any failure here is a setup failure to report
        err = SetupError("warm container setup", "init", getattr(e, "errno", None),
                         f"{type(e).__name__}: {e}")
        protocol.write_frame(ready_w, err.to_frame())
    finally:
        os._exit(code)


def _build_forked(network: str, layers: tuple) -> int:
    """A container whose init is a fork of this process that builds it itself; its pidfd."""
    ready_r, ready_w = os.pipe()
    with pid_namespace_for_next_fork():
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            _init(network, layers, ready_w)
    os.close(ready_w)
    frames = protocol.read_all_frames(ready_r)
    os.close(ready_r)
    if frames and frames[0]["t"] == protocol.READY:
        return os.pidfd_open(pid)
    with contextlib.suppress(ChildProcessError):  # SIGCHLD is ignored: may be reaped already
        os.waitpid(pid, 0)
    if frames:
        raise SetupError.from_frame(frames[0])
    raise SetupError("warm container setup", "init", None, "init exited without a word")


# Where the zygote goes back to after each build (opened per build: see below).
_HOME = (("mnt", sc.CLONE_NEWNS), ("uts", sc.CLONE_NEWUTS), ("ipc", sc.CLONE_NEWIPC),
         ("net", sc.CLONE_NEWNET), ("cgroup", sc.CLONE_NEWCGROUP),
         ("pid_for_children", sc.CLONE_NEWPID))


def _go_home(home: list[int]) -> None:
    for fd, (_, nstype) in zip(home, _HOME, strict=True):
        try:
            sc.setns(fd, nstype)
        except OSError:
            os._exit(70)  # stranded in a container: the caller reports "the helper exited"
    for fd in home:
        os.close(fd)


def _build_around_sleeper(network: str, layers: tuple) -> int:
    """A container whose init is a sleeper (see the module docstring); its pidfd."""
    # proc's pidns option: the new /proc shows the sleeper's pid namespace, not the zygote's.
    plan = plans.build_plan(network, HOSTNAME, proc_pidns="/proc/thread-self/ns/pid_for_children")
    try:
        pid, pidfd = sc.clone_sleeper(plan.flags | sc.CLONE_NEWPID)
    except OSError as e:
        raise SetupError("clone", "warm container init", e.errno, str(e)) from None
    try:
        # Opened after the clone, so the sleeper's copy of the fd table (which a container
        # process may look at in /proc/1/fd) holds no way back into the host's namespaces.
        home = [os.open(f"/proc/thread-self/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
                for name, _ in _HOME]
        try:
            try:
                sc.setns(pidfd, plan.flags | sc.CLONE_NEWPID)  # pid: for proc's pidns option
            except OSError as e:
                raise SetupError("setns", "warm container init", e.errno, str(e)) from None
            run_steps(plan.build, Context(layers))  # the sleeper's root and cwd move along
        finally:
            _go_home(home)
        # It inherited SCHED_IDLE; killed at SCHED_OTHER, its teardown is not put off.
        os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))
    except BaseException as e:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.close(pidfd)
        if isinstance(e, Exception) and not isinstance(e, SetupError):
            # any failure here is a setup failure to report, as a forked init reports it
            raise SetupError("warm container setup", "init", getattr(e, "errno", None),
                             f"{type(e).__name__}: {e}") from None
        raise
    return pidfd


# Whether inits are sleepers: None until the first build tells (proc's pidns option).
_sleepers: list[bool | None] = [None]


def _build(network: str) -> int:
    """The pidfd of a new warm container's init."""
    layers = mountinfo.host_plan(split=False)
    if _sleepers[0] is not False:
        try:
            pidfd = _build_around_sleeper(network, layers)
            _sleepers[0] = True
            return pidfd
        except SetupError as e:
            if _sleepers[0] or e.errno != errno.EINVAL or e.step not in ("mount proc", "clone"):
                raise
            _sleepers[0] = False  # this kernel lacks proc's pidns option (or CLONE_PIDFD)
    return _build_forked(network, layers)


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
        return protocol.chores_done(busy, f"{path}: {e.strerror}")
    return protocol.chores_done(busy, None)


def serve(sock: socket.socket) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # inits are reaped by the kernel
    while True:
        try:
            data = sock.recv(1 << 16)
        except InterruptedError:
            continue
        except ConnectionResetError:  # the caller closed with our last reply unread
            return
        if not data:
            return
        request = json.loads(data)
        pidfd = -1
        error = None
        try:
            pidfd = _build(request["network"])
        except SetupError as e:
            error = e.to_frame()
        chores = _chores(request["chores"]) if "chores" in request else None
        reply = protocol.zygote_reply(HOSTNAME, error, chores)
        try:
            socket.send_fds(sock, [reply], [pidfd] if pidfd >= 0 else [])
        except (BrokenPipeError, ConnectionResetError):
            return
        finally:
            if pidfd >= 0:
                os.close(pidfd)


def main() -> None:
    fd = int(sys.argv[1])
    # If the caller died before this prctl, its end of the socket is closed: serve() then
    # reads EOF (or fails to answer) and returns.
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    # Ctrl-C at a terminal reaches the zygote too: it ends with the caller, not on its own.
    # And a sleeper must inherit no Python handler (syscalls.clone_sleeper).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sc.handlers_installed():
        _sleepers[0] = False
    sock = socket.socket(fileno=fd)
    # SCHED_IDLE: build ahead only on a CPU nobody else wants. Racing the caller's freshly
    # forked test for a CPU cost 0.6-0.9 ms per test on 2 CPUs (bench/per_test_overhead.py).
    # A build the caller waits for is raised to SCHED_OTHER by the caller for the wait
    # (pool._Pool._hurry): on a host busy with other work it would starve. Each init returns
    # to SCHED_OTHER before it is handed out. It is not "only on an idle CPU":
    # under EEVDF (Linux 6.6+) a waiting SCHED_IDLE task is still picked beside a running
    # test at times (docs/explanation/architecture.md, "Where the remaining gap is").
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    os.chdir("/")
    # With forked inits (older kernels), every page the zygote writes while one lives is
    # copied. Its objects so far are frozen out of the collector's reach, so that a
    # collection does not touch them all.
    gc.freeze()
    serve(sock)
    # Nothing left to flush or free: skipping the interpreter's finalization makes the
    # caller's shutdown wait 1.3 ms instead of 7.5 ms (measured at session end).
    os._exit(0)


if __name__ == "__main__":
    main()
