"""What a confined workload may do: its capabilities and its seccomp filter, as data.

Rule: pure (names, numbers, a BPF program as bytes); the zygote imports it, so no dataclasses.
`confinement(...)` turns a spec's seccomp, privileged, cap_add and cap_drop into the one
Step argument the executor needs; kernel.confine applies it.

Why capabilities are dropped rather than a user namespace made for root containers: a warm
container is built by root's zygote ahead of use and joined by the test's process; a user
namespace of its own would make every mount of its tree rootless (userxattr overlays, no
device nodes) and the join a second setns. Dropping to Docker's default set, with no_new_privs
and the filter below, leaves root in the container no capability over the host's kernel,
clock, modules, raw I/O or block devices, and its namespaces own the rest.
"""

from __future__ import annotations

import difflib
import os
import struct

# linux/capability.h
CAPABILITIES = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5,
    "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9, "NET_BIND_SERVICE": 10,
    "NET_BROADCAST": 11, "NET_ADMIN": 12, "NET_RAW": 13, "IPC_LOCK": 14, "IPC_OWNER": 15,
    "SYS_MODULE": 16, "SYS_RAWIO": 17, "SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_PACCT": 20,
    "SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23, "SYS_RESOURCE": 24, "SYS_TIME": 25,
    "SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28, "AUDIT_WRITE": 29, "AUDIT_CONTROL": 30,
    "SETFCAP": 31, "MAC_OVERRIDE": 32, "MAC_ADMIN": 33, "SYSLOG": 34, "WAKE_ALARM": 35,
    "BLOCK_SUSPEND": 36, "AUDIT_READ": 37, "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40,
}
# Docker's default set, less MKNOD: without a devices cgroup a node for the host's disk would
# be raw access to it (cap_add=["MKNOD"] gives it back).
DEFAULT_CAPS = ("CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "NET_RAW", "SETGID", "SETUID",
                "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE")
# Owned by the container's own namespace: configuring its own interfaces and routes.
NETNS_CAPS = ("NET_ADMIN",)

# Docker's default profile denies these (by leaving them out of its allow list, or allowing
# them only with capabilities the default set lacks). Creating user namespaces stays allowed:
# network fixtures and containers started inside an isolated test need them, and what a user
# namespace grants is power over that namespace's own objects only.
DEFAULT_DENY = (
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module",
    "delete_module", "finit_module", "fsconfig", "fsmount", "fsopen", "fspick",
    "get_kernel_syms", "init_module", "io_pgetevents", "io_uring_enter", "io_uring_register",
    "io_uring_setup", "ioperm", "iopl", "kcmp", "kexec_file_load", "kexec_load", "keyctl",
    "lookup_dcookie", "mount_setattr", "move_mount", "name_to_handle_at", "nfsservctl",
    "open_by_handle_at", "open_tree", "perf_event_open", "process_vm_readv",
    "process_vm_writev", "query_module", "quotactl", "quotactl_fd", "reboot", "request_key",
    "settimeofday", "stime", "swapoff", "swapon", "syslog", "_sysctl", "sysfs", "uselib",
    "userfaultfd", "ustat", "vm86", "vm86old",
)

ACTIONS = ("errno", "kill")

# linux/seccomp.h, linux/filter.h, linux/audit.h
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_TRAP = 0x00030000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_LD_W_ABS, _JEQ_K, _RET_K = 0x20, 0x15, 0x06
_NR_OFFSET, _ARCH_OFFSET = 0, 4
_X32_BIT = 0x40000000


def syscall_table(machine: str | None = None) -> dict[str, int]:
    from . import syscall_tables

    machine = machine or os.uname().machine
    if machine == "x86_64":
        return syscall_tables.X86_64
    if machine == "aarch64":
        return syscall_tables.AARCH64
    return {}


