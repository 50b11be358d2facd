"""The stress lane: 1000 isolated tests of known kinds (tests/stress/suite.py), run plain and
with `-n 2`, and a fifth of them with every CPU kept busy. Every test's outcome and cap hit
must be its kind's, and afterwards nothing of the run may remain: no mount, cgroup, host link,
lease or owner lock of its processes, no process it left running, no file it wrote on the
host. Prints wall time and the cost a test.
Root only (caps on cgroup v1 need root; the rootless paths have their own lane)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import require, require_caps, sleeps_with
from tests.stress import suite
from tests.support import images

REPO = Path(__file__).resolve().parents[2]


def _outcomes(xml: Path) -> dict[str, tuple[str, str]]:
    out = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        outcome = ("failed" if "failure" in kinds else "error" if "error" in kinds
                   else "skipped" if "skipped" in kinds else "passed")
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        name = case.get("name")
        if outcome == "error" and name in out:  # an error at teardown after a result
            continue
        out[name] = (outcome, props.get("isolate_cap_hits", "none"))
    return out


def _run_pids(log: str) -> set[int]:
    return {int(p) for p in json.loads(log)} if log else set()


def _leftovers(pids: set[int], marker: str) -> list[str]:
    """What of the run's processes (pytest and its xdist workers) is still there."""
    left = []
    with open("/proc/self/mountinfo") as f:
        left += [f"mount {line.split()[4]}" for line in f if "pti" in line.split()[4]]
    for pid in pids:
        left += [f"cgroup {d}" for d in glob.glob(f"/sys/fs/cgroup/*/pti-{pid}-*")]
        left += [f"cgroup {d}" for d in glob.glob(f"/sys/fs/cgroup/*/*/pti-{pid}-*")]
        left += [f"link {n}" for n in os.listdir("/sys/class/net") if n.startswith(f"pti{pid:x}x")]
        left += [f"owner lock {p}" for p in glob.glob(f"/run/pytest-isolate/{pid}.lock")]
    try:
        with open("/run/pytest-isolate/leases.json") as f:
            leases = json.load(f)
        left += [f"lease {k}" for k, v in leases.items() if v in pids]
    except (OSError, ValueError):
        pass
    left += [f"process {p}" for p in sleeps_with(marker)]
    left += [f"host file {p}" for p in glob.glob("/var/tmp/pti-stress-*")]
    return left


@pytest.fixture(scope="module")
def stress_suite(tmp_path_factory):
    require(os.geteuid() == 0, "the stress lane runs as root")
    require_caps()
    require(images.available() is None, images.available() or "")
    d = tmp_path_factory.mktemp("stress")
    image = images.export_tar(str(d / "busybox.tar"), str(d))
    marker = str(uuid.uuid4().int)[:8]  # digits: it is part of a sleep argument
    suite.write(str(d / "suite"), marker, image)
    return d / "suite", marker


@pytest.mark.parametrize("workers", [None, 2], ids=["plain", "xdist-2"])
def test_a_thousand_isolated_tests_give_every_outcome_right_and_leave_nothing(
        stress_suite, workers):
    wall, n = _run_and_check(*stress_suite, workers)
    print(f"\n{n} isolated tests, {workers or 1} worker(s): {wall:.1f} s, "
          f"{wall / n * 1000:.1f} ms a test")


def test_with_every_cpu_busy_200_tests_still_give_every_outcome_right(stress_suite):
    """Beside a process spinning on each CPU (capped in time), every fifth test of the suite
    (200): no spurious timeout and no other wrong outcome, nothing left behind."""
    # Capped by themselves, not by timeout(1): killing that would orphan them.
    spin = "import time\nend = time.monotonic() + 240\nwhile time.monotonic() < end: pass"
    spinners = [subprocess.Popen([sys.executable, "-c", spin])
                for _ in range(os.cpu_count() or 1)]
    try:
        wall, n = _run_and_check(*stress_suite, None, every=5)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    print(f"\n{n} isolated tests beside {len(spinners)} spinning processes: {wall:.1f} s, "
          f"{wall / n * 1000:.1f} ms a test")


def _run_and_check(d: Path, marker: str, workers: int | None, every: int = 1
                   ) -> tuple[float, int]:
    """Run the suite (every `every`th test), check each outcome and that nothing is left;
    (wall time, tests run)."""
    tag = f"{workers}-{every}"
    xml = d / f"out-{tag}.xml"
    pids_file = d / f"pids-{tag}.json"
    # the run's pids (pytest, xdist workers), to look for what is theirs afterwards
    (d / "conftest.py").write_text(
        "import json, os\n"
        "def pytest_configure(config):\n"
        f"    path = {str(pids_file)!r}\n"
        "    try:\n        pids = json.load(open(path))\n    except OSError:\n        pids = []\n"
        "    json.dump(pids + [os.getpid()], open(path, 'w'))\n"
        "def pytest_collection_modifyitems(items):\n"
        f"    items[:] = items[::{every}]\n")
    pids_file.unlink(missing_ok=True)
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junit-xml={xml}",
            "-o", "junit_family=xunit1", "-o", "faulthandler_timeout=120"]
    if workers:
        args += ["-n", str(workers)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PYTEST_ADDOPTS", None)
    start = time.monotonic()
    proc = subprocess.run(args, cwd=d, env=env, capture_output=True, text=True, timeout=280)
    wall = time.monotonic() - start
    out = proc.stdout + proc.stderr
    assert "INTERNALERROR" not in out, out[-3000:]
    got = _outcomes(xml)
    expected = (suite.TOTAL + every - 1) // every
    assert len(got) == expected, (len(got), out[-3000:])
    wrong = {name: (have, suite.KINDS[suite.kind_of(name)][1])
             for name, have in got.items() if have != suite.KINDS[suite.kind_of(name)][1]}
    assert not wrong, (dict(list(wrong.items())[:10]), out[-3000:])
    pids = _run_pids(pids_file.read_text() if pids_file.exists() else "")
    left = []
    for _ in range(50):  # namespaces and links go in the kernel's background work
        left = _leftovers(pids, marker)
        if not left:
            break
        time.sleep(0.2)
    assert not left, left
    return wall, len(got)
