"""Per-test overhead of --isolate=all against pytest-forked, measured in the same run.

    python bench/per_test_overhead.py [--tests 200] [--rounds 5] [--python PY] [--big-mb MB]
        [--no-big] [--no-xdist] [--no-real]

Runs suites in a subprocess under several options, round-robin for --rounds rounds, in groups
of rows that share a suite and a baseline: plain pytest, `--forked`, `--isolate=all` (and,
on the trivial suite, `--isolate=all` with caps). For each row it prints the median wall time,
the per-test overhead over the group's plain row ((row - plain) / N), the CPU a test (the
whole machine's busy time during the run: user, system, interrupts, not the time the
hypervisor stole; minus plain's, over N), and the ratios ours / pytest-forked of both, the
wall one also taken within each round (median [lowest, highest]), which the machine's drift
over the run does not move. CPU counts what the wall time can hide on an idle second CPU (the
zygote's builds, the kernel's cleanup workers) and what a loaded machine (xdist, a busy CI
runner) pays for in wall time.

The groups: N trivial tests; the same with `-n 2` (pytest-xdist); the same with MB (500) of
touched memory in the pytest process (fork and exit cost grows with the parent's memory);
and a suite written by others, six 1.17.0's test_six.py (about 200 tests: classes,
fixtures, skips, parametrized tests) from the sdist scripts/setup.sh fetches.
All rows run in the pytest 8.4.2 venv scripts/setup.sh builds: pytest-forked 1.7.5 is broken on
pytest 9.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY84 = "/opt/pytest-isolate/pytest84/bin/python"
CAPS = ["--isolate-cpu=2", "--isolate-memory=1G", "--isolate-pids=1000"]
OURS = ["--isolate=all"]
ROWS = {"plain": [], "--forked": ["--forked"], "--isolate=all": OURS}
SIX_SDIST = Path("/opt/pytest-isolate/real-suite/six-1.17.0.tar.gz")
CONFTEST_BIG = """
# Private memory, every page touched: what a test suite's caches and fixtures look like to fork.
_held = bytearray({mb} * 1024 * 1024)
for i in range(0, len(_held), 4096):
    _held[i] = 1
"""


def make_suite(root: Path, n: int, mb: int = 0) -> Path:
    root.mkdir()
    (root / "test_trivial.py").write_text(
        f"import pytest\n\n@pytest.mark.parametrize('i', range({n}))\n"
        "def test_trivial(i):\n    assert i >= 0\n")
    (root / "conftest.py").write_text(CONFTEST_BIG.format(mb=mb) if mb else "")
    (root / "pytest.ini").write_text("[pytest]\n")
    return root


def six_suite(root: Path) -> Path:
    """six's own suite, unpacked; its test file is test_six.py."""
    with tarfile.open(SIX_SDIST) as tar:
        tar.extractall(root, filter="data")
    return root / "six-1.17.0"


_TICK = os.sysconf("SC_CLK_TCK")


