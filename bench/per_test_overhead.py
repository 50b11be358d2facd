"""Per-test overhead of --isolate=all against pytest-forked, measured in the same run.

    python bench/per_test_overhead.py [--tests 200] [--rounds 5] [--python PY] [--no-big]
        [--no-real]

Runs a suite of N trivial tests in a subprocess under several options, round-robin for
--rounds rounds, and prints the median wall time of each row, the per-test overhead over the
plain row ((row - plain) / N) and the ratio ours / pytest-forked, also taken within each round
(median [lowest, highest]), which the machine's drift over the run does not move. Beside
the wall time, each row's CPU a test: the whole machine's busy time during the run (user,
system, interrupts; not the time the hypervisor stole) minus the plain row's, over N. It
counts what the wall time can hide on an idle second CPU (the zygote's builds, the kernel's
cleanup workers) and what a loaded machine (xdist, a busy CI runner) pays for in wall time;
it also varies far less between rounds than the wall time does on a VM with steal. The
"500 MB" rows hold 500 MB of touched memory in the pytest process (fork and exit cost grows
with the parent's memory). The "six" rows run a suite written by others: six 1.17.0's
test_six.py (about 200 tests: classes, fixtures, skips, parametrized tests), from the sdist
scripts/setup.sh fetches.
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
ROWS = {
    "plain": [],
    "--forked": ["--forked"],
    "--isolate=all": ["--isolate=all"],
    "--isolate=all + caps": ["--isolate=all", *CAPS],
}
BIG = {
    "plain, 500 MB": [],
    "--forked, 500 MB": ["--forked"],
    "--isolate=all, 500 MB": ["--isolate=all"],
}
REAL = {
    "plain, six": [],
    "--forked, six": ["--forked"],
    "--isolate=all, six": ["--isolate=all"],
}
SIX_SDIST = Path("/opt/pytest-isolate/real-suite/six-1.17.0.tar.gz")
CONFTEST_500MB = """
# Private memory, every page touched: what a test suite's caches and fixtures look like to fork.
_held = bytearray(500 * 1024 * 1024)
for i in range(0, len(_held), 4096):
    _held[i] = 1