def nearest(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return close[0] if close else ""


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def build_filter(deny: list[int], action: str, machine: str) -> bytes:
    """A classic BPF program: the wrong architecture (or x32) is killed, each denied number
    gets EPERM (action "errno") or SIGSYS ("kill": the trap, which the workload's handler
    reports before the signal kills it), everything else is allowed. Only the number and the
    architecture are read: the kernel then caches the allowed calls in a bitmap and runs no
    filter for them."""
    arch = AUDIT_ARCH[machine]
    deny = sorted(set(deny))
    ret = SECCOMP_RET_TRAP if action == "kill" else SECCOMP_RET_ERRNO | 1  # EPERM
    prog = [_insn(_LD_W_ABS, 0, 0, _ARCH_OFFSET),
            _insn(_JEQ_K, 1, 0, arch),
            _insn(_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
            _insn(_LD_W_ABS, 0, 0, _NR_OFFSET)]
    if machine == "x86_64":  # x32 numbers alias the 64-bit ones with bit 30 set
        prog += [_insn(0x35, 0, 1, _X32_BIT),  # JGE K: x32 -> kill
                 _insn(_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS)]
    for i, nr in enumerate(deny):
        # jump to the deny return (after the remaining compares and the allow) when equal
        prog.append(_insn(_JEQ_K, len(deny) - i, 0, nr))
    prog += [_insn(_RET_K, 0, 0, SECCOMP_RET_ALLOW), _insn(_RET_K, 0, 0, ret)]
    return b"".join(prog)


class Confinement:
    """What kernel.confine applies in the workload: the capability mask it keeps (None: all,
    privileged) and the seccomp program (empty: none)."""

    __slots__ = ("action", "caps", "denied", "numbers", "program")

    def __init__(self, caps: int | None, program: bytes, denied: tuple[str, ...],
                 action: str, numbers: tuple[tuple[int, str], ...] = ()) -> None:
        self.caps = caps
        self.program = program
        self.denied = denied  # the syscall names the program denies, for reports
        self.action = action
        self.numbers = numbers  # (number, name) of each denied call

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Confinement) and (self.caps, self.program, self.action) == (
            other.caps, other.program, other.action)

    def __hash__(self) -> int:
        return hash((self.caps, self.program, self.action))

    def __repr__(self) -> str:
        return f"Confinement(caps={self.caps!r}, denied={len(self.denied)}, {self.action})"


_cache: dict[tuple, Confinement] = {}


def confinement(seccomp: object = "default", privileged: bool = False,
                cap_add: tuple[str, ...] = (), cap_drop: tuple[str, ...] = (),
                own_netns: bool = True, machine: str | None = None) -> Confinement:
    """The confinement of a validated spec's fields (see spec.py's checks for their forms)."""
    key = (repr(seccomp), privileged, cap_add, cap_drop, own_netns, machine)
    got = _cache.get(key)
    if got is None:
        got = _cache[key] = _confinement(seccomp, privileged, cap_add, cap_drop, own_netns,
                                         machine or os.uname().machine)
    return got


def _confinement(seccomp, privileged, cap_add, cap_drop, own_netns, machine) -> Confinement:
    if privileged:
        caps = None
    else:
        names = set(DEFAULT_CAPS) | (set(NETNS_CAPS) if own_netns else set())
        names = (names | set(cap_add)) - set(cap_drop)
        caps = sum(1 << CAPABILITIES[n] for n in names)
    profile, extra, action = parse_seccomp(seccomp)
    if privileged and profile == "default":
        profile = "off"  # the old behaviour, full host root: only the calls asked to be denied
    if (profile == "off" and not extra) or machine not in AUDIT_ARCH:
        return Confinement(caps, b"", (), action)
    table = syscall_table(machine)
    names = list(DEFAULT_DENY) if profile == "default" else []  # "off" with extras: only them
    names += list(extra)
    denied = tuple(sorted({n for n in names if n in table}))
    return Confinement(caps, build_filter([table[n] for n in denied], action, machine),
                       denied, action, tuple((table[n], n) for n in denied))


def parse_seccomp(value: object) -> tuple[str, tuple[str, ...], str]:
    """(profile, extra denied names, action) from "default", "off", a list of names, or a dict
    {"deny": [...], "action": "errno" | "kill", "profile": "default" | "off"}. Raises
    ValueError with the reason (spec.py turns it into a SpecError)."""
    if value is None or value == "default":
        return "default", (), "errno"
    if value == "off":
        return "off", (), "errno"
    if isinstance(value, (list, tuple)):
        value = {"deny": value}
    if not isinstance(value, dict):
        raise ValueError('"default", "off", a list of syscall names to deny, or '
                         '{"deny": [...], "action": "errno" | "kill"}')
    unknown = set(value) - {"deny", "action", "profile"}
    if unknown:
        raise ValueError(f"the keys deny, action, profile; {sorted(unknown)[0]!r} is not one")
    deny = value.get("deny", ())
    if isinstance(deny, str) or not all(isinstance(n, str) for n in deny):
        raise ValueError('"deny" as a list of syscall names, e.g. ["ptrace", "socket"]')
    action = value.get("action", "errno")
    if action not in ACTIONS:
        raise ValueError(f'"action" "errno" or "kill", not {action!r}')
    profile = value.get("profile", "default")
    if profile not in ("default", "off"):
        raise ValueError(f'"profile" "default" or "off", not {profile!r}')
    table = syscall_table()
    for name in deny:
        if table and name not in table:
            near = nearest(name, table)
            raise ValueError(f"syscall names of this machine; {name!r} is not one"
                             + (f" (did you mean {near!r}?)" if near else ""))
    return profile, tuple(deny), action


def check_capabilities(names: object, what: str) -> tuple[str, ...]:
    """Upper-case names without CAP_, each known; ValueError naming the nearest otherwise."""
    if isinstance(names, str):
        names = (names,)
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{what}: a list of capability names, e.g. ['NET_ADMIN']")
    out = []
    for n in names:
        norm = n.upper().removeprefix("CAP_")
        if norm not in CAPABILITIES:
            near = nearest(norm, CAPABILITIES)
            raise ValueError(f"capability names such as 'NET_ADMIN'; {n!r} is not one"
                             + (f" (did you mean {near!r}?)" if near else ""))
        out.append(norm)
    return tuple(out)


def syscall_name(nr: int, machine: str | None = None) -> str:
    for name, n in syscall_table(machine).items():
        if n == nr:
            return name
    return f"syscall {nr}"
