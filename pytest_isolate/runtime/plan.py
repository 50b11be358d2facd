"""The container's inside as data: which namespaces, which mounts, which order.

Rule: pure, and the only place that maps a spec to namespace flags, mounts and the order of
setup. `build_plan` returns a `Plan` of `Step`s that setup.run_steps executes, for cold, warm
and exec'd processes alike; a new confinement step is one more Step here (and one kernel
function in setup.KERNEL), and every kind of container gets it. Plans are cached per shape.

Imports only syscalls (flag values), and confine.policy (pure) when a spec is planned: the
zygote imports this module (no dataclasses: they pull in inspect, 15 ms in a fresh
interpreter).
"""

from __future__ import annotations

from . import syscalls as sc

# Every namespace a container may have, in the order a process joins a running one: user
# first (it grants the rights over the rest), pid last (it applies to children only).
ORDERED_NAMESPACES = (
    ("user", sc.CLONE_NEWUSER), ("mnt", sc.CLONE_NEWNS), ("uts", sc.CLONE_NEWUTS),
    ("ipc", sc.CLONE_NEWIPC), ("net", sc.CLONE_NEWNET), ("cgroup", sc.CLONE_NEWCGROUP),
    ("pid", sc.CLONE_NEWPID), ("time", sc.CLONE_NEWTIME),
)
_NAMES = {flag: name for name, flag in ORDERED_NAMESPACES}

# Process-level steps: setup.run_steps hands them to the caller's callbacks (Context.hooks).
FORK_WORKLOAD = "fork workload"
WAIT_PLACED = "wait placed"


class Step:
    """One setup step: `name` (the executor's key, and the step in errors), `target` (what it
    acts on, for errors) and its arguments."""

    __slots__ = ("args", "name", "target")

    def __init__(self, name: str, target: str, *args: object) -> None:
        self.name = name
        self.target = target
        self.args = args

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Step) and (self.name, self.target, self.args) == (
            other.name, other.target, other.args)

    def __hash__(self) -> int:
        return hash((self.name, self.target, self.args))

    def __repr__(self) -> str:
        args = "".join(f", {a!r}" for a in self.args)
        return f"Step({self.name!r}, {self.target!r}{args})"


class Plan:
    """What a container's processes run, in order.

    outer  rootless only: the stage between the caller and init that makes the user namespace
           and unshares the rest inside it (init then has them already)
    init   pid 1: namespaces, the point where the workload is forked, the root filesystem,
           pivot, identity (hostname, lo); with placement by the caller's write, the cgroup
           namespace and the workload's fork wait until the root is built
    flags  the namespaces init lives in (the zygote clones a sleeper with them)
    build  the part of `init` after the namespaces: what the zygote runs around a sleeper
    workload  what the workload runs last, once the container is built: its confinement
    """

    __slots__ = ("build", "flags", "init", "outer", "workload")

    def __init__(self, outer: tuple[Step, ...], init: tuple[Step, ...], flags: int,
                 build: tuple[Step, ...], workload: tuple[Step, ...] = ()) -> None:
        self.outer = outer
        self.init = init
        self.flags = flags
        self.build = build
        self.workload = workload


def namespace_flags(network: str) -> int:
    """The namespaces init lives in (user, pid and time have steps of their own)."""
    flags = sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWCGROUP
    if network == "none":  # "veth" joins a namespace the caller made ready; "host" none
        flags |= sc.CLONE_NEWNET
    return flags


def flag_names(flags: int) -> str:
    """"mnt,uts,..." for a set of CLONE_NEW* flags, in join order (for error targets)."""
    return ",".join(name for name, flag in ORDERED_NAMESPACES if flags & flag) or "none"


def _unshare(flags: int) -> Step:
    return Step("unshare", flag_names(flags), flags)


_cache: dict[tuple, Plan] = {}


def build_plan(network: str = "none", hostname: str = "isolated", userns: bool = False,
               layers: tuple[str, ...] = (), mounts: tuple[tuple[str, str], ...] = (),
               keep_dir: str | None = None, time_offsets: tuple[float, float] | None = None,
               placed_by_write: bool = False, proc_pidns: str | None = None,
               veth: bool = False, confinement: object = None) -> Plan:
    """The plan of one container shape.

    layers: an image's lower directories (bottom first); empty for the host tree.
    placed_by_write: the caller writes the container into its cgroup while it sets up, so
    the cgroup namespace (rooted where the process is) waits until it is placed.
    proc_pidns: proc's pidns= option (the zygote mounts /proc for a sleeper's namespace).
    veth: join the network namespace the caller prepared (network="veth").
    confinement: a confine.policy.Confinement the workload applies last (None: none).
    """
    key = (network, hostname, userns, layers, mounts, keep_dir, time_offsets,
           placed_by_write, proc_pidns, veth, confinement)
    plan = _cache.get(key)
    if plan is None:
        plan = _cache[key] = _build(*key)
    return plan


