"""One pytest item in a container: the parent side and the child side of the protocol.

Rule: the pytest process keeps the collectors and every fixture wider than function scope;
the container runs the item's setup, call and teardown (its function-scoped fixtures). So the
parent's SetupState stays in step however isolated and plain tests are mixed (the trap
pytest-forked fell into, pytest-forked#67), and a session fixture used by many isolated tests is
created once and inherited by each container through fork.

  pytest process                                   container (pid 2, a fork of this process)
  logstart; skip marks; settings; host check
  collectors + wider fixtures set up here
  start container -------------------------------> setup, call, teardown (function fixtures)
                                                   each report -> frame on a memfd (never
                                                   blocks, survives the process being killed;
                                                   report_frames.py)
  wait: Result with cgroup figures <-------------- exits
  read frames; a phase without a report gets one that says what killed it (OOM, pids,
  timeout with the test's Python stack, signal)
  log setup/call; tear down collectors the next item does not need; log the merged teardown

When the test passed and nothing in the pytest process stands between it and the next test,
the next test's container is started right after the frames are read, and this test is logged
while it starts ("going ahead", below).
"""

from __future__ import annotations

import contextlib
import faulthandler
import importlib
import os
import re
import shutil
import time
import warnings
from dataclasses import replace
from typing import Any, NoReturn

import pytest

from . import coverage_bridge, report_frames, reporting
from . import pytest_private as pp
from .runtime import api as rt
from .runtime.errors import IsolationError, SetupError, UnsupportedError, hint_for, host_limit_error
from .runtime.result import Result
from .runtime.warm import pool as warm
from .settings import ItemSettings, Options, SettingError, item_settings

PHASES = ("setup", "call", "teardown")
STACK_MARGIN = 0.15  # seconds before the timeout at which the test dumps its Python stack

ACTIVE_KEY = pytest.StashKey[ItemSettings]()  # set on an item while its container runs


class ContainerFailure(Exception):
    """What a test's report carries when its container ended it (usable in xfail(raises=))."""


class _Scratch:
    """Anonymous memory files the container writes into: reports, and the stack at timeout.
    A memfd never blocks the writer and keeps what was written if the writer is killed."""

    def __init__(self) -> None:
        # Close-on-exec: forks (the container) keep them, commands exec'd elsewhere do not.
        try:
            self.reports = os.memfd_create("pti-reports", os.MFD_CLOEXEC)
            try:
                self.stack = os.memfd_create("pti-stack", os.MFD_CLOEXEC)
            except BaseException:
                os.close(self.reports)
                raise
        except OSError as e:
            error = host_limit_error("make the report files", e)
            if error is None:
                raise
            raise error from e

    def reset(self) -> None:
        for fd in (self.reports, self.stack):
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)

    @staticmethod
    def read(fd: int) -> bytes:
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)


_scratches: list[_Scratch] = []


def _get_scratch(busy: _Scratch | None = None) -> _Scratch:
    """A reset scratch; not `busy`, which a container started ahead still writes into."""
    for scratch in _scratches:
        if scratch is not busy:
            break
    else:
        scratch = _Scratch()
        _scratches.append(scratch)
    scratch.reset()
    return scratch


# -- child side ------------------------------------------------------------------------------

def _child(item: pytest.Item, scratch: _Scratch, started: float, timeout: float | None) -> None:
    """Runs as the container's workload: the item's own protocol, every report to the memfd."""
    config = item.config
    # A crash dumps the Python stack into the report rather than onto the terminal.
    faulthandler.enable(file=scratch.stack, all_threads=True)
    if timeout is not None:
        left = timeout - (time.monotonic() - started) - STACK_MARGIN
        faulthandler.dump_traceback_later(max(left, 0.01), file=scratch.stack)
    pp.teardown_item_only(item)
    cov = coverage_bridge.in_container()

    def emit(frame: dict) -> None:
        report_frames.write(scratch.reports, frame)

    def report(rep: pytest.TestReport) -> pytest.TestReport:
        emit({"t": "report",
              "data": config.hook.pytest_report_to_serializable(config=config, report=rep)})
        return rep

    # Warnings: the parent's warnings plugin applied its filters before the fork; record here
    # and let the parent re-issue them, so they reach its warnings summary (and xdist's).
    with warnings.catch_warnings(record=True) as log:
        try:
            rep = report(pp.call_and_report(item, "setup", log=False))
            if rep.passed and not config.getoption("setuponly", False):
                report(pp.call_and_report(item, "call", log=False))
            report(pp.call_and_report(item, "teardown", log=False, nextitem=None))
        except pytest.exit.Exception as e:
            emit({"t": "exit", "msg": e.msg, "returncode": e.returncode})
    faulthandler.cancel_dump_traceback_later()
    if cov is not None:
        emit({"t": "coverage", "data": coverage_bridge.payload(cov)})
    for w in log:
        emit({"t": "warning", "module": w.category.__module__,
              "category": w.category.__qualname__, "message": str(w.message),
              "filename": w.filename, "lineno": w.lineno})


