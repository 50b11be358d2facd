"""Placing a child in a cgroup v2 directory: fork + cgroup.procs write against clone3.

    python bench/cgroup_placement.py [--runs 30]
    python tests/lanes/uml/run.py -- python bench/cgroup_placement.py   (pure v2, kernel 6.1)

Forks a child that sleeps, then writes its pid to cgroup.procs of a fresh `pti-<pid>-bench`
directory below this process's cgroup on the cgroup2 mount (a hybrid host's controller-less
one will do), against `syscalls.fork_into_cgroup` (clone3 CLONE_INTO_CGROUP) into the same
directory. Back to back and with 50 ms of idle time before each: the first write after idle
time may wait for an RCU grace period (see docs/explanation/architecture.md, cgroups).
Prints medians (ms). Root only.
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    a = ap.parse_args()
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
