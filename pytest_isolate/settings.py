"""Marker, command line and ini -> one `Spec` per test, with where each value came from.

Rule: precedence lives here and nowhere else: marker > command line > ini > built-in default.
Markers nearer the test win per argument (function over class over module `pytestmark`).
Bad command-line or ini values stop the run at start (`pytest.UsageError`); bad marker values
fail only the test that carries them (`SettingError`, raised at its setup).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from .runtime.errors import SpecError
from .runtime.network.leases import DEFAULT_POOL, DEFAULT_POOL6, set_pool, set_pool6
from .runtime.spec import Resources, Spec, validate

MODES = ("marked", "all", "off")
KEEP = ("never", "failed", "always")
UNSUPPORTED = ("fail", "skip")
AHEAD = ("true", "false")

# marker argument -> help text (also the `isolated` marker's documentation)
MARKER_ARGS: dict[str, str] = {
    "cpu": "CPUs as a float > 0 (0.3 = 30% of one CPU; above 1 allowed)",
    "memory": "memory cap, bytes or a size like 64M or 1.5G (swap is capped too)",
    "pids": "most processes and threads at once (>= 2)",
    "timeout": "seconds of wall time for setup, call and teardown; then every process dies",
    "network": '"none" (only lo, the default), "veth" (eth0 linked to the host, which is '
               'reachable at isolation.host_ip; root only) or "host" (the host\'s network '
               'namespace)',
    "hostname": "the container's hostname (default: isolated)",
    "env": "a dict of environment variables added inside",
    "rootfs": "a directory to use as the root filesystem instead of the host's",
    "seccomp": '"default" (the calls Docker\'s default profile denies fail with EPERM), '
               '"off", a list of more calls to deny, or {"deny": [...], "action": "errno" '
               '| "kill", "profile": "default" | "off"}',
    "privileged": "True: the test runs as full host root (every capability, no seccomp "
                  "filter), and its report says so",
    "cap_add": "capabilities kept besides the default set, e.g. ['SYS_PTRACE']",
    "cap_drop": "capabilities of the default set dropped too, e.g. ['NET_RAW']",
}
CONFINEMENT_ARGS = ("seccomp", "privileged", "cap_add", "cap_drop")
RESOURCE_ARGS = ("cpu", "memory", "pids", "timeout")
# arguments that have --isolate-X options and isolate_X ini keys
DEFAULTABLE = ("cpu", "memory", "pids", "timeout", "network")

MARKER_DOC = ("isolated(" + ", ".join(f"{k}=" for k in MARKER_ARGS) + "): run this test, its "
              "function-scoped fixtures included, in its own container (pytest-isolate). "
              + "; ".join(f"{k}: {v}" for k, v in MARKER_ARGS.items()))


class SettingError(Exception):
    """A marker argument that cannot work: names the test, the argument, the value, the source."""

    def __init__(self, test: str, arg: str, value: object, source: str, expected: str):
        self.test, self.arg, self.value, self.source = test, arg, value, source
        super().__init__(f"{test}: isolated({arg}={value!r}) from {source}: {expected}")


@dataclass(frozen=True)
class Setting:
    value: Any
    source: str  # "marker on test_x", "--isolate-cpu", "ini isolate_cpu", "default"


@dataclass(frozen=True)
class Options:
    """Session-wide settings from the command line and ini, checked once at configure."""

    mode: str = "marked"
    keep: str = "never"
    unsupported: str = "fail"
    defaults: dict[str, Setting] = field(default_factory=dict)
    # Start the next test's container while this one is reported (runner.py, "going ahead").
    ahead: bool = True


@dataclass(frozen=True)
class ItemSettings:
    """What one isolated test runs with."""

    spec: Spec
    sources: dict[str, str]  # argument -> where its value came from

    def describe(self) -> str:
        res = self.spec.resources
        shown = [f"{k}={getattr(res, k)!r}" for k in RESOURCE_ARGS if getattr(res, k) is not None]
        shown.append(f"network={self.spec.network!r}")
        shown += [f"{k}={getattr(self.spec, k)!r}" for k in CONFINEMENT_ARGS if k in self.sources]
        return ", ".join(shown)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("isolate", "run tests in Linux containers (pytest-isolate)")
    group.addoption("--isolate", choices=MODES, default=None, dest="isolate_mode",
                    help="marked: only tests marked isolated (default); all: every test; "
                         "off: run marked tests in-process (e.g. for --pdb)")
    for arg in DEFAULTABLE:
        group.addoption(f"--isolate-{arg}", default=None, dest=f"isolate_{arg}",
                        metavar=arg.upper(), help=f"default {arg} for isolated tests: "
                        # argparse formats help with %: "30% of one CPU" broke --help
                                                  f"{MARKER_ARGS[arg]}".replace("%", "%%"))
    group.addoption("--isolate-keep", choices=KEEP, default=None, dest="isolate_keep",
                    help="keep each container's written files (its upper layer) and print "
                         "where: never (default), failed, always")
    for arg in DEFAULTABLE:
        parser.addini(f"isolate_{arg}", f"default {arg} for isolated tests: {MARKER_ARGS[arg]}",
                      default=None)
    parser.addini("isolate_unsupported", "when this host cannot isolate a test: fail "
                  "(default) or skip it, with the reason and the fix", default=None)
    parser.addini("isolate_ahead", "start an isolated test's container while the test before "
                  "it is still being reported, on another CPU: true (default) or false",
                  default=None)
    parser.addini("isolate_subnet_pool", "IPv4 range that links' subnets are leased from "
                  f"(shared by xdist workers; default {DEFAULT_POOL})", default=None)
    parser.addini("isolate_subnet6_pool", "IPv6 unique local range that gives each leased "
                  f"IPv4 subnet its /64 (default {DEFAULT_POOL6})", default=None)


def _check_value(arg: str, value: object) -> tuple[Any, str | None]:
    """(normalised value, None) or (value, what is expected), using the runtime's own checks."""
    try:
        if arg in RESOURCE_ARGS:
            spec = validate(Spec(resources=Resources(**{arg: value})))
            return getattr(spec.resources, arg), None
        spec = validate(Spec(**{arg: value}))
        return getattr(spec, arg), None
    except SpecError as e:
        return value, e.expected
    except TypeError as e:
        return value, str(e)


