"""cgroup v1 (and hybrid) driver: one directory per hierarchy the caps need.

cpu and cpuacct may be separate hierarchies (they are on the development machine), so each
controller is resolved to its own directory. Figures come from cpuacct.usage, cpu.stat,
memory.max_usage_in_bytes, memory.oom_control (oom_kill, not failcnt) and pids.events.
"""

from __future__ import annotations

import os
from dataclasses import replace

from ..errors import SetupError
from .driver import kill_members, new_name, read, remove_dir, try_remove_dir, write
from .files import CgroupStats, since, v1_limit_writes, v1_stats

CONTROLLERS = ("cpu", "cpuacct", "memory", "pids")

# memory parent dir -> whether its children have memory.memsw.* (swap accounting): learned by
# the first apply there, after which a cgroup's steps can be planned for the zygote.
_has_memsw: dict[str, bool] = {}

# What an ended container may leave charged to its memory cgroup (page cache of files it read
# or wrote, kernel objects freed late) for the cgroup still to be handed to the next container
# with the same caps: that much is not the next container's, yet counts against its cap and in
# its peak until reclaimed. A trivial test leaves 10-400 KiB here.
RECYCLE_LEFTOVER = 1 << 20


class V1Cgroup:
    def __init__(self, name: str, parents: dict[str, str], cpu: float | None,
                 memory: int | None, pids: int | None):
        # every hierarchy we can write, so the figures are complete whichever cap is asked
        self.parents = parents
        self.dirs = {ctl: os.path.join(parents[ctl], name) for ctl in CONTROLLERS
                     if ctl in parents}
        # Co-mounted controllers (systemd's "cpu,cpuacct") share one directory: made, joined
        # and removed once.
        self.unique = list(dict.fromkeys(self.dirs.values()))
        self.cpu, self.memory, self.pids = cpu, memory, pids
        self._base: CgroupStats | None = None  # the counters when it was last handed over
        self._raw: CgroupStats | None = None  # the counters stats() read last

    def sibling(self) -> V1Cgroup:
        return V1Cgroup(new_name(), self.parents, self.cpu, self.memory, self.pids)

    def apply(self) -> None:
        made = []
        try:
            for d in self.unique:
                try:
                    os.mkdir(d)
                except OSError as e:
                    raise SetupError("create cgroup", d, e.errno, e.strerror or "") from None
                made.append(d)
            has_memsw = "memory" in self.dirs and os.path.exists(
                os.path.join(self.dirs["memory"], "memory.memsw.limit_in_bytes"))
            if "memory" in self.dirs:
                _has_memsw[os.path.dirname(self.dirs["memory"])] = has_memsw
            for path, value in self._limit_writes(has_memsw):
                write(path, value, "set cgroup limit")
        except BaseException:
            for d in reversed(made):
                remove_dir(d)
            raise

    def _limit_writes(self, has_memsw: bool) -> list[tuple[str, str]]:
        return [(os.path.join(self.dirs[ctl], fname), value) for ctl, fname, value
                in v1_limit_writes(self.cpu, self.memory, self.pids, has_memsw)]

    def plan_ahead(self) -> tuple[list[str], list[tuple[str, str]]] | None:
        """What apply() would do, as (directories to make, (file, value) writes), for another
        process to carry out; None until an apply here has shown whether swap is accounted."""
        has_memsw = False
        if "memory" in self.dirs:
            known = _has_memsw.get(os.path.dirname(self.dirs["memory"]))
            if known is None:
                return None
            has_memsw = known
        return list(self.unique), self._limit_writes(has_memsw)

    def directories(self) -> list[str]:
        return list(self.unique)

    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.unique]

    def self_join_files(self) -> list[str]:
        # v1 keeps a cgroup per thread: a fresh fork's only thread moving itself moves it all
        return [os.path.join(d, "tasks") for d in self.unique]

    def add_process(self, pid: int) -> None:
        for path in self.procs_files():
            write(path, str(pid), "join cgroup")

    def stats(self) -> CgroupStats:
        lost: dict[str, None] = {}

        def f(ctl: str, name: str) -> str | None:
            d = self.dirs.get(ctl)
            if not d:
                return None
            value = read(os.path.join(d, name))
            if value is None and not os.path.isdir(d):
                lost[d] = None
            return value
        self._raw = None
        raw = v1_stats(f("cpuacct", "cpuacct.usage"), f("cpu", "cpu.stat"),
                       f("memory", "memory.max_usage_in_bytes"),
                       f("memory", "memory.oom_control"), f("pids", "pids.events"))
        if lost:
            raw = replace(raw, lost=tuple(lost))
        self._raw = raw
        return raw if self._base is None else since(raw, self._base)

    def recycle(self) -> bool:
        """Make this ended container's cgroup ready for the next with the same caps, instead
        of removing it and making another: True when it is.

        Why: a cgroup made and removed per container costs about 0.7 ms of CPU beyond the
        mkdir and rmdir themselves (the kernel frees a memory cgroup in workers after RCU
        grace periods; a removed one lingers while pages are charged to it), and on two CPUs
        that CPU is the next test's. Handed over only when it is as good as new: empty, no
        cap hit by the last container, at most RECYCLE_LEFTOVER bytes still charged; its
        counters then count from here (stats() subtracts them, files.since), its peak from
        what is charged now."""
        raw = self._raw
        if raw is None:  # never read: nothing to count from
            return False
        done = raw if self._base is None else since(raw, self._base)
        if done.oom_kills or done.pids_max_hits or done.lost:
            return False
        if "pids" in self.dirs:
            if read(os.path.join(self.dirs["pids"], "pids.current")) != "0":
                return False  # still exiting (pids counts them until they are reaped)
        elif read(os.path.join(self.unique[0], "tasks")) != "":
            return False
        memory = self.dirs.get("memory")
        if memory is not None:
            try:  # the peak starts again from what is charged now
                write(os.path.join(memory, "memory.max_usage_in_bytes"), "0", "reset peak")
            except SetupError:
                return False
            text = read(os.path.join(memory, "memory.max_usage_in_bytes"))
            if text is None or not text.isdigit() or int(text) > RECYCLE_LEFTOVER:
                return False
        self._base = raw
        self._raw = None
        return True

    def kill(self) -> None:
        for d in self.unique:
            kill_members(d)

    def destroy(self) -> None:
        for d in self.unique:
            remove_dir(d)

    def try_destroy(self) -> bool:
        return all([try_remove_dir(d) for d in self.unique])

    def birth_dir(self) -> str | None:
        return None  # clone3 places only on cgroup v2; on v1 a process joins itself
