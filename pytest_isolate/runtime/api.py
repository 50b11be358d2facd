"""Entry points: start or run a function or a command in a new container.

Rule: spec -> validate -> image and network resolved -> a cgroup claimed -> one launch
(process/launch.py), cold or warm -> a ContainerProcess. The order inside the container is
plan.py's; this module only picks the path and the stage.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from . import plan as plans
from . import setup
from .cgroups import NoCgroup, spares
from .errors import SetupError, SpecError, host_limit_error
from .handle import ContainerProcess, release_link
from .kernel import mountinfo
from .kernel.namespaces import pid_namespace_for_next_fork
from .process import child, launch, workload
from .process.launch import PIPE
from .result import CommandResult, Result
from .spec import Spec, validate
from .warm import pool as warm

__all__ = ["PIPE", "ContainerProcess", "resolve_image", "run", "run_command", "start",
           "start_command", "start_until_done"]

spares.set_settler(warm.settle)  # flush() first learns what the zygote made


def resolve_image(spec: Spec) -> tuple[Spec, Any]:
    """spec.image -> its unpacked layers, with the image's Env and WorkingDir (the spec's own
    env and workdir win). Returns (spec, images.Image or None)."""
    if spec.image is None or spec.layers:
        return spec, None
    from . import images

    image = images.open_image(spec.image)
    return replace(spec, layers=image.layers, env={**image.environment(), **spec.env},
                   workdir=spec.workdir or image.workdir), image


def default_workdir(spec: Spec) -> str:
    if spec.workdir:
        return spec.workdir
    return "/" if spec.rootfs or spec.layers else os.getcwd()


def _network_for(spec: Spec):
    """network="veth": the namespace with eth0 linked to the host, made before the fork (a
    link is created in place in 2-5 ms; moving one later costs 22-33 ms). Its addresses go
    into the container's environment."""
    if not isinstance(spec.network, str):
        return _on_network(spec)
    if spec.network != "veth":
        return spec, None
    from .network import HostLink  # imports pyroute2 (0.2 s): only when a link is asked for

    link = HostLink()
    env = {**spec.env, "PYTEST_ISOLATE_IP": link.ip, "PYTEST_ISOLATE_HOST_IP": link.host_ip}
    return replace(spec, env=env), link


class _Joined:
    """A network member's namespace as a container's link: held by a dup of its fd, which
    the container's release closes; the member itself is its Network's."""

    def __init__(self, end) -> None:
        self.fd = os.dup(end.ns._fd())
        self.ip, self.host_ip = end.ip, None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _on_network(spec: Spec) -> tuple[Spec, _Joined]:
    """network=<a Network member>: the container joins the member's namespace (eth0 on the
    bridge, its addresses and routes) and sees the network's names in /etc/hosts."""
    end = spec.network
    if spec.wants_userns() or end.ns.pod is not None:
        from .errors import UnsupportedError

        raise UnsupportedError(
            "a container on a network", "without root a container has a user namespace of "
            "its own, and the network's namespaces belong to another one (its pod), which no "
            "other user namespace may join", "run as root; rootless, run the program in the "
            "member itself (member.run([...]) or member.spawn([...]))")
    link = _Joined(end)
    mounts = dict(spec.mounts)
    if end.ns.hosts_file:
        mounts[end.ns.hosts_file] = "/etc/hosts"
    env = {**spec.env, "PYTEST_ISOLATE_IP": end.ip}
    if end.ip6:
        env["PYTEST_ISOLATE_IP6"] = end.ip6
    return replace(spec, network="veth", env=env, mounts=mounts), link


def _launch(spec: Spec, workload_factory, child_stdio: dict[int, int | None],
            link=None, sleep: bool = False) -> launch.Launch:
    """Fork the container: warm where the spec allows (warm/), else cold."""
    res = spec.resources
    caps = (res.cpu, res.memory, res.pids)
    with contextlib.ExitStack() as undo:
        undo.callback(release_link, link)
        try:
            if link is None and warm.eligible(spec):
                started = _launch_warm(spec, caps, workload_factory, child_stdio, sleep, undo)
            else:
                started = _launch_cold(spec, caps, workload_factory, child_stdio, link, sleep,
                                       undo)
        except OSError as e:
            error = host_limit_error("start the container", e)
            if error is None:
                raise
            raise error from e
        started.link = link
        undo.pop_all()
        return started


def _launch_cold(spec: Spec, caps: tuple, workload_factory, child_stdio, link, sleep: bool,
                 undo: contextlib.ExitStack) -> launch.Launch:
    userns = spec.wants_userns()
    layers = () if spec.rootfs or spec.layers else mountinfo.host_plan(split=userns)
    cgroup = spares.claim(*caps)
    undo.callback(cgroup.destroy)
    joins = cgroup.self_join_files()
    setup.prepare(plans.confine_steps(plans.confinement_of(spec)))  # once, not in each child
    netns_fd = link.fd if link else None
    if netns_fd is not None:
        launch.hold_fd(netns_fd)  # other containers' children close it
    # As root the child is born pid 1 of a new pid namespace; rootless, its outer stage
    # makes the user namespace first, and the pid namespace inside it.
    pidns = launch.no_pid_namespace if userns else pid_namespace_for_next_fork
    started = launch.launch(
        cgroup, workload_factory, child_stdio, pidns,
        lambda ends, work: child.cold_stage(spec, ends, work, joins, netns_fd, layers),
        alive=True, extra_keep=() if netns_fd is None else (netns_fd,), undo=undo)
    spares.tidy(*caps)  # while it starts
    if sleep and not child_stdio:
        launch.sleep_after_launch(started, spec.resources.timeout)
    return started