# -- parent side -----------------------------------------------------------------------------

def _capman(item: pytest.Item) -> Any:
    return item.config.pluginmanager.getplugin("capturemanager")


def _captured(item: pytest.Item, when: str):
    capman = _capman(item)
    return capman.item_capture(when, item) if capman else contextlib.nullcontext()


def _unsupported(err: IsolationError, options: Options) -> None:
    text = f"this host cannot isolate the test: {err}"
    if options.unsupported == "skip":
        pytest.skip(text)
    pytest.fail(f"{text}\n(set ini isolate_unsupported = skip to skip instead, or run with "
                "--isolate=off)", pytrace=False)


def _build_failed(e: SetupError) -> NoReturn:
    """The step, the cause and the fix as the setup error: no traceback of the launcher."""
    raise pytest.fail.Exception(f"the container could not be built: {e}", pytrace=False) from None


def _start(item: pytest.Item, settings: ItemSettings | SettingError, options: Options,
           scratch: _Scratch, blocker: UnsupportedError | None,
           sleep: bool = True) -> rt.ContainerProcess:
    """The parent's part of setup; any exception here becomes the setup report."""
    if isinstance(settings, SettingError):
        pytest.fail(str(settings), pytrace=False)
    reason = pp.skip_reason(item)
    if reason is not None:
        pytest.skip(reason)  # no container for a skipped test
    if blocker is not None:
        _unsupported(blocker, options)
    if pp.wider_setup_needed(item):  # else nothing runs: no output to capture
        with _captured(item, "setup"):
            pp.prepare_wider_fixtures(item)
    spec = settings.spec
    if options.keep != "never":
        spec = replace(spec, keep_dir=_fresh_keep_dir(item))
    item.stash[ACTIVE_KEY] = settings
    try:
        # Returns when the test is done: the pytest process sleeps while its copy runs.
        # Not so for a test started ahead (_go_ahead): the caller logs the one before.
        start = rt.start_until_done if sleep else rt.start
        return start(spec, _child, item, scratch, time.monotonic(), spec.resources.timeout)
    except UnsupportedError as e:
        _unsupported(e, options)
        raise  # not reached
    except SetupError as e:
        _build_failed(e)
    finally:
        del item.stash[ACTIVE_KEY]


KEEP_ROOT = "/dev/shm/pytest-isolate-keep-{uid}"  # tmpfs, not the root filesystem (see rootfs)


def _keep_dir(item: pytest.Item) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid)[-200:]
    return os.path.join(KEEP_ROOT.format(uid=os.getuid()), name)


def remove_tree(path: str) -> None:
    if not os.path.lexists(path):
        return
    for root, dirs, _ in os.walk(path):  # overlay work dirs are mode 000: open them first
        for d in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, d), 0o700)
    shutil.rmtree(path, ignore_errors=True)


def _fresh_keep_dir(item: pytest.Item) -> str:
    path = _keep_dir(item)
    remove_tree(path)  # an earlier run's files for this test
    try:
        os.makedirs(path, mode=0o700)
    except OSError as e:
        raise SetupError("make the keep directory", path, e.errno, "cannot create it",
                         hint_for("keep", e.errno)) from None
    return path


def _settle_keep_dir(item: pytest.Item, spec, reports, keep: str) -> None:
    """--isolate-keep: drop a passed test's files under `failed`; else say where they are."""
    path = spec.keep_dir
    if path is None:
        return
    failed = any(r.failed for r in reports.values())
    if keep == "failed" and not failed:
        remove_tree(path)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(path))  # only when no other test's files are kept
        return
    remove_tree(os.path.join(path, "w"))  # overlay's scratch, of no use to anyone
    target = reports.get("call") or reports["setup"]
    target.sections.append(("pytest-isolate: kept files",
                            f"what the test wrote is under {path}/u: one overlay upper layer "
                            f"per directory, listed in {path}/layers (deletions are 0/0 "
                            "character devices)"))
    kept = item.config.stash.setdefault(KEPT_KEY, [])
    kept.append((item.nodeid, path))