def _build(network: str, hostname: str, userns: bool, layers: tuple[str, ...],
           mounts: tuple[tuple[str, str], ...], keep_dir: str | None,
           time_offsets: tuple[float, float] | None, placed_by_write: bool,
           proc_pidns: str | None, veth: bool, confinement: object) -> Plan:
    flags = namespace_flags(network)
    join_net = (Step("join network namespace", "network namespace"),) if veth else ()
    if userns:
        # The network namespace is joined before the user namespace: root may, it may not.
        outer = (*join_net, Step("user namespace", "user namespace"),
                 _unshare(flags | sc.CLONE_NEWPID))
        spaces: tuple[Step, ...] = ()
    else:
        outer = ()
        # With placement by write, the cgroup namespace waits (below) until placed.
        early = flags & ~sc.CLONE_NEWCGROUP if placed_by_write else flags
        spaces = (*join_net, _unshare(early))
    if time_offsets is not None:
        spaces += (Step("time namespace", "time namespace", *time_offsets),)
    root: tuple[Step, ...] = (Step("scratch", keep_dir or "tmpfs", keep_dir),)
    if layers:
        root += (Step("image root", "/", layers, userns), Step("tmp", "/tmp"))
    else:
        root += (Step("host tree", "/", userns),)
    if mounts:
        root += (Step("binds", ",".join(inside for _, inside in mounts), mounts),)
    root += (Step("proc", "/proc", proc_pidns), Step("sys", "/sys"), Step("dev", "/dev", userns),
             Step("pivot", "new root"), Step("hostname", hostname, hostname))
    if network == "none":  # a prepared namespace ("veth") has lo up already
        root += (Step("loopback", "lo"),)
    fork = Step(FORK_WORKLOAD, "workload")
    if placed_by_write and not userns:
        # The caller's cgroup.procs write (which can stall for an RCU grace period) runs
        # while the root is built; the cgroup namespace is joined once placed.
        init = (*spaces, *root, Step(WAIT_PLACED, "cgroup"), _unshare(sc.CLONE_NEWCGROUP),
                fork)
    else:
        # The workload is forked before the mounts: its fork and copy-on-write faults overlap
        # them on another CPU; pivot_root moves its root and cwd along.
        init = (*spaces, fork, *root)
    return Plan(outer, init, flags, root, confine_steps(confinement))


def confine_steps(confinement: object) -> tuple[Step, ...]:
    """The workload's last step before user code: no_new_privs, capabilities, seccomp."""
    return () if confinement is None else (Step("confine", "workload", confinement),)


def confinement_of(spec):
    """A validated spec's confine.policy.Confinement."""
    from .confine import policy

    return policy.confinement(spec.seccomp, spec.privileged, tuple(spec.cap_add),
                              tuple(spec.cap_drop), own_netns=spec.network != "host")


def plan_for(spec, placed_by_write: bool = False) -> Plan:
    """build_plan for a validated Spec (duck-typed: this module does not import spec.py)."""
    offsets = spec.time_offsets
    return build_plan(
        network=spec.network, hostname=spec.hostname, userns=spec.wants_userns(),
        layers=tuple(spec.layers) or ((spec.rootfs,) if spec.rootfs else ()),
        mounts=tuple(dict(spec.mounts).items()), keep_dir=spec.keep_dir,
        time_offsets=None if offsets is None else (offsets.monotonic, offsets.boottime),
        placed_by_write=placed_by_write, veth=spec.network == "veth",
        confinement=confinement_of(spec))


EXEC_NAMESPACES = ("mnt", "uts", "ipc", "net", "cgroup", "pid")


def join_steps(userns: bool, only: tuple[str, ...] = EXEC_NAMESPACES) -> tuple[Step, ...]:
    """Joining a running container namespace by namespace (an exec), in ORDERED_NAMESPACES'
    order, its user namespace first when it has one; `only` narrows the rest (a file helper
    joins the mount namespace alone)."""
    return tuple(Step("setns", name, name) for name, _ in ORDERED_NAMESPACES
                 if name in only or (name == "user" and userns))


def warm_steps(network: str, hostname: str, init_hostname: str, capped: bool,
               confinement: object = None) -> tuple[Step, ...]:
    """A warm container's workload: join init's namespaces with one setns(pidfd) call; capped,
    a cgroup namespace of its own once placed (rooted at its cgroup: /proc/self/cgroup shows
    "/"; init's is rooted at the caller's, where an uncapped workload stays)."""
    flags = namespace_flags(network)
    steps: tuple[Step, ...] = (Step("join container", flag_names(flags), flags),)
    if capped:
        steps += (Step(WAIT_PLACED, "cgroup"), _unshare(sc.CLONE_NEWCGROUP))
    if hostname != init_hostname:  # else init's name is already the one
        steps += (Step("hostname", hostname, hostname),)
    return steps + confine_steps(confinement)
