"""The child side of a launch: the stages a container's processes go through.

Rule: every stage runs its plan's steps through setup.run_steps (the order is plan.py's) and
never returns into the caller's stack; any failure becomes a "setup_error" frame naming the
step, and exit status 125.

  caller                  outer (rootless)        init = pid 1              workload = pid 2
  ------                  ----------------        ------------              ----------------
  root: unshare(NEWPID)
   on this thread; fork ------------------------> PDEATHSIG; alive check
                                                  plan.init: [join netns,]
                                                  unshare, [time ns,]
                                                  fork workload ----------> close foreign fds
                                                  scratch, host tree or     no_new_privs
                                                  image, proc, sys, dev,    wait for "go"
                                                  pivot, hostname, [lo]
  rootless: fork -------> PDEATHSIG; alive check
                          plan.outer: [join
                          netns,] user ns,
                          unshare(...|PID)
                          fork -----------------> plan.init as above,
                          forward signals; wait;  without the unshare
                          exit with init's code   "go" -------------------> run / exec
                                                  reap all, forward signals
  <---------------------------------------------------------------- frame "return" | "raise"
                                                                            | "exec_error"
  <---------------------------------------------- frame "exit" {status}

Warm (warm/): the caller forks the workload straight into init's pid namespace (pid 2); it
runs plan.warm_steps (one setns(pidfd), then its own cgroup namespace when capped) and runs.
Killing the parent's direct child tears everything down: PDEATHSIG chains outer -> init, and
when init exits the kernel kills the whole pid namespace.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import traceback
from collections.abc import Callable

from .. import plan as plans
from .. import syscalls as sc
from ..cgroups.driver import join_self
from ..errors import SetupError
from ..kernel import pid1
from ..setup import Context, run_steps
from . import protocol
from .launch import SETUP_FAILED, ChildEnds, close_foreign


def in_child(result_w: int, stage: str, body: Callable[[], None]) -> None:
    """Run a child stage; never return into the caller's stack."""
    code = SETUP_FAILED
    try:
        body()
        code = 0
    except SetupError as e:
        with contextlib.suppress(OSError):
            protocol.write_frame(result_w, e.to_frame())
    except BaseException as e:  # anything else during setup is still a setup failure
        err = SetupError(stage, "container", getattr(e, "errno", None),
                         f"{type(e).__name__}: {e}")
        with contextlib.suppress(OSError):
            protocol.write_frame(result_w, err.to_frame())
    finally:
        os._exit(code)


def die_with_parent(alive_r: int | None) -> None:
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    # The parent may have died before prctl: then the alive pipe has no writer left.
    if alive_r is not None:
        readable, _, _ = select.select([alive_r], [], [], 0)
        if readable and not os.read(alive_r, 1):
            os._exit(SETUP_FAILED)


def wait_placed(place_r: int | None) -> None:
    """Block until the parent has written this process into its cgroup (only when it places
    it). On EOF the parent failed; it kills us and reports why itself."""
    if place_r is not None:
        placed = os.read(place_r, 1)
        os.close(place_r)
        if placed != b"p":
            raise SetupError("wait placed", "cgroup", None, "the caller did not place this "
                             "container in its cgroup")


def cold_stage(spec, ends: ChildEnds, workload, joins: list[str], netns_fd: int | None,
               host_layers: tuple) -> None:
    """The caller's child: as root, init itself; rootless, the outer stage, which forks init."""
    # Born in its cgroup (no "placed" byte to wait for), the plan forks the workload early.
    plan = plans.plan_for(spec, placed_by_write=ends.place_r is not None)
    if not plan.outer:
        in_child(ends.result_w, "init", lambda: init_stage(plan, ends, workload, joins,
                                                           netns_fd, host_layers))

    def outer() -> None:
        die_with_parent(ends.alive_r)
        join_self(joins)  # before any unshare: the whole container inherits the cgroup
        wait_placed(ends.place_r)
        run_steps(plan.outer, Context(netns_fd=netns_fd))
        forward = pid1.Forwarder()
        pid = os.fork()
        if pid == 0:
            forward.restore()
            inner = ChildEnds(ends.result_w, ends.alive_r, None, ends.keep)
            in_child(ends.result_w, "init", lambda: init_stage(plan, inner, workload, [], None,
                                                               host_layers))
        forward.target = pid
        _, status = os.waitpid(pid, 0)
        os._exit(pid1.exit_code_for(status))

    in_child(ends.result_w, "outer", outer)


def init_stage(plan: plans.Plan, ends: ChildEnds, workload, joins: list[str],
               netns_fd: int | None, host_layers: tuple) -> None:
    """pid 1: run plan.init (which says where the workload is forked), let the workload go,
    reap until it exits, report its status."""
    die_with_parent(ends.alive_r)
    join_self(joins)  # before the cgroup namespace, which is rooted where we are
    go_r, go_w = os.pipe()
    forward = pid1.Forwarder()
    forked: list[int] = []

    def fork_workload() -> None:
        forked.append(_fork_workload(workload, ends, forward, go_r, go_w, plan.workload))

    hooks = {plans.FORK_WORKLOAD: fork_workload,
             plans.WAIT_PLACED: lambda: wait_placed(ends.place_r)}
    run_steps(plan.init, Context(host_layers, netns_fd=netns_fd, hooks=hooks))
    os.write(go_w, b"g")
    os.close(go_w)
    status = pid1.reap_until(forked[0])
    protocol.write_frame(ends.result_w, protocol.exited(status))
    os._exit(pid1.exit_code_for(status))


def _fork_workload(workload, ends: ChildEnds, forward, go_r: int, go_w: int,
                   steps: tuple[plans.Step, ...]) -> int:
    pid = os.fork()
    if pid == 0:
        forward.restore()
        os.close(go_w)

        def after_go(result_w: int) -> int:
            close_foreign(ends.keep | {go_r})
            sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
            go = os.read(go_r, 1)
            os.close(go_r)
            if go != b"g":  # init failed to build the container and reported why
                os._exit(SETUP_FAILED)
            try:
                # the confinement, last before user code
                run_steps(steps, Context(report_fd=result_w))
            except SetupError as e:
                protocol.write_frame(result_w, e.to_frame())
                os._exit(SETUP_FAILED)
            return workload(result_w)

        run_workload(after_go, ends.result_w)
    os.close(go_r)
    forward.target = pid
    return pid


def warm_stage(steps: tuple[plans.Step, ...], ends: ChildEnds, pidfd: int, workload,
               joins: list[str]) -> None:
    """The workload of a warm container: join it, then run. Never returns."""
    def body() -> None:
        join_self(joins)  # while the host's /sys/fs/cgroup is still in view
        hooks = {plans.WAIT_PLACED: lambda: wait_placed(ends.place_r)}
        # ends with the confinement
        run_steps(steps, Context(pidfd=pidfd, hooks=hooks, report_fd=ends.result_w))
        run_workload(workload, ends.result_w)
    in_child(ends.result_w, "warm container start", body)


def run_workload(workload, result_w: int) -> None:
    """Run the workload and exit with its code; a failure in our glue (not in user code, which
    the workload reports itself) becomes a "raise" frame. Never returns."""
    code = 1
    try:
        code = workload(result_w)
    except BaseException as e:
        with contextlib.suppress(OSError):
            protocol.write_frame(result_w, protocol.raised(
                type(e).__qualname__, str(e), traceback.format_exc()))
    finally:
        os._exit(code)