"""


def make_suite(root: Path, n: int, big: bool) -> Path:
    root.mkdir()
    (root / "test_trivial.py").write_text(
        f"import pytest\n\n@pytest.mark.parametrize('i', range({n}))\n"
        "def test_trivial(i):\n    assert i >= 0\n")
    (root / "conftest.py").write_text(CONFTEST_500MB if big else "")
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tests", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--python", default=PY84)
    ap.add_argument("--no-big", action="store_true", help="skip the 500 MB rows")
    ap.add_argument("--no-real", action="store_true", help="skip six's suite")
    a = ap.parse_args()
    real = not a.no_real
    if real and not SIX_SDIST.exists():
        raise SystemExit(f"{SIX_SDIST} is missing: run scripts/setup.sh (or give --no-real)")
    with tempfile.TemporaryDirectory(prefix="pti-bench-") as tmp:
        small = make_suite(Path(tmp) / "small", a.tests, big=False)
        large = make_suite(Path(tmp) / "large", a.tests, big=True)
        plan = [(name, small, args) for name, args in ROWS.items()]
        if not a.no_big:
            plan += [(name, large, args) for name, args in BIG.items()]
        counts: dict[Path, int | str] = {small: a.tests, large: a.tests}
        if real:
            six = six_suite(Path(tmp) / "real")
            plan += [(name, six, args) for name, args in REAL.items()]
            counts[six], n_six = _summary(a.python, six)
        times: dict[str, list[float]] = {name: [] for name, _, _ in plan}
        cpus: dict[str, list[float]] = {name: [] for name, _, _ in plan}
        for _ in range(a.rounds):
            for name, suite, args in plan:
                wall, cpu = run_once(a.python, suite, args, counts[suite])
                times[name].append(wall)
                cpus[name].append(cpu)
    med = {name: statistics.median(v) for name, v in times.items()}
    cpu_med = {name: statistics.median(v) for name, v in cpus.items()}
    version = subprocess.run([a.python, "-c", "import pytest; print(pytest.__version__)"],
                             capture_output=True, text=True).stdout.strip()
    print(f"{a.tests} trivial tests, {a.rounds} rounds, medians; pytest {version}")
    print(f"{'row':<26}{'wall s':>9}{'per test ms':>13}{'CPU a test ms':>15}")

    def show(name: str, base: str, n: int = a.tests) -> float:
        per = (med[name] - med[base]) / n * 1000
        cpu = (cpu_med[name] - cpu_med[base]) / n * 1000
        print(f"{name:<26}{med[name]:>9.2f}{per:>13.2f}{cpu:>15.2f}")
        return per

    def cpu_ratio(name: str, forked: str, base: str) -> str:
        return f"{(cpu_med[name] - cpu_med[base]) / (cpu_med[forked] - cpu_med[base]):.2f}"

    def paired(name: str, forked: str, base: str) -> str:
        """The ratio within each round (rows of one round ran seconds apart, so the
        machine's drift over the run cancels out): median [lowest, highest]."""
        r = [(o - p) / (f - p) for o, f, p in zip(times[name], times[forked], times[base],
                                                     strict=True)]
        return f"{statistics.median(r):.2f} [{min(r):.2f}, {max(r):.2f}]"

    show("plain", "plain")
    forked = show("--forked", "plain")
    ours = show("--isolate=all", "plain")
    caps = show("--isolate=all + caps", "plain")
    print(f"ratio ours/forked: {ours / forked:.2f} (caps: {caps / forked:.2f})")
    print(f"  paired by round: {paired('--isolate=all', '--forked', 'plain')} "
          f"(caps: {paired('--isolate=all + caps', '--forked', 'plain')})")
    print(f"  CPU a test, ours/forked: {cpu_ratio('--isolate=all', '--forked', 'plain')} "
          f"(caps: {cpu_ratio('--isolate=all + caps', '--forked', 'plain')})")
    if not a.no_big:
        show("plain, 500 MB", "plain, 500 MB")
        f_big = show("--forked, 500 MB", "plain, 500 MB")
        o_big = show("--isolate=all, 500 MB", "plain, 500 MB")
        print(f"ratio ours/forked with 500 MB: {o_big / f_big:.2f}")
        print("  paired by round: "
              + paired("--isolate=all, 500 MB", "--forked, 500 MB", "plain, 500 MB"))
        print("  CPU a test, ours/forked: "
              + cpu_ratio("--isolate=all, 500 MB", "--forked, 500 MB", "plain, 500 MB"))
    if real:
        print(f"six 1.17.0's test_six.py: {n_six} tests ({counts[six]})")
        show("plain, six", "plain, six", n_six)
        f_six = show("--forked, six", "plain, six", n_six)
        o_six = show("--isolate=all, six", "plain, six", n_six)
        print(f"ratio ours/forked on six: {o_six / f_six:.2f}")
        print("  paired by round: " + paired("--isolate=all, six", "--forked, six", "plain, six"))
        print("  CPU a test, ours/forked: "
              + cpu_ratio("--isolate=all, six", "--forked, six", "plain, six"))


def _summary(python: str, suite: Path) -> tuple[str, int]:
    """The summary line of a plain run of six's suite (every row must end with the same)
    and the number of tests in it."""
    proc = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:randomly", str(suite)], capture_output=True, text=True,
                          cwd=suite, env={**os.environ, "PYTHONPATH": str(REPO)})
    last = proc.stdout.strip().splitlines()[-1]
    counts = re.findall(r"(\d+) (passed|skipped|xfailed|xpassed|failed|error)", last)
    if proc.returncode != 0 or not counts:
        raise SystemExit(f"six's suite did not pass plain:\n{proc.stdout[-3000:]}")
    summary = last.split(" in ")[0].strip("= ")
    return summary, sum(int(c) for c, _ in counts)


if __name__ == "__main__":
    sys.exit(main())
