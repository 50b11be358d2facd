"""Pure cgroup logic: which file gets which value, and parsing of the files read back.

Rule: no I/O here; the drivers do the reads and writes, these functions decide the text.
"""

from __future__ import annotations

from dataclasses import dataclass

CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class CgroupStats:
    """Figures read from a container's cgroup before it is removed."""

    cpu_seconds: float | None = None
    throttled_periods: int | None = None
    throttled_seconds: float | None = None
    memory_peak: int | None = None
    oom_kills: int = 0
    pids_max_hits: int = 0
    # directories of the cgroup gone when read: removed by someone else while the test ran,
    # so its caps stopped holding and the figures above are incomplete
    lost: tuple[str, ...] = ()


def since(now: CgroupStats, base: CgroupStats) -> CgroupStats:
    """The figures of one container in a reused cgroup: the counters less what they were
    when it was handed over (`base`, see V1Cgroup.recycle). The peak is not a counter: it was
    reset at the handover to what earlier containers left charged (at most
    RECYCLE_LEFTOVER), which then counted against this container's cap too, so it stays."""
    def less(a, b):
        return None if a is None else a - (b or 0)
    return CgroupStats(
        cpu_seconds=less(now.cpu_seconds, base.cpu_seconds),
        throttled_periods=less(now.throttled_periods, base.throttled_periods),
        throttled_seconds=less(now.throttled_seconds, base.throttled_seconds),
        memory_peak=now.memory_peak,
        oom_kills=now.oom_kills - base.oom_kills,
        pids_max_hits=now.pids_max_hits - base.pids_max_hits, lost=now.lost)


def cpu_quota_us(cpu: float) -> int:
    return max(1000, round(cpu * CPU_PERIOD_US))  # the kernel's floor is 1 ms


def v1_limit_writes(cpu: float | None, memory: int | None, pids: int | None,
                    has_memsw: bool) -> list[tuple[str, str, str]]:
    """(controller, file, value) in the order they must be written."""
    out = []
    if cpu is not None:
        out += [("cpu", "cpu.cfs_period_us", str(CPU_PERIOD_US)),
                ("cpu", "cpu.cfs_quota_us", str(cpu_quota_us(cpu)))]
    if memory is not None:
        out.append(("memory", "memory.limit_in_bytes", str(memory)))
        if has_memsw:  # memory+swap: without it the cap leaks into swap
            out.append(("memory", "memory.memsw.limit_in_bytes", str(memory)))
    if pids is not None:
        out.append(("pids", "pids.max", str(pids)))
    return out


def v2_limit_writes(cpu: float | None, memory: int | None, pids: int | None,
                    has_swap_file: bool) -> list[tuple[str, str]]:
    out = []
    if cpu is not None:
        out.append(("cpu.max", f"{cpu_quota_us(cpu)} {CPU_PERIOD_US}"))
    if memory is not None:
        out.append(("memory.max", str(memory)))
        if has_swap_file:
            out.append(("memory.swap.max", "0"))
    if pids is not None:
        out.append(("pids.max", str(pids)))
    return out


def parse_flat_keyed(text: str) -> dict[str, int]:
    """`key value` lines (cpu.stat, memory.events, memory.oom_control, pids.events)."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                pass
    return out


def v1_stats(cpuacct_usage: str | None, cpu_stat: str | None, max_usage: str | None,
             oom_control: str | None, pids_events: str | None) -> CgroupStats:
    cs = parse_flat_keyed(cpu_stat or "")
    return CgroupStats(
        cpu_seconds=int(cpuacct_usage) / 1e9 if cpuacct_usage else None,
        throttled_periods=cs.get("nr_throttled"),
        throttled_seconds=cs["throttled_time"] / 1e9 if "throttled_time" in cs else None,
        memory_peak=int(max_usage) if max_usage else None,
        oom_kills=parse_flat_keyed(oom_control or "").get("oom_kill", 0),
        pids_max_hits=parse_flat_keyed(pids_events or "").get("max", 0))


def v2_stats(cpu_stat: str | None, memory_peak: str | None, memory_events: str | None,
             pids_events: str | None) -> CgroupStats:
    cs = parse_flat_keyed(cpu_stat or "")
    return CgroupStats(
        cpu_seconds=cs["usage_usec"] / 1e6 if "usage_usec" in cs else None,
        throttled_periods=cs.get("nr_throttled"),
        throttled_seconds=cs["throttled_usec"] / 1e6 if "throttled_usec" in cs else None,
        memory_peak=int(memory_peak) if memory_peak and memory_peak.strip().isdigit() else None,
        oom_kills=parse_flat_keyed(memory_events or "").get("oom_kill", 0),
        pids_max_hits=parse_flat_keyed(pids_events or "").get("max", 0))
