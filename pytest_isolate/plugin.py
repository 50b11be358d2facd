"""pytest hooks only (entry point `isolate`, so `-p no:isolate` disables the plugin).

The work lives elsewhere: settings.py turns marker/CLI/ini into a Spec, runner.py runs an item in
a container, reporting.py formats what users read, fixtures.py holds the fixtures.
"""

from __future__ import annotations

import contextlib
import faulthandler
import importlib.metadata
import os
import signal
import sys
import threading

import pytest

from . import reporting, runner, settings
from .fixtures import (  # noqa: F401  (registers the fixtures)
    container,
    containers,
    isolation,
    network,
    veth_pair,
)

OPTIONS = pytest.StashKey[settings.Options]()

# PyPI projects that use our import package or marker name: both cannot work in one env.
CONFLICTS = {
    "pytest-isolate": "it installs the same import package `pytest_isolate` (a different "
                      "project; this one is pytest-isolate-ns)",
    "pytest-isolated": "it registers the same `isolated` marker",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    settings.add_options(parser)


def _check_conflicts() -> None:
    for dist, why in CONFLICTS.items():
        try:
            importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        raise pytest.UsageError(f"pytest-isolate-ns cannot run beside the installed package "
                                f"{dist}: {why}. Uninstall it: pip uninstall {dist}")


@pytest.hookimpl(trylast=True)  # after xdist's, which registers "dsession" in a controller
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", settings.MARKER_DOC)
    _check_conflicts()
    options = settings.read_options(config)
    if config.getoption("usepdb", False) and options.mode == "all":
        raise pytest.UsageError(_PDB_MESSAGE)
    config.stash[OPTIONS] = options
    config.pluginmanager.register(Summary(), "isolate-summary")
    _term_as_interrupt()
    _die_with_the_controller(config)
    _start_warm_for_all(config, options)


def _term_as_interrupt() -> None:
    """SIGTERM (a CI job cancelled, a runner's timeout) ends the run as Ctrl-C does: pytest's
    interrupted summary, and every container torn down on the way out. Only where nobody set
    a handler of their own, and only in this process: a forked test process (or a container's
    init) that gets it dies of it, as it would without us."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        return
    main = os.getpid()

    def on_term(signum: int, frame) -> None:
        if os.getpid() != main:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, on_term)


def _die_with_the_controller(config: pytest.Config) -> None:
    """An xdist worker whose controller is killed (SIGKILL: no shutdown message) would run
    its test to the end, containers and all, for nobody. It gets SIGTERM instead, which
    _term_as_interrupt makes an interrupt: its containers are torn down and it exits."""
    if getattr(config, "workerinput", None) is None:
        return
    from .runtime import syscalls as sc

    with contextlib.suppress(OSError):
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the controller died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


WARM_ASKED = pytest.StashKey[bool]()


def _start_warm_for_all(config: pytest.Config, options: settings.Options) -> None:
    """--isolate=all: start the zygote now, the earliest point where the options are known,
    so that its start-up (a fresh interpreter and a first container, 55-65 ms here) overlaps
    the session's start and collection; the first test of a 200-test run still waits 15-30
    ms for it. Not in an xdist controller, which runs no test (its workers start their own),
    nor for runs that run no test."""
    if (options.mode == "all" and not config.option.collectonly
            and not getattr(config.option, "help", False)
            and not config.pluginmanager.has_plugin("dsession")):
        config.stash[WARM_ASKED] = True
        _prepare_warm(options)


_PDB_MESSAGE = ("--pdb cannot debug a test inside a container (its process has no terminal "
                "and is killed with the container): add --isolate=off to run the isolated "
                "tests in-process while debugging")


def pytest_itemcollected(item: pytest.Item) -> None:
    """--isolate=marked: start the zygote at the first marked item, so that its start-up
    overlaps the rest of collection instead of delaying the first test."""
    config = item.config
    if config.stash.get(WARM_ASKED, False) or config.option.collectonly:
        return
    options = config.stash[OPTIONS]
    if options.mode == "marked" and item.get_closest_marker("isolated"):
        config.stash[WARM_ASKED] = True
        _prepare_warm(options)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    options = config.stash[OPTIONS]
    if config.getoption("usepdb", False) and options.mode == "marked":
        marked = [i.nodeid for i in items if i.get_closest_marker("isolated")]
        if marked:
            raise pytest.UsageError(f"{_PDB_MESSAGE} ({len(marked)} marked, e.g. {marked[0]})")
    if config.stash.get(WARM_ASKED, False) or config.option.collectonly:
        return
    # Markers other plugins added since collection ("all" started at configure).
    if options.mode == "marked" and any(i.get_closest_marker("isolated") for i in items):
        config.stash[WARM_ASKED] = True
        _prepare_warm(options)


def _prepare_warm(options: settings.Options) -> None:
    """Start the zygote and the first warm container now, so that they are ready when the
    first isolated test starts (a fresh interpreter takes 0.1-0.2 s to start)."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return  # warm containers are for root (runtime/warm/)
    from .runtime.syscalls import host_root

    if not host_root():
        return  # root confined in a container of ours: nested containers are rootless
    chosen = options.defaults.get("network")
    net = chosen.value if chosen is not None else "none"
    if net in ("none", "host"):
        from .runtime.warm import pool as warm

        with contextlib.suppress(Exception):  # a failure shows, with its message, at first use
            warm.prepare(net)


def pytest_unconfigure(config: pytest.Config) -> None:
    runner.drop_ahead()
    if "pytest_isolate.runtime.warm" in sys.modules:
        from .runtime.cgroups import spares
        from .runtime.warm import pool as warm

        warm.shutdown()
        spares.flush()


HEALED = pytest.StashKey[list]()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """A run killed before it could clean up (SIGKILL, OOM killer) left cgroups, leases, host
    links: the next run removes them first, and its header says what it removed."""
    if hasattr(session.config, "workerinput"):
        return  # an xdist worker: the controller did it
    from .runtime.host import state

    if state.dead_owners():
        session.config.stash[HEALED] = state.cleanup_stale()


def pytest_report_header(config: pytest.Config) -> str:
    if sys.platform != "linux":
        return f"isolate: unavailable ({sys.platform} is not Linux)"
    from .runtime import probe

    line = f"isolate: {probe.summary_line()}, mode {config.stash[OPTIONS].mode}"
    healed = config.stash.get(HEALED, None)
    if healed:
        shown = ", ".join(healed[:6]) + (f" and {len(healed) - 6} more" if len(healed) > 6
                                         else "")
        line += f"\nisolate: removed what killed runs left: {shown}"
    return line


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    options = item.config.stash[OPTIONS]
    try:
        chosen = settings.item_settings(item, options)
    except settings.SettingError as e:
        chosen = e
    if chosen is None:
        return None  # pytest's own protocol, in this process
    from .runtime import probe

    if _faulthandler_armed(item.config):
        # pytest armed faulthandler's watchdog thread for this test (faulthandler_timeout): a
        # fork does not copy that thread, and the copy's first faulthandler timer call then
        # waits for it forever. The container's own timeout and stack dump stand in for it.
        faulthandler.cancel_dump_traceback_later()
    runner.run_item(item, nextitem, chosen, options, probe.blocker())
    return True


def _faulthandler_armed(config: pytest.Config) -> bool:
    try:
        return float(config.getini("faulthandler_timeout") or 0) > 0
    except (ValueError, KeyError):
        return False


class Summary:
    """Collects the figures of isolated tests from their reports (so it works the same under
    xdist, whose controller only sees reports) and prints the table at the end."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}
        self.rows: list[reporting.Row] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        outcome = reporting.outcome_of(report)
        if outcome is not None:
            self.outcomes[report.nodeid] = outcome
        if report.when == "teardown":
            row = reporting.row_from_report(report, self.outcomes.pop(report.nodeid, "passed"))
            if row is not None:
                self.rows.append(row)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        lines = reporting.summary_lines(self.rows)
        kept = terminalreporter.config.stash.get(runner.KEPT_KEY, [])
        if kept:
            lines.append("kept files (--isolate-keep; an upper layer per test):")
            lines.extend(f"  {nodeid}: {path}" for nodeid, path in kept)
        if lines:
            terminalreporter.write_sep("=", "isolated tests (pytest-isolate)")
            for line in lines:
                terminalreporter.write_line(line)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed test that started containers gets their logs as report sections."""
    report = yield
    from .fixtures import CONTAINERS_KEY

    if report.failed and call.when == "call":
        _attach_captures(item, report)
    started = item.stash.get(CONTAINERS_KEY, None)
    if started and report.failed and call.when == "call":
        for i, c in enumerate(started):
            text = c.logs
            if text:
                report.sections.append((f"container {i} logs ({c.spec.image or 'host root'})",
                                        text))
    return report


def _attach_captures(item: pytest.Item, report: pytest.TestReport) -> None:
    """A failed test keeps its packet captures; its report names each, with a summary."""
    from .fixtures import LINKS_KEY
    from .runner import ACTIVE_KEY

    inside = item.stash.get(ACTIVE_KEY, None) is not None
    for links in item.stash.get(LINKS_KEY, ()):
        for cap in links.captures:
            packets = cap.stop()
            cap.keep = True
            if inside:  # the container's /tmp ends with it: the file travels with the report
                with open(cap.path, "rb") as f:
                    files = getattr(report, "isolate_files", [])
                    files.append((cap.path, f.read()))
                    report.isolate_files = files
            lines = [f"{cap.path} ({len(packets)} packets)"]
            lines += [f"  {p.time:.6f} {'>' if p.outgoing else '<'} {p.summary()}"
                      for p in packets[:20]]
            if len(packets) > 20:
                lines.append(f"  ... {len(packets) - 20} more")
            report.sections.append((f"packet capture {cap.end.name} {cap.end.ifname}",
                                    "\n".join(lines)))