KEPT_KEY = pytest.StashKey[list]()


def _frames(scratch: _Scratch) -> list[dict]:
    return report_frames.parse(_Scratch.read(scratch.reports))


def _reissue_warning(frame: dict) -> None:
    category: type[Warning] = UserWarning
    message = frame["message"]
    try:
        obj: Any = importlib.import_module(frame["module"])
        for part in frame["category"].split("."):
            obj = getattr(obj, part)
        if isinstance(obj, type) and issubclass(obj, Warning):
            category = obj
    except Exception:
        message = f"{frame['category']}: {message}"
    warnings.warn_explicit(message, category, frame["filename"], frame["lineno"])


def _synthesize(item: pytest.Item, when: str, text: str,
                sections: list[tuple[str, str]]) -> pytest.TestReport:
    """A report for a phase the container did not report, made by pytest's own makereport
    (so xfail applies) and then given the plain-text reason."""
    def fail() -> None:
        raise ContainerFailure(text)

    call = pp.CallInfo.from_call(fail, when=when)  # type: ignore[arg-type]
    rep = item.ihook.pytest_runtest_makereport(item=item, call=call)
    if rep.failed:
        rep.longrepr = text
    rep.sections.extend(sections)
    return rep


def _dead_output(item: pytest.Item, when: str) -> list[tuple[str, str]]:
    """What the dead test printed: it is still in the global capture files (fd capture)."""
    capman = _capman(item)
    if capman is None or capman._global_capturing is None:
        return []
    out, err = capman.read_global_capture()
    return [(f"Captured {name} {when}", text) for name, text in (("stdout", out), ("stderr", err))
            if text]


def _teardown_in_parent(item: pytest.Item, nextitem: pytest.Item | None) -> pytest.TestReport:
    """Tear down the collectors and wider fixtures the next item does not need. Not through
    the pytest_runtest_teardown hook: other plugins' teardown hooks expect their own setup
    hooks to have run for this item in this process, and those ran in the container."""
    state = pp.setup_state(item)

    def teardown() -> None:
        with _captured(item, "teardown"):
            state.teardown_exact(nextitem)

    call = pp.CallInfo.from_call(teardown, when="teardown",
                                 reraise=pp.get_reraise_exceptions(item.config))
    return item.ihook.pytest_runtest_makereport(item=item, call=call)


def _merge_teardown(child: pytest.TestReport | None, parent: pytest.TestReport
                    ) -> pytest.TestReport:
    if child is None:
        return parent
    base, other = (parent, child) if parent.failed and not child.failed else (child, parent)
    seen = set(map(tuple, base.sections))
    base.sections.extend(s for s in other.sections if tuple(s) not in seen)
    if base is child and parent.failed:
        base.sections.append(("teardown in the pytest process", str(parent.longrepr)))
    base.duration = child.duration + parent.duration
    return base


