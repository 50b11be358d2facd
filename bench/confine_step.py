"""The confine step alone, as a test's process runs it: in a fresh fork of this process.

    python bench/confine_step.py [--forks 200]

For each confinement, forks --forks children; each applies it (kernel/confine.py, prepared
in this process first, as the runtime does) and sends back how long that took. Prints the
median and the 90th percentile in microseconds. Root: the bounding-set drops need
CAP_SETPCAP (rootless runs confine inside a user namespace; see docs/explanation/security.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_isolate.runtime.confine import policy
from pytest_isolate.runtime.kernel import confine

ROWS = {
    "default (caps, filter)": policy.confinement("default", own_netns=True),
    "kill action (+ SIGSYS handler)": policy.confinement({"deny": ["ptrace"], "action": "kill"}),
    "privileged (no_new_privs only)": policy.confinement("default", privileged=True),
}


def once(conf) -> float:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        t0 = time.perf_counter()
        confine.confine(conf, report_fd=w)
        os.write(w, struct.pack("d", time.perf_counter() - t0))
        os._exit(0)
    os.close(w)
    data = os.read(r, 8)
    os.close(r)
    os.waitpid(pid, 0)
    return struct.unpack("d", data)[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--forks", type=int, default=200)
    n = ap.parse_args().forks
    if os.geteuid() != 0:
        sys.exit("run as root (see the docstring)")
    for conf in ROWS.values():
        confine.prepare(conf)
    times: dict[str, list[float]] = {k: [] for k in ROWS}
    for _ in range(n):  # interleaved: the machine's drift touches every row alike
        for name, conf in ROWS.items():
            times[name].append(once(conf) * 1e6)
    print(f"{'confinement':<34} median    p90   (us, {n} forks each)")
    for name, ts in times.items():
        p90 = statistics.quantiles(ts, n=10)[-1]
        print(f"{name:<34} {statistics.median(ts):6.0f} {p90:6.0f}")


if __name__ == "__main__":
    main()
