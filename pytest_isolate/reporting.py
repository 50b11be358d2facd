"""What users read about an isolated test: failure reasons with figures, report properties,
and the terminal summary.

Rule: pure formatting from `Result`, `Spec` and reports; no processes, no kernel.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

import pytest

from .runtime.result import Result, signal_name
from .runtime.spec import Spec, format_size

PROP = "isolate_"  # prefix of every user property this plugin adds
SUMMARY_ROWS = 20


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:g}s" if value >= 1 or value == 0 else f"{value * 1000:.0f}ms"


def caps_text(spec: Spec) -> str:
    r = spec.resources
    parts = []
    if r.cpu is not None:
        parts.append(f"cpu={r.cpu:g}")
    if r.memory is not None:
        parts.append(f"memory={format_size(int(r.memory))}")
    if r.pids is not None:
        parts.append(f"pids={r.pids}")
    if r.timeout is not None:
        parts.append(f"timeout={r.timeout:g}s")
    return ",".join(parts) or "-"


def killed_by_seccomp(result: Result) -> bool:
    return result.seccomp_denied is not None or result.signal == signal.SIGSYS


def confinement_text(spec: Spec) -> str:
    """How the test was confined: "default", "privileged", or what differs from the default."""
    if spec.privileged:
        return "privileged"
    parts = []
    if spec.seccomp != "default":
        parts.append(f"seccomp={spec.seccomp!r}")
    if spec.cap_add:
        parts.append("cap_add=" + "+".join(spec.cap_add))
    if spec.cap_drop:
        parts.append("cap_drop=" + "+".join(spec.cap_drop))
    return ",".join(parts) or "default"


PRIVILEGED_NOTE = ("this test ran as full host root (privileged=True): every capability and "
                   "no seccomp filter, so it could change the host's kernel, clock, disks and "
                   "processes")


# Why a test that only wrote files can be OOM-killed: its filesystems are tmpfs.
IN_MEMORY = ("files the test wrote count too: the container's /tmp, /dev/shm and copy-on-write "
             "root are in memory")


def cap_hits(result: Result) -> list[str]:
    return [name for name, hit in (("oom", result.oom_killed), ("pids", result.pids_limited),
                                   ("timeout", result.timed_out),
                                   ("seccomp", killed_by_seccomp(result))) if hit]


def death_reason(result: Result, spec: Spec, when: str) -> str:
    """Why the test's process ended without reporting, naming the cap and its figures."""
    r, s = spec.resources, result.stats
    lines = []
    if result.timed_out:
        lines.append(f"timeout {r.timeout:g}s exceeded: every process of the test was killed")
    if result.oom_killed:
        lines.append(f"killed by the OOM killer: memory cap {format_size(int(r.memory or 0))} "
                     f"reached (peak {format_size(s.memory_peak)}; {IN_MEMORY})")
    if result.pids_limited:
        lines.append(f"pids cap {r.pids} reached: fork failed")
    if killed_by_seccomp(result):
        call = (f"syscall {result.seccomp_denied}" if result.seccomp_denied
                else "a system call (SIGSYS)")
        lines.append(f"killed by seccomp: {call} denied (the container's seccomp filter, "
                     "action kill; allow the call with seccomp='off' or a profile without "
                     "it, or use action 'errno' to get EPERM instead)")
    if not lines:
        if result.signal is not None:
            lines.append(f"crashed with {signal_name(result.signal)}")
        elif result.exit_status is not None:
            lines.append(f"the test process exited with status {result.exit_status} "
                         "(os._exit or sys.exit outside pytest's control)")
        elif result.error is not None:
            lines.append(f"pytest-isolate failed inside the container: {result.error.type}: "
                         f"{result.error.message}\n{result.error.traceback}")
        else:
            lines.append("the test process ended without a report")
    return f"{'; '.join(lines)} (during {when}, in an isolated container)"