def run_item(item: pytest.Item, nextitem: pytest.Item | None,
             settings: ItemSettings | SettingError, options: Options,
             blocker: UnsupportedError | None) -> list[pytest.TestReport]:
    """pytest_runtest_protocol for an isolated item."""
    ihook, config = item.ihook, item.config
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    ahead = _claim_ahead(item)
    if ahead is not None:
        scratch, call = ahead.scratch, ahead.call
    else:
        scratch, call = _begin(item, settings, options, blocker, sleep=True)
    reports: dict[str, pytest.TestReport] = {}
    exit_frame = None
    result: Result | None = None
    if call.excinfo is not None:
        reports["setup"] = ihook.pytest_runtest_makereport(item=item, call=call)
    else:
        proc: rt.ContainerProcess = call.result
        spec = proc.spec
        proc.keep_init = True  # ended below, once the next test's copy is forked
        ended = False
        try:
            try:
                proc.end()  # its cgroup figures are read after the next test's fork
                ended = True
            except SetupError as e:
                reports["setup"] = _synthesize(item, "setup", "the container could not be "
                                               f"built: {e}", [])
            frames = _frames(scratch)
            if ended and _passed_whole(frames):
                following = _ahead_settings(item, nextitem, options)
                if following is not None:
                    _go_ahead(nextitem, following, options, blocker, scratch)  # type: ignore[arg-type]
        finally:
            # The ended container's teardown (namespaces, mounts) runs beside this test's
            # reporting rather than on the CPU the next test's copy was about to start on.
            proc.release()
        if ended:
            result = proc.wait()  # at once: the figures
        for frame in frames:
            if frame["t"] == "report":
                rep = config.hook.pytest_report_from_serializable(config=config,
                                                                  data=frame["data"])
                _save_files(item, rep)
                reports.setdefault(rep.when, rep)
            elif frame["t"] == "warning":
                _reissue_warning(frame)
            elif frame["t"] == "coverage":
                coverage_bridge.merge(frame["data"])
            elif frame["t"] == "exit":
                exit_frame = frame
        if result is not None:
            _complete(item, reports, result, spec, scratch)
            _settle_keep_dir(item, spec, reports, options.keep)
    for when in ("setup", "call"):
        if when in reports:
            ihook.pytest_runtest_logreport(report=reports[when])
    if item.session.shouldfail or item.session.shouldstop or exit_frame:
        nextitem = None
    child_td = reports.get("teardown")
    if child_td is None or pp.has_report_sections(item) or pp.teardown_needed(item, nextitem):
        reports["teardown"] = _merge_teardown(child_td, _teardown_in_parent(item, nextitem))
    else:
        # Nothing to tear down here and no output of ours: the container's report is whole.
        reports["teardown"] = child_td
    if result is not None:
        props = reporting.properties(result, spec)
        for rep in reports.values():
            rep.user_properties.extend(props)
            if spec.privileged:  # said first wherever a failure of it is shown
                rep.sections.insert(0, ("pytest-isolate: privileged", reporting.PRIVILEGED_NOTE))
    ihook.pytest_runtest_logreport(report=reports["teardown"])
    pp.drop_request(item)
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    warm.release_asks()
    if exit_frame:
        pytest.exit(exit_frame["msg"], exit_frame["returncode"])
    return list(reports.values())


def _begin(item: pytest.Item, settings: ItemSettings | SettingError, options: Options,
           blocker: UnsupportedError | None, sleep: bool,
           busy: _Scratch | None = None) -> tuple[_Scratch | None, Any]:
    """The parent's part of setup and the container's start: (scratch, CallInfo of it)."""
    pp.reset_request(item)
    pp.store_xfail(item)
    got: list[_Scratch] = []

    def setup() -> rt.ContainerProcess:
        try:
            got.append(_get_scratch(busy))
        except SetupError as e:  # EMFILE, say: a setup error, like the rest
            _build_failed(e)
        return _start(item, settings, options, got[0], blocker, sleep)

    call = pp.CallInfo.from_call(setup, when="setup",
                                 reraise=pp.get_reraise_exceptions(item.config))
    return (got[0] if got else None), call  # no scratch only when the setup failed


# -- going ahead -------------------------------------------------------------------------------
# When a test's container is done and nothing in the pytest process stands between it and the
# next test (nothing to tear down, same module, same warning filters, no failure that could
# stop the session), the next test's container is started before this test's reports are
# logged: logging one test overlaps the start of the next, on the other CPU. Tests still run
# one at a time, in order: the next starts after this one's container is done.

_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


class _Ahead:
    def __init__(self, item: pytest.Item, scratch: _Scratch, call: Any,
                 raised: BaseException | None = None) -> None:
        self.item, self.scratch, self.call = item, scratch, call
        self.raised = raised  # pytest.exit in the next test's setup: raised at its turn

    def drop(self) -> None:
        call = self.call
        proc = call.result if call is not None and call.excinfo is None else None
        if proc is not None:
            proc.kill()
            with contextlib.suppress(Exception):
                proc.wait()


_ahead: _Ahead | None = None


def _claim_ahead(item: pytest.Item) -> _Ahead | None:
    global _ahead
    ahead, _ahead = _ahead, None
    if ahead is not None and ahead.item is not item:
        ahead.drop()  # another protocol ran the item it was started for
        return None
    if ahead is not None and ahead.raised is not None:
        raise ahead.raised
    return ahead


def drop_ahead() -> None:
    """At the session's end: a container started ahead for a test that never ran is killed."""
    global _ahead
    ahead, _ahead = _ahead, None
    if ahead is not None:
        ahead.drop()


def _filters(item: pytest.Item) -> list:
    return [(m.args, m.kwargs) for m in item.iter_markers("filterwarnings")]


def _passed_whole(frames: list[dict]) -> bool:
    """Whether the container reported every phase, none failed, and asked for no exit (read
    off the frames, before the reports are rebuilt from them)."""
    outcomes = {}
    for frame in frames:
        if frame["t"] == "exit":
            return False
        if frame["t"] == "report":
            data = frame["data"]
            outcomes.setdefault(data.get("when"), data.get("outcome"))
    return len(outcomes) == 3 and "failed" not in outcomes.values()


