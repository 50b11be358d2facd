"""The executor: runs a plan's steps in order, and names the failing step in the error.

Rule: the only place that calls the kernel steps of a container's inside; it adds no order of
its own (plan.py has it). `KERNEL` maps a step's name to its function; tests pass a recording
fake in its place (tests/unit/test_plan_order.py), so that the order and every error path are
checked without root.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

from . import syscalls as sc
from .errors import SetupError, hint_for
from .kernel import confine, namespaces, rootfs
from .plan import FORK_WORKLOAD, WAIT_PLACED, Step


class Context:
    """What steps need beyond their arguments, known only when they run.

    root         the new root's path, set by the "scratch" step
    host_layers  the host tree's plan (kernel.mountinfo.host_plan), made by the caller
    netns_fd     network="veth": the namespace the caller prepared
    pidfd        a warm init, joined by "join container"
    ns_fds       name -> fd of a running container's namespaces, joined by "setns"
    hooks        process-level steps (fork workload, wait placed) -> the stage's callbacks
    report_fd    the workload's result pipe: "confine" reports a call denied with "kill"
    """

    __slots__ = ("hooks", "host_layers", "netns_fd", "ns_fds", "pidfd", "report_fd", "root")

    def __init__(self, host_layers: tuple = (), netns_fd: int | None = None,
                 pidfd: int | None = None, ns_fds: Mapping[str, int] | None = None,
                 hooks: Mapping[str, Callable[[], None]] | None = None,
                 report_fd: int | None = None) -> None:
        self.root = ""
        self.host_layers = host_layers
        self.netns_fd = netns_fd
        self.pidfd = pidfd
        self.ns_fds = ns_fds or {}
        self.hooks = hooks or {}
        self.report_fd = report_fd


def _scratch(ctx: Context, keep_dir: str | None) -> None:
    ctx.root = rootfs.prepare_scratch(keep_dir)


def _join_netns(ctx: Context) -> None:
    namespaces.join_network_namespace(ctx.netns_fd)
    ctx.netns_fd = None  # closed by the step


def _join_container(ctx: Context, flags: int) -> None:
    sc.setns(ctx.pidfd, flags)  # root and cwd become the container's
    os.close(ctx.pidfd)
    ctx.pidfd = None


def _hook(name: str) -> Callable[..., None]:
    def run(ctx: Context) -> None:
        hook = ctx.hooks.get(name)
        if hook is not None:
            hook()
    return run


# Step name -> function(ctx, *step.args). The one table of what each step does.
KERNEL: dict[str, Callable[..., None]] = {
    "join network namespace": _join_netns,
    "user namespace": lambda ctx: namespaces.enter_user_namespace(os.geteuid(), os.getegid()),
    "unshare": lambda ctx, flags: namespaces.unshare_namespaces(flags),
    "time namespace": lambda ctx, mono, boot: namespaces.enter_time_namespace(mono, boot),
    "scratch": _scratch,
    "host tree": lambda ctx, userns: rootfs.mount_host_tree(ctx.root, ctx.host_layers, userns),
    "image root": lambda ctx, layers, userns: rootfs.mount_image_root(ctx.root, layers, userns),
    "tmp": lambda ctx: rootfs.mount_tmp(ctx.root),
    "binds": lambda ctx, mounts: rootfs.mount_binds(ctx.root, dict(mounts)),
    "proc": lambda ctx, pidns: rootfs.mount_proc(ctx.root, pidns),
    "sys": lambda ctx: rootfs.mount_sys(ctx.root),
    "dev": lambda ctx, userns: rootfs.mount_dev(ctx.root, userns),
    "pivot": lambda ctx: rootfs.pivot_into(ctx.root),
    "hostname": lambda ctx, name: namespaces.set_hostname(name),
    "loopback": lambda ctx: namespaces.bring_up_loopback(),
    "join container": _join_container,
    "confine": lambda ctx, confinement: confine.confine(confinement, ctx.report_fd),
    "setns": lambda ctx, name: sc.setns(ctx.ns_fds[name], 0),
    FORK_WORKLOAD: _hook(FORK_WORKLOAD),
    WAIT_PLACED: _hook(WAIT_PLACED),
}

# Hints for steps whose failure has one fix whatever the errno.
_STEP_HINTS = {
    "join container": "set PYTEST_ISOLATE_NO_WARM=1 to build containers cold",
}


def prepare(steps: Iterable[Step]) -> None:
    """Build in the caller, once, what the steps' children would otherwise each build
    (the confinement's ctypes objects): call before forking."""
    for step in steps:
        if step.name == "confine":
            confine.prepare(*step.args)


def run_steps(steps: Iterable[Step], ctx: Context,
              kernel: Mapping[str, Callable[..., None]] = KERNEL) -> None:
    """Run each step; the first failure raises SetupError naming that step and its target
    (a step's own SetupError passes unchanged: it names the finer step it was in)."""
    for step in steps:
        try:
            kernel[step.name](ctx, *step.args)
        except SetupError:
            raise
        except OSError as e:
            raise SetupError(step.name, step.target, e.errno, e.strerror or str(e),
                             _STEP_HINTS.get(step.name) or hint_for(step.name, e.errno)
                             ) from None
        except Exception as e:
            raise SetupError(step.name, step.target, getattr(e, "errno", None),
                             f"{type(e).__name__}: {e}", _STEP_HINTS.get(step.name, "")
                             ) from None
