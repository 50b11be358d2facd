"""Container start-to-finish cost against baselines measured in the same run.

    python bench/container_start.py [--runs 200] [--rootless]
    python bench/container_start.py --caps [--runs 200]    (on cgroup v2 also: by a write)

Prints medians (ms) of run(spec, noop) and run_command(spec, ["true"]) beside
`unshare --fork --pid --mount-proc --mount --uts --ipc --net true` and
`bwrap --unshare-all --ro-bind / / --proc /proc --dev /dev --tmpfs /tmp true`, and the ratios.
Rows alternate round by round so that drift on the machine hits every row alike.
--rootless re-runs this script as `nobody` with the interpreter scripts/setup.sh builds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_isolate.runtime import Resources, Spec, run, run_command
from pytest_isolate.runtime.cgroups import _detect
from pytest_isolate.runtime.local import here
from pytest_isolate.runtime.syscalls import can_fork_into_cgroup

ROOTLESS_PYTHON = "/opt/pytest-isolate/rootless-venv/bin/python"


def noop() -> None:
    return None


def rows(spec: Spec) -> dict:
    out = {
        "run(spec, noop)": lambda: run(spec, noop).unwrap(),
        'run_command(spec, ["true"])': lambda: run_command(spec, ["true"]),
    }
    unshare = ["unshare", "--fork", "--pid", "--mount-proc", "--mount", "--uts", "--ipc",
               "--net", "true"]
    if os.geteuid() != 0:
        unshare.insert(1, "--map-root-user")
    out["unshare (util-linux)"] = lambda: subprocess.run(unshare, check=True)
    if shutil.which("bwrap"):
        bwrap = ["bwrap", "--unshare-all", "--ro-bind", "/", "/", "--proc", "/proc", "--dev",
                 "/dev", "--tmpfs", "/tmp", "true"]
        out["bwrap"] = lambda: subprocess.run(bwrap, check=True)
    return out


def measure(runs: int, warmup: int = 10) -> dict[str, float]:
    table = rows(Spec())
    samples: dict[str, list[float]] = {name: [] for name in table}
    for _ in range(warmup):
        for fn in table.values():
            fn()
    for _ in range(runs):
        for name, fn in table.items():
            t = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t) * 1000)
    return {name: statistics.median(v) for name, v in samples.items()}


CAPS = Resources(cpu=1.0, memory="256M", pids=256)


def measure_caps(runs: int, idle: float, rows: tuple[str, ...]
                 ) -> tuple[dict[str, float], dict[str, tuple[float, float, float]]]:
    """Capped vs plain containers, alternating; `idle` seconds of sleep before each one, as
    real tests are spaced (the first cgroup.procs write after idle time stalls). Row
    "written": capped, but placed by a cgroup.procs write even where clone3 could place the
    child at birth (cgroup v2), for comparison.

    Returns the medians by row, and for each capped row the quartiles (25%, 50%, 75%) of what
    it added over the plain container of the same round: paired, so that the machine's drift
    over the run cancels out."""
    specs = {"plain": Spec(), "capped": Spec(resources=CAPS), "written": Spec(resources=CAPS)}
    samples: dict[str, list[float]] = {name: [] for name in rows}

    def once(name: str) -> None:
        here().clone3_usable = name != "written"
        try:
            run(specs[name], noop).unwrap()
        finally:
            here().clone3_usable = True

    for _ in range(5):
        for name in rows:
            once(name)
    for _ in range(runs):
        for name in rows:
            time.sleep(idle)
            t = time.perf_counter()
            once(name)
            samples[name].append((time.perf_counter() - t) * 1000)
    added = {}
    for name in rows[1:]:
        diffs = [c - p for c, p in zip(samples[name], samples["plain"], strict=True)]
        added[name] = tuple(statistics.quantiles(diffs, n=4))
    return {name: statistics.median(v) for name, v in samples.items()}, added


def report_caps(runs: int) -> None:
    v2 = _detect()[0] == "v2"
    rows = ("plain", "capped", "written") if v2 else ("plain", "capped")
    how = "born in its cgroup (clone3)" if v2 and can_fork_into_cgroup() else \
        "placed by cgroup.procs writes"
    print(f"cost of cpu+memory+pids caps, {runs} runs (ms); capped: {how}")
    print("  added: median of (capped - plain) within each round [quartiles]")
    for label, idle in (("back to back", 0.0), ("50 ms idle before each", 0.05)):
        m, added = measure_caps(runs, idle, rows)
        q = added["capped"]
        line = (f"  {label:<24} plain {m['plain']:6.2f}  capped {m['capped']:6.2f}  "
                f"added {q[1]:+6.2f} [{q[0]:+.2f}, {q[2]:+.2f}]")
        if v2:
            w = added["written"]
            line += f"  | by a write instead: added {w[1]:+6.2f} [{w[0]:+.2f}, {w[2]:+.2f}]"
        print(line)


def report(medians: dict[str, float], runs: int) -> None:
    who = "root" if os.geteuid() == 0 else f"rootless (uid {os.geteuid()})"
    print(f"container start, {who}, median of {runs} runs (ms)")
    for name, ms in medians.items():
        print(f"  {name:<30} {ms:7.2f}")
    if "bwrap" in medians:
        for name in ("run(spec, noop)", 'run_command(spec, ["true"])'):
            print(f"  ratio {name} / bwrap: {medians[name] / medians['bwrap']:.2f}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--rootless", action="store_true")
    ap.add_argument("--caps", action="store_true", help="measure what caps add instead")
    args = ap.parse_args()
    if args.rootless and os.geteuid() == 0:
        repo = Path(__file__).resolve().parents[1]
        return subprocess.call(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", ROOTLESS_PYTHON,
             str(repo / "bench" / "container_start.py"), "--runs", str(args.runs)],
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo), "HOME": "/tmp"},
            cwd="/tmp")
    if args.caps:
        report_caps(args.runs)
    else:
        report(measure(args.runs), args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
