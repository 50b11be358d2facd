"""Run a command as root inside a User-Mode Linux guest with pure cgroup v2 and sch_netem.

    python tests/lanes/uml/run.py [--timeout 600] [--mem 1536M] -- CMD [ARG ...]

The guest boots Debian's `user-mode-linux` kernel with the host's root as a read-only hostfs
and `cgroup_no_v1=all`; tests/lanes/uml/init.sh prepares it and runs CMD in this directory
with this environment's PATH, PYTHONPATH and PYTEST_ISOLATE_* variables. The exit status is
CMD's (a temporary host directory, mounted read-write in the guest, carries it back); 124
when the guest timed out, 125 when it did not boot. See docs/developer/lanes.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
KERNEL = "/usr/bin/linux"
PASS_ENV = ("PATH", "PYTHONPATH", "PYTEST_ISOLATE_STRICT", "PYTEST_ISOLATE_LANE",
            "PYTHONDONTWRITEBYTECODE", "LANG")


def available() -> str | None:
    """None when the lane can run here, else what is missing and the fix."""
    if not os.path.exists(KERNEL):
        return "the User-Mode Linux kernel is not installed (apt-get install user-mode-linux)"
    if os.geteuid() != 0:
        return "the UML lane starts from root (its guest's hostfs runs as the caller)"
    if not os.path.isdir("/dev/shm"):
        return "/dev/shm is missing (UML keeps its memory file there)"
    return None


def run(argv: list[str], timeout: float = 600, mem: str = "1536M", cwd: str | None = None,
        env: dict[str, str] | None = None) -> tuple[int, str]:
    """Boot, run argv, power off. Returns (exit status, console output)."""
    env = dict(os.environ if env is None else env)
    shared = Path(tempfile.mkdtemp(prefix="pti-uml-"))
    try:
        env.setdefault("PYTHONDONTWRITEBYTECODE", "1")  # the guest's root is read-only
        lines = [f"export {k}={shlex.quote(env[k])}" for k in PASS_ENV if k in env]
        lines.append(f"export PTI_CWD={shlex.quote(cwd or os.getcwd())}")
        lines.append("export HOME=/tmp")
        (shared / "env.sh").write_text("\n".join(lines) + "\n")
        (shared / "cmd.sh").write_text("exec " + shlex.join(argv) + "\n")
        boot = [KERNEL, f"mem={mem}", "root=/dev/root", "rootfstype=hostfs", "rootflags=/",
                "ro", f"init={HERE / 'init.sh'}", "cgroup_no_v1=all", "quiet",
                "con=null", "con0=null,fd:1", f"pti_shared={shared}"]
        proc = subprocess.Popen(boot, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "TMPDIR": "/dev/shm"})
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # UML's helper threads are processes too
            out, _ = proc.communicate()
            return 124, out.decode(errors="replace") + f"\n[uml lane: timeout {timeout}s]\n"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        status = shared / "status"
        text = out.decode(errors="replace")
        if not status.exists():
            return 125, text + "\n[uml lane: the guest wrote no exit status]\n"
        return int(status.read_text().strip() or 125), text
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--mem", default="1536M")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    argv = args.command[1:] if args.command[:1] == ["--"] else args.command
    missing = available()
    if missing:
        print(f"uml lane: {missing}", file=sys.stderr)
        return 125
    code, out = run(argv, args.timeout, args.mem)
    sys.stdout.write(out)
    return code


if __name__ == "__main__":
    sys.exit(main())
