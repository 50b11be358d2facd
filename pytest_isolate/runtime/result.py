"""What comes back from a container: values only, built by the parent from frames."""

from __future__ import annotations

import signal as _signal
from dataclasses import dataclass, field
from typing import Any

from .cgroups.files import CgroupStats as Stats
from .errors import IsolationError

__all__ = ["CommandFailed", "CommandResult", "Result", "Stats", "WorkloadError", "WorkloadFailed"]


@dataclass(frozen=True)
class WorkloadError:
    """An exception raised by the workload, as text (it lived in another process)."""

    type: str
    message: str
    traceback: str


def signal_name(sig: int | None) -> str:
    if sig is None:
        return ""
    try:
        return _signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


class WorkloadFailed(IsolationError):
    """Raised by `Result.unwrap()` when the workload did not return a value."""

    def __init__(self, result: Result):
        self.result = result
        super().__init__(result.describe())


@dataclass(frozen=True)
class Result:
    """Outcome of `run(spec, func, *args)`."""

    value: Any = None
    error: WorkloadError | None = None
    exit_status: int | None = None  # the workload's exit code, when it exited
    signal: int | None = None  # the signal that killed it, when one did
    timed_out: bool = False
    oom_killed: bool = False
    pids_limited: bool = False
    stats: Stats = field(default_factory=Stats)
    returned: bool = False  # the function returned (value is meaningful)
    # the call its seccomp filter denied with action "kill", e.g. "ptrace (101)"
    seccomp_denied: str | None = None

    @property
    def ok(self) -> bool:
        return self.returned and self.error is None

    def describe(self) -> str:
        if self.ok:
            return "returned"
        parts = []
        if self.timed_out:
            parts.append("timed out: every process of the container was killed")
        if self.oom_killed:
            parts.append("killed by the OOM killer")
        if self.pids_limited:
            parts.append("the pids cap was reached")
        if self.seccomp_denied is not None:
            parts.append(f"killed by seccomp: syscall {self.seccomp_denied} denied")
        elif self.error is not None:
            parts.append(f"raised {self.error.type}: {self.error.message}")
        elif self.signal is not None:
            parts.append(f"killed by {signal_name(self.signal)}")
        elif self.exit_status is not None:
            parts.append(f"exited with status {self.exit_status} before returning")
        return "; ".join(parts) or "ended without a result"

    def unwrap(self) -> Any:
        if not self.ok:
            raise WorkloadFailed(self)
        return self.value


@dataclass(frozen=True)
class CommandResult:
    """Outcome of `run_command(spec, argv)`; returncode is -N when signal N killed it."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes | None = None
    stderr: bytes | None = None
    timed_out: bool = False
    oom_killed: bool = False
    pids_limited: bool = False
    stats: Stats = field(default_factory=Stats)

    @property
    def signal(self) -> int | None:
        return -self.returncode if self.returncode < 0 else None

    def check_returncode(self) -> CommandResult:
        """The result itself, or CommandFailed when the program failed or timed out."""
        if self.returncode != 0 or self.timed_out:
            raise CommandFailed(self)
        return self


class CommandFailed(IsolationError):
    """A command run with `check=True` exited non-zero, was killed, or timed out."""

    def __init__(self, result: CommandResult):
        self.result = result
        how = f"exit status {result.returncode}"
        if result.signal is not None:
            how = f"killed by {signal_name(result.signal)}"
        if result.timed_out:
            how += " (timed out)"
        tail = (result.stderr or b"").decode(errors="replace")[-500:]
        super().__init__(f"{' '.join(result.argv)}: {how}" + (f": {tail}" if tail else "")
                         + "\nhint: its stderr is above; CommandResult is on .result")