def _launch_warm(spec: Spec, caps: tuple, workload_factory, child_stdio, sleep: bool,
                 undo: contextlib.ExitStack) -> launch.Launch:
    """Fork the workload straight into a container the zygote built ahead (see warm/)."""
    warm.reap_exiting()
    init = warm.take(spec.network)
    undo.callback(init.kill)
    try:
        cgroup = spares.claim(*caps)
    except BaseException:
        warm.ask_next(spec.network, *spares.chores(*caps))
        raise
    undo.callback(cgroup.destroy)
    capped = not isinstance(cgroup, NoCgroup)
    joins = cgroup.self_join_files()  # v1: the workload joins its cgroup itself
    # The next container builds while this one runs; with it the zygote makes the next one's
    # cgroup and removes ended ones (after the claim: it plans for the next).
    warm.ask_next(spec.network, plan=lambda: spares.chores(*caps, like=cgroup))
    steps = plans.warm_steps(spec.network, spec.hostname, init.hostname, capped,
                             plans.confinement_of(spec))
    setup.prepare(steps)
    try:
        started = launch.launch(
            cgroup, workload_factory, child_stdio, init.pid_namespace_for_next_fork,
            lambda ends, work: child.warm_stage(steps, ends, init.pidfd, work, joins),
            alive=False, extra_keep=(init.pidfd,), deadline_after=spec.resources.timeout,
            sleep=sleep and not child_stdio, sleep_at_once=True, undo=undo)
    except SetupError as e:
        raise warm.explain(e) from None
    started.warm_init = init
    # A function workload's last frame settles its outcome: the caller goes on, and the
    # copy's exit (unmapping its copy of the caller's memory) overlaps the caller's work.
    started.settles = not child_stdio
    if sleep and not child_stdio and started.exited_fd is None:  # capped: once placed
        launch.sleep_after_launch(started, spec.resources.timeout)
    return started


def start(spec: Spec, func: Callable[..., Any], *args: Any, **kwargs: Any) -> ContainerProcess:
    """Start `func(*args, **kwargs)` in a new container; returns at once."""
    return _start_function(spec, func, args, kwargs, sleep=False)


def start_until_done(spec: Spec, func: Callable[..., Any], *args: Any,
                     **kwargs: Any) -> ContainerProcess:
    """As `start`, but returns only once the function has returned or raised (or the process
    died, or the spec's timeout passed); `wait()` then gives the `Result` at once. For a
    caller with nothing to do meanwhile: it sleeps right after the fork rather than running
    its own code while its forked copy shares its pages."""
    return _start_function(spec, func, args, kwargs, sleep=True)


def _start_function(spec: Spec, func: Callable[..., Any], args: tuple, kwargs: dict,
                    sleep: bool) -> ContainerProcess:
    spec = validate(spec)
    if not callable(func):
        raise SpecError("func", func, "a callable to run inside the container")
    spec, _ = resolve_image(spec)
    workdir = default_workdir(spec)
    spec, link = _network_for(spec)
    env = dict(spec.env)
    started = _launch(spec, lambda _ends: workload.function(func, args, kwargs, env, workdir),
                      {}, link, sleep)
    return ContainerProcess(spec, started, None)


def run(spec: Spec, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Result:
    """Run `func(*args, **kwargs)` in a new container and return its `Result`.

    The return value travels back as JSON. The function runs in a forked copy of this process,
    so it needs no pickling and sees this process's imports and globals as they were.
    """
    return start_until_done(spec, func, *args, **kwargs).wait()


def start_command(spec: Spec, argv: Sequence[str], stdin: int | None = None,
                  stdout: int | None = None, stderr: int | None = None) -> ContainerProcess:
    """Start `argv` in a new container. stdin/stdout/stderr: PIPE, an fd, or None (inherit)."""
    spec = validate(spec)
    if isinstance(argv, (str, bytes)) or not argv or not all(isinstance(a, str) for a in argv):
        raise SpecError("argv", argv, "a non-empty list of str, e.g. ['true']")
    spec, _ = resolve_image(spec)
    workdir = default_workdir(spec)
    argv = tuple(argv)
    spec, link = _network_for(spec)
    env = dict(spec.env)
    started = _launch(spec, lambda ends: workload.command(argv, env, workdir, ends),
                      {0: stdin, 1: stdout, 2: stderr}, link)
    return ContainerProcess(spec, started, argv)


def run_command(spec: Spec, argv: Sequence[str], input: bytes | None = None,
                timeout: float | None = None, capture_output: bool = True,
                check: bool = False) -> CommandResult:
    """Run `argv` in a new container; like subprocess.run with capture_output by default.
    `check`: raise CommandFailed when it exits non-zero, is killed, or times out."""
    how = PIPE if capture_output else None
    proc = start_command(spec, argv, stdin=PIPE if input is not None else None,
                         stdout=how, stderr=how)
    result = proc.communicate(input=input, timeout=timeout)
    return result.check_returncode() if check else result
