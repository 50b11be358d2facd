"""The setup order is data (plan.py), run by one executor (setup.py): both checked here without
root, with a recording fake in place of the kernel steps (as youki's test helper does)."""

from __future__ import annotations

import errno

import pytest

from pytest_isolate.runtime import Resources, Spec, TimeOffsets, plan, validate
from pytest_isolate.runtime import syscalls as sc
from pytest_isolate.runtime.errors import SetupError
from pytest_isolate.runtime.setup import KERNEL, Context, run_steps


class RecordingKernel(dict):
    """Every step name of the real table, each recording (name, args) instead of acting;
    `fail` makes one step raise what the kernel would."""

    def __init__(self, fail: str | None = None, error: BaseException | None = None):
        super().__init__()
        self.calls: list[tuple] = []
        for name in KERNEL:
            self[name] = self._recorder(name, fail, error)

    def _recorder(self, name, fail, error):
        def step(ctx, *args):
            self.calls.append((name, *args))
            if name == "scratch":
                ctx.root = "/dev/shm/root"
            if name == fail:
                raise error
            hook = ctx.hooks.get(name)
            if hook is not None:
                hook()
        return step

    @property
    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


def record(steps, **ctx) -> RecordingKernel:
    kernel = RecordingKernel()
    run_steps(steps, Context(**ctx), kernel)
    return kernel


def test_the_executor_knows_every_step_the_plans_use():
    specs = [Spec(), Spec(network="veth"), Spec(userns=True), Spec(rootfs="/srv/r"),
             Spec(mounts={"/a": "/b"}), Spec(time_offsets=TimeOffsets(monotonic=5)),
             Spec(keep_dir="/tmp/k")]
    for spec in specs:
        for placed in (False, True):
            p = plan.plan_for(spec, placed)
            for step in (*p.outer, *p.init):
                assert step.name in KERNEL, step
    for step in plan.warm_steps("none", "box", "isolated", True) + plan.join_steps(True):
        assert step.name in KERNEL, step


def test_a_root_container_unshares_forks_its_workload_early_then_builds_and_pivots():
    p = plan.plan_for(Spec(hostname="box"))
    assert p.outer == ()
    assert record(p.init).names == [
        "unshare", "fork workload", "scratch", "host tree", "proc", "sys", "dev", "pivot",
        "hostname", "loopback"]
    assert p.init[0].args == (sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC
                              | sc.CLONE_NEWCGROUP | sc.CLONE_NEWNET,)
    assert p.init[0].target == "mnt,uts,ipc,net,cgroup"
    assert ("hostname", "box") in record(p.init).calls


def test_placed_by_write_the_cgroup_namespace_and_the_workload_wait_until_placed():
    p = plan.plan_for(Spec(), placed_by_write=True)
    names = record(p.init).names
    assert names[-3:] == ["wait placed", "unshare", "fork workload"]
    assert names.index("pivot") < names.index("wait placed")
    assert not p.init[0].args[0] & sc.CLONE_NEWCGROUP
    assert p.init[-2].args == (sc.CLONE_NEWCGROUP,)


def test_rootless_the_outer_stage_makes_the_user_namespace_before_the_rest():
    p = plan.plan_for(Spec(userns=True, network="veth"))
    assert record(p.outer).names == ["join network namespace", "user namespace", "unshare"]
    assert p.outer[-1].args[0] & sc.CLONE_NEWPID
    assert not p.outer[-1].args[0] & sc.CLONE_NEWNET  # veth: the prepared one is joined
    init = record(p.init).names
    assert "unshare" not in init and "loopback" not in init  # a prepared netns has lo up
    assert init[0] == "fork workload"


def test_an_image_gets_its_layers_and_a_tmp_and_time_offsets_come_before_the_fork():
    spec = Spec(rootfs="/srv/root", time_offsets=TimeOffsets(monotonic=5, boottime=7))
    names = record(plan.plan_for(spec).init).names
    assert names[:3] == ["unshare", "time namespace", "fork workload"]
    assert names[3:6] == ["scratch", "image root", "tmp"] and "host tree" not in names