def _from_text(arg: str, text: str) -> object:
    """Command-line and ini values are strings: give numbers their type."""
    if arg == "cpu" or arg == "timeout":
        try:
            return float(text)
        except ValueError:
            return text
    if arg == "pids":
        try:
            return int(text)
        except ValueError:
            return text
    return text


def _choice(config: pytest.Config, opt: str | None, ini: str | None,
            choices: tuple[str, ...], default: str) -> str:
    """A choice from the command line (argparse checks it), else the ini (checked here)."""
    value = config.getoption(opt) if opt else None
    if value is not None:
        return value
    text = config.getini(ini) if ini else None
    if not text:
        return default
    if text not in choices:
        raise pytest.UsageError(f"ini {ini} = {text!r}: expected one of {', '.join(choices)}")
    return text


def read_options(config: pytest.Config) -> Options:
    """Check the command line and ini once; a bad value is a usage error naming its source."""
    defaults: dict[str, Setting] = {}
    for arg in DEFAULTABLE:
        cli = config.getoption(f"isolate_{arg}")
        ini = config.getini(f"isolate_{arg}")
        if cli is not None:
            raw, source = cli, f"--isolate-{arg}"
        elif ini:
            raw, source = ini, f"ini isolate_{arg}"
        else:
            continue
        value, expected = _check_value(arg, _from_text(arg, str(raw).strip()))
        if expected is not None:
            raise pytest.UsageError(f"{source}={raw!r}: expected {expected}")
        defaults[arg] = Setting(value, source)
    for ini, use in (("isolate_subnet_pool", set_pool), ("isolate_subnet6_pool", set_pool6)):
        pool = config.getini(ini)
        if pool:
            try:
                use(str(pool))
            except SpecError as e:
                raise pytest.UsageError(f"ini {ini} = {pool!r}: expected {e.expected}"
                                        ) from None
    return Options(mode=_choice(config, "isolate_mode", None, MODES, "marked"),
                   keep=_choice(config, "isolate_keep", None, KEEP, "never"),
                   unsupported=_choice(config, None, "isolate_unsupported", UNSUPPORTED,
                                       "fail"),
                   defaults=defaults,
                   ahead=_choice(config, None, "isolate_ahead", AHEAD, "true") == "true")


def _marker_source(node: pytest.Item | pytest.Collector, item: pytest.Item) -> str:
    if node is item:
        return f"marker on {item.name}"
    if isinstance(node, pytest.Class):
        return f"marker on class {node.name}"
    if isinstance(node, pytest.Module):
        return f"pytestmark of module {node.name}"
    return f"marker on {node.nodeid or node.name}"


def marker_settings(item: pytest.Item) -> dict[str, Setting] | None:
    """The isolated markers' arguments, nearest marker first; None when the test has none."""
    found: dict[str, Setting] = {}
    marked = False
    for node, mark in item.iter_markers_with_node("isolated"):
        marked = True
        source = _marker_source(node, item)
        if mark.args:
            raise SettingError(item.nodeid, "*args", mark.args, source,
                               "isolated() takes keyword arguments only, e.g. "
                               "isolated(cpu=0.5, memory='64M')")
        for arg, value in mark.kwargs.items():
            if arg not in MARKER_ARGS:
                close = difflib.get_close_matches(arg, MARKER_ARGS, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise SettingError(item.nodeid, arg, value, source,
                                   f"unknown argument; {hint}known: {', '.join(MARKER_ARGS)}")
            found.setdefault(arg, Setting(value, source))
    return found if marked else None


def item_settings(item: pytest.Item, options: Options) -> ItemSettings | None:
    """The test's container settings, or None when it runs in-process."""
    if options.mode == "off":
        return None
    marked = marker_settings(item)
    if marked is None:
        if options.mode != "all":
            return None
        # Every unmarked test of a session gets the same settings: build them once.
        global _unmarked
        if _unmarked is None or _unmarked[0] is not options:
            _unmarked = (options, _build(item, options, {}))
        return _unmarked[1]
    return _build(item, options, marked)


# (the session's Options, the settings of its tests without a marker)
_unmarked: tuple[Options, ItemSettings] | None = None


def _build(item: pytest.Item, options: Options, marked: dict[str, Setting]) -> ItemSettings:
    chosen: dict[str, Setting] = dict(options.defaults)
    for arg, setting in marked.items():
        value, expected = _check_value(arg, setting.value)
        if expected is not None:
            raise SettingError(item.nodeid, arg, setting.value, setting.source,
                               f"expected {expected}")
        chosen[arg] = Setting(value, setting.source)
    resources = Resources(**{k: chosen[k].value for k in RESOURCE_ARGS if k in chosen})
    spec = replace(Spec(), resources=resources,
                   **{k: chosen[k].value for k in ("network", "hostname", "env", "rootfs",
                                                   *CONFINEMENT_ARGS) if k in chosen})
    sources = {k: chosen[k].source for k in chosen}
    return ItemSettings(spec=spec, sources=sources)
