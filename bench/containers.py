"""Image containers: first start (unpack), cached start and exec, against baselines measured
in the same run.

    python bench/containers.py [--runs 50] [--megabytes 50]

Builds a busybox image of about 50 MB (tests/support/images.py) as a `docker export` tarball,
then prints medians (ms) of:
- first start: open_image on an empty cache (unpack + digest) plus a command run, beside
  `tar -xf` of the same file into an empty directory (the unpacking alone, by GNU tar)
- cached start: run_command(Spec(image=...), ["true"]) with the layer cached, beside
  run_command(Spec(), ["true"]) (a host-root container)
- exec into a running container: Container.run(["true"]), beside subprocess.run(["true"])
  on the host (fork + exec, no namespaces).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_isolate.runtime import Spec, run_command
from pytest_isolate.runtime.images import open_image
from pytest_isolate.runtime.live import Container
from tests.support import images as imgs


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--megabytes", type=int, default=50)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="pti-bench-")
    try:
        os.chmod(work, 0o755)
        image = imgs.big_export(os.path.join(work, "big.tar"), work, args.megabytes)
        size = os.path.getsize(image) / 1e6
        first, tar_x = [], []
        for i in range(max(3, args.runs // 10)):
            cache = os.path.join(work, f"cache{i}")
            first.append(timed(lambda cache=cache: run_command(
                Spec(layers=open_image(image, cache).layers), ["true"])))
            dest = os.path.join(work, f"x{i}")
            os.mkdir(dest)
            tar_x.append(timed(lambda dest=dest: subprocess.run(["tar", "-xf", image, "-C", dest],
                                                                check=True)))
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(dest, ignore_errors=True)
        os.environ["PYTEST_ISOLATE_CACHE"] = os.path.join(work, "cache")
        open_image(image)
        rows = {"cached start: run_command(Spec(image=...), true)":
                lambda: run_command(Spec(image=image), ["true"]),
                "baseline: run_command(Spec(), true), host root":
                lambda: run_command(Spec(), ["true"])}
        c = Container(Spec(image=image))
        rows["exec: Container.run(true)"] = lambda: c.run(["true"])
        rows["baseline: subprocess.run(true) on the host"] = lambda: subprocess.run(["true"])
        samples = {k: [] for k in rows}
        for _ in range(5):
            for fn in rows.values():
                fn()
        for _ in range(args.runs):
            for name, fn in rows.items():
                samples[name].append(timed(fn))
        c.stop()
        print(f"image: {size:.0f} MB docker export tarball, {args.runs} runs, medians in ms")
        print(f"{'first start (unpack + digest + run)':52} {statistics.median(first):9.2f}")
        print(f"{'baseline: tar -xf of the same file':52} {statistics.median(tar_x):9.2f}")
        for name, v in samples.items():
            print(f"{name:52} {statistics.median(v):9.2f}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
