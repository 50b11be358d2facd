"""Interleaved A/B of two versions of the plugin on the same trivial suite, in the same run.

    python bench/ab_compare.py [--rounds 10] [--tests 200] [--busy N] VARIANT ...

A VARIANT is NAME=WHERE[:ARGS]: WHERE is a git revision of this repository (exported to a
temporary directory) or a directory holding a `pytest_isolate` package; ARGS are pytest
options, split on spaces. A variant named "plain" is the baseline every other is measured
against. Each round runs every variant once, in a shuffled order, so that the machine's drift
cancels out; the script prints each variant's per-test overhead over plain (median, and each
round) and its CPU a test (the machine's busy time, as bench/per_test_overhead.py counts it),
and for two variants besides plain (and "forked", if given) the paired differences of both:
their medians and in how many rounds the second was better. Example (the change at HEAD against
its parent, with caps):

    python bench/ab_compare.py --rounds 10 plain=HEAD forked=HEAD:--forked \\
        "A=HEAD~1:--isolate=all --isolate-memory=1G" "B=HEAD:--isolate=all --isolate-memory=1G"

`--busy N` keeps N processes spinning (a busy loop, at the default priority) for the
whole comparison: how a test's cost holds up on a host whose CPUs other work wants. The CPU
figures then count the spinners too and are left out.

All rows run in the pytest 8.4.2 venv scripts/setup.sh builds (as bench/per_test_overhead.py).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from per_test_overhead import PY84, REPO, make_suite, run_once


def package_dir(where: str, tmp: Path) -> str:
    """A directory whose pytest_isolate is the one asked for."""
    if (Path(where) / "pytest_isolate").is_dir():
        return str(Path(where).resolve())
    out = tmp / f"rev-{len(list(tmp.iterdir()))}"
    out.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", where, "pytest_isolate"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", metavar="NAME=WHERE[:ARGS]")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--tests", type=int, default=200)
    ap.add_argument("--python", default=PY84)
    ap.add_argument("--busy", type=int, default=0, metavar="N",
                    help="keep N processes spinning meanwhile")
    a = ap.parse_args()
    # Each spins while this process lives: a killed comparison leaves none running.
    spin = f"import os\nwhile os.getppid() == {os.getpid()}: pass"
    spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(a.busy)]
    try:
        times, cpus = _compare(a)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    _print(a, times, None if a.busy else cpus)


def _compare(a: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    with tempfile.TemporaryDirectory(prefix="pti-ab-") as t:
        tmp = Path(t)
        (tmp / "pkgs").mkdir()
        variants = []
        for spec in a.variants:
            name, _, rest = spec.partition("=")
            where, _, args = rest.partition(":")
            variants.append((name, package_dir(where, tmp / "pkgs"), args.split()))
        if "plain" not in [v[0] for v in variants]:
            raise SystemExit("give a variant named plain: the baseline")
        suite = make_suite(tmp / "suite", a.tests)
        times: dict[str, list[float]] = {v[0]: [] for v in variants}
        cpus: dict[str, list[float]] = {v[0]: [] for v in variants}
        for _ in range(a.rounds):
            for name, path, args in random.sample(variants, len(variants)):
                wall, cpu = run_once(a.python, suite, args, a.tests, path)
                times[name].append(wall)
                cpus[name].append(cpu)
    return times, cpus


def _print(a: argparse.Namespace, times: dict[str, list[float]],
           cpus: dict[str, list[float]] | None) -> None:
    def overhead(name: str, of: dict[str, list[float]] | None = times) -> list[float]:
        return [(x - p) / a.tests * 1e3 for x, p in zip(of[name], of["plain"], strict=True)]

    for name in times:
        if name != "plain":
            o = overhead(name)
            cpu = ("" if cpus is None else
                   f"; CPU {statistics.median(overhead(name, cpus)):.2f} ms a test")
            print(f"{name:12s} {statistics.median(o):6.2f} ms a test over plain  "
                  f"({' '.join(f'{x:.1f}' for x in o)}){cpu}")
    if "forked" in times:
        f = overhead("forked")
        for name in times:
            if name not in ("plain", "forked"):
                r = [x / y for x, y in zip(overhead(name), f, strict=True)]
                print(f"{name:12s} / forked by round: median {statistics.median(r):.3f} "
                      f"[{min(r):.2f}-{max(r):.2f}]")
    others = [n for n in times if n not in ("plain", "forked")]
    if len(others) == 2:
        first, second = others
        d = [y - x for x, y in zip(overhead(first), overhead(second), strict=True)]
        print(f"{second} - {first}: median {statistics.median(d):+.3f} ms a test, "
              f"{second} better in {sum(x < 0 for x in d)} of {len(d)} rounds")
        if cpus is None:
            return
        c = [y - x for x, y in zip(overhead(first, cpus), overhead(second, cpus), strict=True)]
        print(f"{second} - {first}, CPU: median {statistics.median(c):+.3f} ms a test, "
              f"{second} less in {sum(x < 0 for x in c)} of {len(c)} rounds")


if __name__ == "__main__":
    sys.exit(main())
