"""cgroup values and parsing, and the drivers against fake cgroup trees (no root needed)."""

from __future__ import annotations

import os

import pytest

from pytest_isolate.runtime.cgroups import detect_mode
from pytest_isolate.runtime.cgroups.files import (
    CgroupStats,
    cpu_quota_us,
    parse_flat_keyed,
    since,
    v1_limit_writes,
    v1_stats,
    v2_limit_writes,
    v2_stats,
)
from pytest_isolate.runtime.cgroups.v1 import V1Cgroup
from pytest_isolate.runtime.cgroups.v2 import V2Cgroup

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
"""
V1 = "\n".join(HYBRID.splitlines()[:4]) + "\n"
V2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


@pytest.mark.parametrize(("text", "mode"), [(HYBRID, "hybrid"), (V1, "v1"), (V2, "v2"),
                                            ("", "none")])
def test_detect_mode_reads_all_three_layouts(text, mode):
    assert detect_mode(text) == mode


def test_cpu_share_becomes_a_quota_per_100ms_period():
    assert cpu_quota_us(0.3) == 30000
    assert cpu_quota_us(2.5) == 250000
    assert cpu_quota_us(0.001) == 1000  # the kernel's floor


def test_v1_writes_quota_memory_with_swap_and_pids_in_order():
    assert v1_limit_writes(0.3, 64 << 20, 32, has_memsw=True) == [
        ("cpu", "cpu.cfs_period_us", "100000"), ("cpu", "cpu.cfs_quota_us", "30000"),
        ("memory", "memory.limit_in_bytes", str(64 << 20)),
        ("memory", "memory.memsw.limit_in_bytes", str(64 << 20)),
        ("pids", "pids.max", "32")]
    assert v1_limit_writes(None, None, None, True) == []


def test_v2_writes_cpu_max_memory_max_swap_zero_and_pids():
    assert v2_limit_writes(0.5, 1 << 30, 64, has_swap_file=True) == [
        ("cpu.max", "50000 100000"), ("memory.max", str(1 << 30)), ("memory.swap.max", "0"),
        ("pids.max", "64")]


def test_flat_keyed_files_parse():
    assert parse_flat_keyed("nr_periods 5\nnr_throttled 2\nthrottled_time 7\n") == {
        "nr_periods": 5, "nr_throttled": 2, "throttled_time": 7}


def test_v1_stats_count_oom_kills_not_failcnt():
    s = v1_stats("2500000000", "nr_periods 10\nnr_throttled 4\nthrottled_time 500000000",
                 "67108864", "oom_kill_disable 0\nunder_oom 0\noom_kill 1", "max 3")
    assert (s.cpu_seconds, s.throttled_periods, s.throttled_seconds) == (2.5, 4, 0.5)
    assert (s.memory_peak, s.oom_kills, s.pids_max_hits) == (67108864, 1, 3)


def test_v2_stats_read_usage_throttling_peak_and_events():
    s = v2_stats("usage_usec 1500000\nnr_throttled 3\nthrottled_usec 250000",
                 "1048576", "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n", "max 0")
    assert (s.cpu_seconds, s.throttled_periods, s.throttled_seconds) == (1.5, 3, 0.25)
    assert (s.memory_peak, s.oom_kills, s.pids_max_hits) == (1048576, 1, 0)


def test_figures_in_a_reused_cgroup_count_from_its_handover():
    now = CgroupStats(cpu_seconds=3.0, throttled_periods=7, throttled_seconds=0.5,
                      memory_peak=5 << 20, oom_kills=1, pids_max_hits=2)
    base = CgroupStats(cpu_seconds=2.0, throttled_periods=5, throttled_seconds=0.25,
                       memory_peak=9 << 20, oom_kills=1, pids_max_hits=0)
    # the peak was reset at the handover: it is this container's as it stands
    assert since(now, base) == CgroupStats(cpu_seconds=1.0, throttled_periods=2,
                                           throttled_seconds=0.25, memory_peak=5 << 20,
                                           oom_kills=0, pids_max_hits=2)
    assert since(CgroupStats(oom_kills=1), base).cpu_seconds is None  # absent stays absent


def test_missing_files_give_absent_figures_not_errors():
    s = v2_stats(None, None, None, None)
    assert s.cpu_seconds is None and s.oom_kills == 0


def _fake_tree(tmp_path, names):
    for n in names:
        (tmp_path / n).mkdir(parents=True)
    return {n: str(tmp_path / n) for n in names}


def test_v1_driver_creates_writes_and_removes_its_directories(tmp_path):
    parents = _fake_tree(tmp_path, ["cpu", "cpuacct", "memory", "pids"])
    cg = V1Cgroup("pti-1-0", parents, 0.3, 64 << 20, 32)
    cg.apply()
    assert (tmp_path / "cpu/pti-1-0/cpu.cfs_quota_us").read_text() == "30000"
    assert (tmp_path / "memory/pti-1-0/memory.limit_in_bytes").read_text() == str(64 << 20)
    assert not (tmp_path / "memory/pti-1-0/memory.memsw.limit_in_bytes").exists()
    assert (tmp_path / "pids/pti-1-0/pids.max").read_text() == "32"
    cg.add_process(1234)
    assert (tmp_path / "cpuacct/pti-1-0/cgroup.procs").read_text() == "1234"
    (tmp_path / "memory/pti-1-0/memory.oom_control").write_text("oom_kill 2\n")
    assert cg.stats().oom_kills == 2
    for d in cg.dirs.values():  # a real cgroup's files vanish with it; a fake's must go first
        for f in os.listdir(d):
            os.unlink(os.path.join(d, f))
    cg.destroy()
    assert not any(p.name.startswith("pti-") for p in tmp_path.rglob("*"))


def test_v1_recycle_hands_over_only_an_empty_cgroup_with_no_cap_hit(tmp_path):
    parents = _fake_tree(tmp_path, ["cpu", "cpuacct", "memory", "pids"])
    cg = V1Cgroup("pti-1-0", parents, None, 64 << 20, 32)
    cg.apply()
    files = {name: tmp_path / ctl / "pti-1-0" / name for ctl, name in [
        ("cpuacct", "cpuacct.usage"), ("memory", "memory.max_usage_in_bytes"),
        ("memory", "memory.oom_control"), ("pids", "pids.events"), ("pids", "pids.current")]}

    def counters(cpu_ns: int, peak: int, oom: int, pids_max: int, current: int) -> None:
        for name, value in [("cpuacct.usage", cpu_ns), ("memory.max_usage_in_bytes", peak),
                            ("memory.oom_control", f"oom_kill {oom}"),
                            ("pids.events", f"max {pids_max}"), ("pids.current", current)]:
            files[name].write_text(str(value))
    assert not cg.recycle()  # its figures were never read: nothing to count from
    counters(2_000_000_000, 8 << 20, 0, 0, 1)
    assert cg.stats().cpu_seconds == 2.0
    assert not cg.recycle()  # a process is still in it
    counters(2_000_000_000, 8 << 20, 0, 0, 0)
    cg.stats()
    assert cg.recycle()
    assert files["memory.max_usage_in_bytes"].read_text() == "0"  # the peak starts again
    counters(2_500_000_000, 3 << 20, 0, 1, 0)  # the next container's run
    s = cg.stats()
    assert (s.cpu_seconds, s.memory_peak, s.pids_max_hits) == (0.5, 3 << 20, 1)
    assert not cg.recycle()  # it hit its pids cap: a new cgroup for the next


def test_v1_driver_makes_joins_and_removes_a_co_mounted_cpu_cpuacct_directory_once(tmp_path):
    # systemd's v1 layout mounts cpu and cpuacct together: one directory serves both.
    both = str(tmp_path / "cpu,cpuacct")
    os.mkdir(both)
    parents = {**_fake_tree(tmp_path, ["memory", "pids"]), "cpu": both, "cpuacct": both}
    cg = V1Cgroup("pti-1-5", parents, 0.5, 64 << 20, 32)
    cg.apply()  # a second mkdir of the shared directory would fail with EEXIST
    shared = os.path.join(both, "pti-1-5")
    assert cg.directories().count(shared) == 1 and len(cg.directories()) == 3
    assert cg.self_join_files().count(os.path.join(shared, "tasks")) == 1
    assert (tmp_path / "cpu,cpuacct/pti-1-5/cpu.cfs_quota_us").read_text() == "50000"
    (tmp_path / "cpu,cpuacct/pti-1-5/cpuacct.usage").write_text("1500000000\n")
    assert cg.stats().cpu_seconds == 1.5
    for d in cg.directories():
        for f in os.listdir(d):
            os.unlink(os.path.join(d, f))
    cg.destroy()
    assert not any(p.name.startswith("pti-") for p in tmp_path.rglob("*"))


def test_a_sibling_has_the_same_parents_and_caps_and_a_new_name(tmp_path):
    v1 = V1Cgroup("pti-1-6", _fake_tree(tmp_path, ["cpu", "pids"]), 0.5, None, 8)
    twin = v1.sibling()
    assert twin.parents == v1.parents and (twin.cpu, twin.pids) == (0.5, 8)
    assert twin.directories() != v1.directories()
    v2 = V2Cgroup("pti-1-7", str(tmp_path), None, 1 << 20, None).sibling()
    assert v2.parent == str(tmp_path) and v2.memory == 1 << 20
    assert v2.dir != str(tmp_path / "pti-1-7") and os.path.dirname(v2.dir) == str(tmp_path)


def test_v1_driver_refuses_a_name_that_already_exists(tmp_path):
    parents = _fake_tree(tmp_path, ["cpu", "memory"])
    cg = V1Cgroup("pti-1-1", parents, 0.5, None, None)
    os.mkdir(tmp_path / "cpu/pti-1-1")  # a name collision: mkdir fails with EEXIST
    with pytest.raises(Exception, match="create cgroup"):
        cg.apply()


def test_v2_driver_enables_controllers_then_writes_limits(tmp_path):
    (tmp_path / "cgroup.subtree_control").write_text("")
    cg = V2Cgroup("pti-1-2", str(tmp_path), 1.5, None, 10)
    cg.apply()
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (tmp_path / "pti-1-2/cpu.max").read_text() == "150000 100000"
    assert (tmp_path / "pti-1-2/pids.max").read_text() == "10"


def test_v1_plan_ahead_waits_for_an_apply_then_gives_what_apply_did(tmp_path):
    parents = _fake_tree(tmp_path / "a", ["cpu", "cpuacct", "memory", "pids"])
    first = V1Cgroup("pti-1-3", parents, 0.3, 64 << 20, None)
    assert first.plan_ahead() is None  # whether swap is accounted is not known yet
    first.apply()
    mkdir, writes = V1Cgroup("pti-1-4", parents, 0.3, 64 << 20, None).plan_ahead()
    assert mkdir == [f"{parents[c]}/pti-1-4" for c in ("cpu", "cpuacct", "memory", "pids")]
    assert writes == [(f"{parents['cpu']}/pti-1-4/cpu.cfs_period_us", "100000"),
                      (f"{parents['cpu']}/pti-1-4/cpu.cfs_quota_us", "30000"),
                      (f"{parents['memory']}/pti-1-4/memory.limit_in_bytes", str(64 << 20))]


def test_v2_plan_ahead_waits_for_the_controllers_then_gives_dir_and_limits(tmp_path):
    (tmp_path / "cgroup.subtree_control").write_text("")
    assert V2Cgroup("pti-1-5", str(tmp_path), None, None, 10).plan_ahead() is None
    V2Cgroup("pti-1-5", str(tmp_path), None, None, 10).apply()
    mkdir, writes = V2Cgroup("pti-1-6", str(tmp_path), 1.5, None, None).plan_ahead()
    assert mkdir == [f"{tmp_path}/pti-1-6"]
    assert writes == [(f"{tmp_path}/pti-1-6/cpu.max", "150000 100000")]