def test_binds_come_after_the_root_and_before_proc():
    names = record(plan.plan_for(Spec(mounts={"/src": "/opt/src"})).init).names
    assert names.index("host tree") < names.index("binds") < names.index("proc")


def test_network_host_unshares_no_network_namespace_and_brings_up_no_loopback():
    p = plan.plan_for(Spec(network="host"))
    assert not p.flags & sc.CLONE_NEWNET
    assert "loopback" not in record(p.init).names


def test_the_zygotes_plan_mounts_proc_for_the_sleepers_pid_namespace():
    p = plan.build_plan("none", "isolated", proc_pidns="/proc/thread-self/ns/pid_for_children")
    assert ("proc", "/proc/thread-self/ns/pid_for_children") in record(p.build).calls
    assert record(p.build).names[0] == "scratch"  # the sleeper was cloned with the namespaces


def test_a_warm_workload_joins_then_unshares_its_cgroup_namespace_once_placed():
    steps = plan.warm_steps("none", "box", "isolated", capped=True)
    assert [s.name for s in steps] == ["join container", "wait placed", "unshare", "hostname"]
    assert [s.name for s in plan.warm_steps("host", "isolated", "isolated", False)] == [
        "join container"]


def test_an_exec_joins_the_user_namespace_first_and_the_pid_namespace_last():
    assert [s.target for s in plan.join_steps(True)] == [
        "user", "mnt", "uts", "ipc", "net", "cgroup", "pid"]
    assert [s.target for s in plan.join_steps(False, only=("mnt",))] == ["mnt"]


def test_plans_are_cached_per_shape():
    assert plan.plan_for(validate(Spec())) is plan.plan_for(Spec())
    assert plan.plan_for(Spec()) is not plan.plan_for(Spec(hostname="other"))
    capped = Spec(resources=Resources(memory="64M"))
    assert plan.plan_for(capped) is plan.plan_for(Spec())  # caps are not part of the inside


@pytest.mark.parametrize("failing", ["unshare", "scratch", "host tree", "proc", "pivot",
                                     "hostname", "loopback"])
def test_a_failing_step_is_named_with_its_target_and_nothing_after_it_runs(failing):
    steps = plan.plan_for(Spec(hostname="box")).init
    kernel = RecordingKernel(fail=failing, error=OSError(errno.EPERM, "Operation not permitted"))
    with pytest.raises(SetupError) as info:
        run_steps(steps, Context(), kernel)
    err = info.value
    target = next(s.target for s in steps if s.name == failing)
    assert (err.step, err.target, err.errno) == (failing, target, errno.EPERM)
    assert err.target and err.target != "-"
    assert str(err).startswith(f"{failing}: {target}: Operation not permitted (EPERM")
    assert kernel.names[-1] == failing  # the first failure ends the run


def test_a_steps_own_setup_error_passes_unchanged_and_other_errors_are_wrapped():
    own = SetupError("mount overlay", "/usr", errno.EINVAL, "Invalid argument", "the hint")
    kernel = RecordingKernel(fail="host tree", error=own)
    with pytest.raises(SetupError) as info:
        run_steps(plan.plan_for(Spec()).init, Context(), kernel)
    assert info.value is own
    kernel = RecordingKernel(fail="dev", error=KeyError("null"))
    with pytest.raises(SetupError, match=r"^dev: /dev: KeyError: 'null'"):
        run_steps(plan.plan_for(Spec()).init, Context(), kernel)


def test_a_failed_warm_join_says_how_to_build_cold_instead():
    kernel = RecordingKernel(fail="join container", error=OSError(errno.EINVAL, "bad"))
    with pytest.raises(SetupError, match="PYTEST_ISOLATE_NO_WARM=1"):
        run_steps(plan.warm_steps("none", "a", "a", False), Context(), kernel)


def test_the_hooks_run_at_their_place_in_the_order():
    seen: list[str] = []
    kernel = RecordingKernel()
    hooks = {plan.FORK_WORKLOAD: lambda: seen.append(kernel.names[-2]),
             plan.WAIT_PLACED: lambda: seen.append("placed")}
    run_steps(plan.plan_for(Spec(), placed_by_write=True).init, Context(hooks=hooks), kernel)
    assert seen == ["placed", "unshare"]  # forked right after the cgroup namespace