def lost_cgroup_text(result: Result, spec: Spec) -> str | None:
    """The test's cgroup was removed while it ran: its caps stopped holding."""
    lost = result.stats.lost
    if not lost:
        return None
    return (f"the test's cgroup was removed while it ran, by another process: "
            f"{', '.join(lost)} (its caps {caps_text(spec)} stopped holding and its figures "
            "are incomplete); find what removes pytest-isolate's pti-* cgroups of live runs "
            "(`python -m pytest_isolate cleanup` removes only dead runs' ones)")


def hit_note(result: Result, spec: Spec) -> str | None:
    """A cap was hit but the test survived to report (e.g. fork failed under the pids cap)."""
    r, s = spec.resources, result.stats
    notes = []
    if result.oom_killed:
        notes.append(f"the OOM killer killed a process of this test: memory cap "
                     f"{format_size(int(r.memory or 0))} (peak {format_size(s.memory_peak)})")
    if result.pids_limited:
        notes.append(f"pids cap {r.pids} reached: fork failed "
                     f"{s.pids_max_hits} time{'s' if s.pids_max_hits != 1 else ''}")
    return "\n".join(notes) or None


def properties(result: Result, spec: Spec) -> list[tuple[str, object]]:
    """The figures as user properties (JUnit XML shows them; xdist carries them)."""
    s = result.stats
    props: list[tuple[str, object]] = [(PROP + "caps", caps_text(spec)),
                                       (PROP + "confinement", confinement_text(spec))]
    if s.cpu_seconds is not None:
        props.append((PROP + "cpu_seconds", round(s.cpu_seconds, 6)))
    if s.throttled_seconds is not None:
        props.append((PROP + "throttled_seconds", round(s.throttled_seconds, 6)))
    if s.memory_peak is not None:
        props.append((PROP + "memory_peak_bytes", s.memory_peak))
    props.append((PROP + "cap_hits", ",".join(cap_hits(result)) or "none"))
    return props


@dataclass
class Row:
    nodeid: str
    outcome: str
    caps: str
    cpu: float | None
    throttled: float | None
    peak: int | None
    hits: str


def outcome_of(report: pytest.TestReport) -> str | None:
    """The test's outcome as this report changes it, or None when it does not."""
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    if report.failed:
        return "failed" if report.when == "call" else "error"
    if report.skipped:
        return "skipped"
    return "passed" if report.when == "call" else None


def row_from_report(report: pytest.TestReport, outcome: str) -> Row | None:
    props = {k: v for k, v in (tuple(p) for p in report.user_properties) if str(k).startswith(PROP)}
    if PROP + "caps" not in props:
        return None

    def num(key: str, kind=float):
        v = props.get(PROP + key)
        return None if v is None else kind(v)

    return Row(report.nodeid, outcome, str(props[PROP + "caps"]), num("cpu_seconds"),
               num("throttled_seconds"), num("memory_peak_bytes", int),
               str(props.get(PROP + "cap_hits", "none")))


def summary_lines(rows: list[Row]) -> list[str]:
    """A short table: every test that hit a cap, then the most CPU-hungry, up to SUMMARY_ROWS."""
    if not rows:
        return []
    ranked = sorted(rows, key=lambda r: (r.hits == "none", -(r.cpu or 0.0)))
    shown = ranked[:SUMMARY_ROWS]
    header = ("test", "outcome", "caps", "cpu", "throttled", "peak mem", "cap hit")
    table = [header] + [
        (r.nodeid, r.outcome, r.caps, _seconds(r.cpu), _seconds(r.throttled),
         format_size(r.peak), r.hits if r.hits != "none" else "-") for r in shown]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in table]
    total_cpu = sum(r.cpu or 0.0 for r in rows)
    hit = sum(r.hits != "none" for r in rows)
    tail = f"{len(rows)} isolated test{'s' if len(rows) != 1 else ''}, {hit} hit a cap, " \
           f"{total_cpu:.2f}s CPU in total"
    if len(rows) > len(shown):
        tail += f"; {len(rows) - len(shown)} more not shown (all figures: --junit-xml)"
    return [*lines, tail]
