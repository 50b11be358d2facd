"""cgroup v2 driver: one directory below this process's cgroup.

Controllers must be enabled in the parent's cgroup.subtree_control; that is the one write to a
cgroup we did not create, and it only widens what children may use (never limits anything).
Figures: cpu.stat (usage_usec, nr_throttled, throttled_usec), memory.peak, memory.events
(oom_kill), pids.events (max). Killing uses cgroup.kill where the kernel has it.
"""

from __future__ import annotations

import os
from dataclasses import replace

from ..errors import SetupError, UnsupportedError
from .driver import kill_members, new_name, read, remove_dir, try_remove_dir, write
from .files import CgroupStats, v2_limit_writes, v2_stats

NEEDED = ("cpu", "memory", "pids")

# parent dir -> whether its children have memory.swap.max: learned by the first apply there
# (which also enabled the controllers), after which steps can be planned for the zygote.
_has_swap: dict[str, bool] = {}


class V2Cgroup:
    def __init__(self, name: str, parent: str, cpu: float | None, memory: int | None,
                 pids: int | None):
        self.parent = parent
        self.dir = os.path.join(parent, name)
        self.cpu, self.memory, self.pids = cpu, memory, pids

    def sibling(self) -> V2Cgroup:
        return V2Cgroup(new_name(), self.parent, self.cpu, self.memory, self.pids)

    def _enable_controllers(self) -> None:
        enabled = set((read(os.path.join(self.parent, "cgroup.subtree_control")) or "").split())
        missing = [c for c in NEEDED if c not in enabled]
        if not missing:
            return
        try:
            with open(os.path.join(self.parent, "cgroup.subtree_control"), "w") as f:
                f.write(" ".join(f"+{c}" for c in missing))
        except OSError as e:
            raise UnsupportedError(
                "cgroup v2 controllers",
                f"cannot enable {', '.join(missing)} below {self.parent} ({e.strerror}); "
                "a cgroup that holds processes cannot delegate controllers to children",
                "run from a delegated subtree whose own processes sit in a leaf, e.g. "
                "systemd-run --user --scope -p Delegate=yes python -m pytest") from None

    def apply(self) -> None:
        self._enable_controllers()
        try:
            os.mkdir(self.dir)
        except OSError as e:
            raise SetupError("create cgroup", self.dir, e.errno, e.strerror or "") from None
        try:
            has_swap = os.path.exists(os.path.join(self.dir, "memory.swap.max"))
            _has_swap[self.parent] = has_swap
            for path, value in self._limit_writes(has_swap):
                write(path, value, "set cgroup limit")
        except BaseException:
            remove_dir(self.dir)
            raise

    def _limit_writes(self, has_swap: bool) -> list[tuple[str, str]]:
        return [(os.path.join(self.dir, fname), value)
                for fname, value in v2_limit_writes(self.cpu, self.memory, self.pids, has_swap)]

    def plan_ahead(self) -> tuple[list[str], list[tuple[str, str]]] | None:
        """What apply() would do, as (directories to make, (file, value) writes), for another
        process to carry out; None until an apply here has enabled the controllers."""
        has_swap = _has_swap.get(self.parent)
        if has_swap is None:
            return None
        return [self.dir], self._limit_writes(has_swap)

    def directories(self) -> list[str]:
        return [self.dir]

    def procs_files(self) -> list[str]:
        return [os.path.join(self.dir, "cgroup.procs")]

    def self_join_files(self) -> list[str]:
        # v2 moves whole processes only, under the global lock: born there (clone3) instead
        return []

    def add_process(self, pid: int) -> None:
        for path in self.procs_files():
            write(path, str(pid), "join cgroup")

    def stats(self) -> CgroupStats:
        def f(name: str) -> str | None:
            return read(os.path.join(self.dir, name))
        raw = v2_stats(f("cpu.stat"), f("memory.peak"), f("memory.events"), f("pids.events"))
        if raw.cpu_seconds is None and not os.path.isdir(self.dir):  # cpu.stat is always there
            raw = replace(raw, lost=(self.dir,))
        return raw

    def recycle(self) -> bool:
        # Not on v2: memory.peak is reset per open file since Linux 6.12 only, and this
        # project's v2 lane (a 6.1 guest) could not test it. A new cgroup each time.
        return False

    def kill(self) -> None:
        kill_file = os.path.join(self.dir, "cgroup.kill")
        if os.path.exists(kill_file):
            write(kill_file, "1", "kill cgroup")
        else:
            kill_members(self.dir)

    def destroy(self) -> None:
        remove_dir(self.dir)

    def try_destroy(self) -> bool:
        return try_remove_dir(self.dir)

    def birth_dir(self) -> str | None:
        return self.dir
