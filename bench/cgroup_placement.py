"""Placing a child in a cgroup: a cgroup.procs write against clone3 (v2) and against the child
moving itself (v1).

    python bench/cgroup_placement.py [--runs 30]
    python tests/lanes/uml/run.py -- python bench/cgroup_placement.py   (pure v2, kernel 6.1)

Forks a child that sleeps, then writes its pid to cgroup.procs of a fresh `pti-<pid>-bench`
directory below this process's cgroup on the cgroup2 mount (a hybrid host's controller-less
one will do), against `syscalls.fork_into_cgroup` (clone3 CLONE_INTO_CGROUP) into the same
directory. Back to back and with 50 ms of idle time before each: the first write after idle
time may wait for an RCU grace period (see docs/explanation/architecture.md, cgroups).
Where cgroup v1 hierarchies for cpu, cpuacct, memory and pids are mounted (a hybrid host), the
same for a `pti-<pid>-bench` directory in each: the parent writing the child's pid to each
`cgroup.procs`, against the child writing "0" to each `tasks` (cgroups.driver.join_self),
timed from the fork until the child, in place, has said so. Prints medians (ms). Root only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_isolate.runtime import syscalls as sc
from pytest_isolate.runtime.cgroups import own_v2_dir
from pytest_isolate.runtime.cgroups.driver import join_self

V1 = ("cpu", "cpuacct", "memory", "pids")


def _sleeper() -> None:
    time.sleep(30)
    os._exit(0)


def measure(where: str, runs: int, idle: float) -> dict[str, list[float]]:
    fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
    out: dict[str, list[float]] = {"fork": [], "write": [], "clone3": []}
    try:
        for _ in range(runs):
            time.sleep(idle)
            t0 = time.perf_counter()
            pid = os.fork()
            if pid == 0:
                _sleeper()
            t1 = time.perf_counter()
            with open(os.path.join(where, "cgroup.procs"), "w") as f:
                f.write(str(pid))
            t2 = time.perf_counter()
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            out["fork"].append(t1 - t0)
            out["write"].append(t2 - t1)
            time.sleep(idle)
            t0 = time.perf_counter()
            pid = sc.fork_into_cgroup(fd)
            if pid == 0:
                _sleeper()
            out["clone3"].append(time.perf_counter() - t0)
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return out


def measure_v1(dirs: list[str], runs: int, idle: float) -> dict[str, list[float]]:
    """Fork until the child, in place, says so: after the parent's writes and its "placed"
    byte (how containers were placed before), or after moving itself (join_self)."""
    out: dict[str, list[float]] = {"write": [], "self": []}
    for _ in range(runs):
        for how in ("write", "self"):
            time.sleep(idle)
            placed_r, placed_w = os.pipe()
            ready_r, ready_w = os.pipe()
            t0 = time.perf_counter()
            pid = os.fork()
            if pid == 0:
                if how == "self":
                    join_self([os.path.join(d, "tasks") for d in dirs])
                else:
                    os.read(placed_r, 1)
                os.write(ready_w, b".")
                _sleeper()
            if how == "write":
                for d in dirs:
                    with open(os.path.join(d, "cgroup.procs"), "w") as f:
                        f.write(str(pid))
                os.write(placed_w, b"p")
            os.read(ready_r, 1)
            out[how].append(time.perf_counter() - t0)
            for fd in (placed_r, placed_w, ready_r, ready_w):
                os.close(fd)
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    return out


def main_v1(runs: int) -> None:
    parents = [f"/sys/fs/cgroup/{ctl}" for ctl in V1]
    if not all(os.path.isfile(os.path.join(p, "tasks")) for p in parents):
        print("no cgroup v1 hierarchies for " + ", ".join(V1) + ": v1 rows skipped")
        return
    dirs = [os.path.join(p, f"pti-{os.getpid()}-bench") for p in parents]
    made = []
    try:
        for d in dirs:
            os.mkdir(d)
            made.append(d)
        print(f"cgroup v1, {len(dirs)} hierarchies, fork until the child runs in place, "
              f"median of {runs} runs (ms)")
        for label, idle in (("back to back", 0.0), ("50 ms idle before each", 0.05)):
            m = {k: statistics.median(v) * 1000 for k, v in measure_v1(dirs, runs, idle).items()}
            print(f"  {label:<24} parent writes cgroup.procs {m['write']:6.2f} | child "
                  f"writes 0 to tasks {m['self']:6.2f}")
    finally:
        time.sleep(0.1)  # the last child's exit settles before rmdir
        for d in made:
            os.rmdir(d)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    a = ap.parse_args()
    main_v1(a.runs)
    if not sc.can_fork_into_cgroup():
        raise SystemExit("clone3 is refused here or this process has threads")
    base = own_v2_dir()
    if base is None:
        raise SystemExit("no cgroup2 mount here")
    where = os.path.join(base, f"pti-{os.getpid()}-bench")
    os.mkdir(where)
    try:
        print(f"placing a child in {where}, median of {a.runs} runs (ms), kernel "
              f"{os.uname().release}")
        for label, idle in (("back to back", 0.0), ("50 ms idle before each", 0.05)):
            m = {k: statistics.median(v) * 1000 for k, v in measure(where, a.runs, idle).items()}
            print(f"  {label:<24} fork {m['fork']:6.2f} + write {m['write']:6.2f} = "
                  f"{m['fork'] + m['write']:6.2f} | clone3 into the cgroup {m['clone3']:6.2f}")
    finally:
        time.sleep(0.1)  # the last child's exit settles before rmdir
        os.rmdir(where)
    return 0


if __name__ == "__main__":
    sys.exit(main())