def _busy_seconds() -> float:
    """CPU time the whole machine has been busy: user, nice, system, irq and softirq (not
    idle, iowait or the hypervisor's steal), from the first line of /proc/stat."""
    with open("/proc/stat") as f:
        user, nice, system, _, _, irq, softirq = (int(x) for x in f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / _TICK


def run_once(python: str, suite: Path, args: list[str], n: int | str,
             pythonpath: str = str(REPO)) -> tuple[float, float]:
    """(wall seconds, busy CPU seconds of the machine) of one pytest run of `suite`
    (pythonpath: where pytest_isolate comes from). n: the tests that must pass, or the
    summary every row of that suite must end with."""
    env = {**os.environ, "PYTHONPATH": pythonpath}
    busy, t0 = _busy_seconds(), time.perf_counter()
    proc = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:randomly", *args, str(suite)], capture_output=True,
                          text=True, env=env, cwd=suite)
    elapsed = time.perf_counter() - t0
    # The kernel's deferred cleanup of the last containers (namespaces, RCU) ends soon after.
    time.sleep(0.05)
    cpu = _busy_seconds() - busy
    want = f"{n} passed" if isinstance(n, int) else n
    if proc.returncode != 0 or want not in proc.stdout:
        raise SystemExit(f"row {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    return elapsed, cpu


class Group:
    """Rows that share a suite and a plain baseline."""

    def __init__(self, label: str, suite: Path, n: int, summary: int | str,
                 extra: list[str], caps: bool = False) -> None:
        self.label, self.suite, self.n, self.summary = label, suite, n, summary
        self.rows = {name: [*args, *extra] for name, args in ROWS.items()}
        if caps:
            self.rows["--isolate=all + caps"] = [*OURS, *CAPS, *extra]
        self.wall: dict[str, list[float]] = {name: [] for name in self.rows}
        self.cpu: dict[str, list[float]] = {name: [] for name in self.rows}

    def per_test(self, name: str, of: dict[str, list[float]]) -> float:
        return (statistics.median(of[name]) - statistics.median(of["plain"])) / self.n * 1000

    def paired(self, name: str) -> str:
        """The ratio to --forked within each round (rows of one round ran seconds apart, so
        the machine's drift over the run cancels out): median [lowest, highest]."""
        w = self.wall
        r = [(o - p) / (f - p) for o, f, p in zip(w[name], w["--forked"], w["plain"],
                                                     strict=True)]
        return f"{statistics.median(r):.2f} [{min(r):.2f}, {max(r):.2f}]"

    def show(self) -> None:
        print(f"\n{self.label}")
        print(f"{'row':<24}{'wall s':>8}{'ms a test':>11}{'CPU ms':>8}"
              f"{'wall/forked (by round)':>26}{'CPU/forked':>12}")
        forked_cpu = self.per_test("--forked", self.cpu)
        for name in self.rows:
            wall = self.per_test(name, self.wall)
            cpu = self.per_test(name, self.cpu)
            ratios = ("" if name in ("plain", "--forked") else
                      f"{self.paired(name):>26}{cpu / forked_cpu:>12.2f}")
            print(f"{name:<24}{statistics.median(self.wall[name]):>8.2f}{wall:>11.2f}"
                  f"{cpu:>8.2f}{ratios}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tests", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--python", default=PY84)
    ap.add_argument("--big-mb", type=int, default=500, help="the big pytest process's memory")
    ap.add_argument("--no-big", action="store_true", help="skip the big-process rows")
    ap.add_argument("--no-xdist", action="store_true", help="skip the -n 2 rows")
    ap.add_argument("--no-real", action="store_true", help="skip six's suite")
    a = ap.parse_args()
    if not a.no_real and not SIX_SDIST.exists():
        raise SystemExit(f"{SIX_SDIST} is missing: run scripts/setup.sh (or give --no-real)")
    version = subprocess.run([a.python, "-c", "import pytest; print(pytest.__version__)"],
                             capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="pti-bench-") as tmp:
        small = make_suite(Path(tmp) / "small", a.tests)
        groups = [Group(f"{a.tests} trivial tests", small, a.tests, a.tests, [], caps=True)]
        if not a.no_xdist:
            groups.append(Group(f"{a.tests} trivial tests, -n 2", small, a.tests, a.tests,
                                ["-n", "2"]))
        if not a.no_big:
            big = make_suite(Path(tmp) / "big", a.tests, a.big_mb)
            groups.append(Group(f"{a.tests} trivial tests, {a.big_mb} MB pytest process", big,
                                a.tests, a.tests, []))
        if not a.no_real:
            six = six_suite(Path(tmp) / "real")
            summary, n = _summary(a.python, six)
            groups.append(Group(f"six 1.17.0's test_six.py: {n} tests ({summary})", six, n,
                                summary, []))
        for _ in range(a.rounds):
            for g in groups:
                for name, args in g.rows.items():
                    wall, cpu = run_once(a.python, g.suite, args, g.summary)
                    g.wall[name].append(wall)
                    g.cpu[name].append(cpu)
    print(f"{a.rounds} rounds, medians; pytest {version}")
    for g in groups:
        g.show()


def _summary(python: str, suite: Path) -> tuple[str, int]:
    """The outcome counts of a plain run of six's suite ("198 passed, 2 skipped": every row
    must give the same) and the number of tests in it."""
    proc = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:randomly", str(suite)], capture_output=True, text=True,
                          cwd=suite, env={**os.environ, "PYTHONPATH": str(REPO)})
    last = proc.stdout.strip().splitlines()[-1]
    counts = re.findall(r"(\d+) (passed|skipped|xfailed|xpassed|failed|error)", last)
    if proc.returncode != 0 or not counts:
        raise SystemExit(f"six's suite did not pass plain:\n{proc.stdout[-3000:]}")
    # Outcomes only: pytest-forked does not carry a test's warnings back to the summary.
    return ", ".join(f"{c} {k}" for c, k in counts), sum(int(c) for c, _ in counts)


if __name__ == "__main__":
    sys.exit(main())