def _ahead_settings(item: pytest.Item, nextitem: pytest.Item | None, options: Options
                    ) -> ItemSettings | SettingError | None:
    """The next test's settings if its container may start before this test is logged (which
    passed: a failure may stop the session, with -x, --maxfail or --sw)."""
    config = item.config
    if (nextitem is None or not options.ahead
            or _CPUS < 2  # with one CPU the overlap is only extra work
            or hasattr(config, "workerinput")  # xdist may hand the next item to another worker
            or item.session.shouldfail or item.session.shouldstop):
        return None
    if pp.has_report_sections(item) or pp.teardown_needed(item, nextitem):
        return None  # the pytest process has work for this test before the next one
    if nextitem.path != item.path or _filters(nextitem) != _filters(item):
        return None  # the next test's hooks and warning filters differ
    if item.ihook.pytest_assertion_pass.get_hookimpls():
        return None  # pytest's assertion-pass hook is bound to the running item
    try:
        return item_settings(nextitem, options)  # None: it runs in the pytest process
    except SettingError as e:
        return e  # its setup fails with the message, as at its turn


def _go_ahead(nextitem: pytest.Item, settings: ItemSettings | SettingError, options: Options,
              blocker: UnsupportedError | None, busy: _Scratch) -> None:
    global _ahead
    # The zygote's next build waits until this test is logged: meanwhile the other CPU is the
    # next test's (run_item releases it).
    warm.hold_asks()
    try:
        scratch, call = _begin(nextitem, settings, options, blocker, sleep=False, busy=busy)
    except KeyboardInterrupt:
        warm.release_asks()
        raise
    except BaseException as e:  # pytest.exit: after this test's reports, as without going ahead
        _ahead = _Ahead(nextitem, busy, None, e)
        return
    _ahead = _Ahead(nextitem, scratch, call)


def _complete(item: pytest.Item, reports: dict[str, pytest.TestReport], result: Result,
              spec, scratch: _Scratch) -> None:
    """Give the phase the container died in a report that says why; note survived cap hits."""
    missing = [w for w in PHASES if w not in reports]
    setup = reports.get("setup")
    if setup is not None and not setup.passed:
        missing = [w for w in missing if w == "teardown"]  # no call after a failed setup
    if missing:
        when = missing[0]
        text = reporting.death_reason(result, spec, when)
        stack = _test_frames(_Scratch.read(scratch.stack).decode(errors="replace"))
        if stack and result.timed_out:
            text += f"\n\nPython stack of the test {STACK_MARGIN:g}s before the kill:\n{stack}"
        elif stack and result.signal is not None:
            text += f"\n\nPython stack of the test when it crashed:\n{stack}"
        reports[when] = _synthesize(item, when, text, _dead_output(item, when))
        return
    target = reports.get("call") or reports["setup"]
    note = reporting.hit_note(result, spec)
    if note:
        target.sections.append(("pytest-isolate: cap hit", note))
    lost = reporting.lost_cgroup_text(result, spec)
    if lost and target.passed:  # a pass without its caps proves less than it says
        target.outcome, target.longrepr = "failed", lost
    elif lost:
        target.sections.append(("pytest-isolate: cgroup removed", lost))


def _save_files(item: pytest.Item, rep: pytest.TestReport) -> None:
    """Files a failed test kept inside its container (packet captures), whose /tmp ends with
    it: written to this test's capture directory here, and its report names them there."""
    files = rep.__dict__.pop("isolate_files", None)
    if not files:
        return
    from .fixtures import capture_dir

    where = capture_dir(item)
    for inner, data in files:
        path = os.path.join(where, os.path.basename(inner))
        try:
            with open(path, "wb") as f:
                f.write(data)
        except OSError as e:
            path = f"{inner} (not written here: {e})"
        rep.sections = [(title, text.replace(inner, path)) for title, text in rep.sections]


def _test_frames(dump: str) -> str:
    """faulthandler's dump, most recent call first, cut where pytest's own machinery begins."""
    out = []
    for line in dump.strip().splitlines():
        if line.startswith(("Timeout (", "Fatal Python error")) or not line.strip():
            continue
        if line.lstrip().startswith("File ") and ("/_pytest/" in line or "/pluggy/" in line):
            break
        out.append(line)
    return "\n".join(out)
