"""From what a container left (its frames and wait status) to a Result or CommandResult.

Rule: pure; the frames are protocol.py's.
"""

from __future__ import annotations

import os

from .errors import SetupError
from .process import protocol
from .result import CommandResult, Result, Stats, WorkloadError


def workload_status(frames: dict, status: int, direct: bool = False
                    ) -> tuple[int | None, int | None]:
    """(exit code, signal) of the workload: from init's frame, else from our direct child
    (`direct`: the child is the workload itself, as in a warm container)."""
    if protocol.EXIT in frames:
        status = frames[protocol.EXIT]["status"]
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    code = os.waitstatus_to_exitcode(status)
    if not direct and protocol.EXIT not in frames and code > 128:  # init or outer relayed 128+N
        return None, code - 128
    return code, None


def first_of_each(frames: list[dict]) -> dict[str, dict]:
    """Frames by kind (the first of each); a setup_error raises."""
    by_kind: dict[str, dict] = {}
    for frame in frames:
        by_kind.setdefault(frame["t"], frame)
    if protocol.SETUP_ERROR in by_kind:
        raise SetupError.from_frame(by_kind[protocol.SETUP_ERROR])
    return by_kind


def function_result(frames: dict, status: int, direct: bool, timed_out: bool,
                    stats: Stats) -> Result:
    exit_status, sig = workload_status(frames, status, direct)
    value, error, returned = None, None, False
    if protocol.RETURN in frames:
        value, returned = frames[protocol.RETURN].get("value"), True
    elif protocol.RAISE in frames:
        f = frames[protocol.RAISE]
        error = WorkloadError(f["type"], f["message"], f["traceback"])
    denied = None
    if protocol.SECCOMP in frames:
        f = frames[protocol.SECCOMP]
        denied = f"{f['name']} ({f['nr']})"
    return Result(value=value, error=error, exit_status=exit_status, signal=sig,
                  timed_out=timed_out, returned=returned, stats=stats,
                  oom_killed=stats.oom_kills > 0, pids_limited=stats.pids_max_hits > 0,
                  seccomp_denied=denied)


def command_result(argv: tuple[str, ...], frames: dict, status: int, direct: bool,
                   timed_out: bool, stats: Stats, out: dict) -> CommandResult:
    if protocol.EXEC_ERROR in frames:
        f = frames[protocol.EXEC_ERROR]
        raise SetupError("exec", f["argv0"], f["errno"], f["message"],
                         "is the program installed in the container's root filesystem, "
                         "and is it on PATH?")
    exit_status, sig = workload_status(frames, status, direct)
    returncode = -sig if sig is not None else (exit_status or 0)
    return CommandResult(
        argv=argv, returncode=returncode, timed_out=timed_out, stats=stats,
        oom_killed=stats.oom_kills > 0, pids_limited=stats.pids_max_hits > 0,
        stdout=bytes(out[1]) if 1 in out else None,
        stderr=bytes(out[2]) if 2 in out else None)
