"""pytest_isolate.runtime: containers from kernel primitives, usable without pytest.

Rule: nothing under this package imports pytest (a test enforces it).
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # not typing's: importing typing costs a fresh interpreter ~20 ms
if TYPE_CHECKING:
    from .api import (
        PIPE,
        ContainerProcess,
        run,
        run_command,
        start,
        start_command,
        start_until_done,
    )
    from .errors import IsolationError, SetupError, SpecError, UnsupportedError
    from .result import (
        CommandFailed,
        CommandResult,
        Result,
        Stats,
        WorkloadError,
        WorkloadFailed,
    )
    from .spec import Resources, Spec, TimeOffsets, parse_size, validate

# Public names by module, imported on first use: the zygote (warm/zygote.py) needs only a few
# modules, and a fresh interpreter's imports are on the path to the first warm container.
_EXPORTS = {
    "api": ["PIPE", "ContainerProcess", "run", "run_command", "start", "start_command",
                  "start_until_done"],
    "errors": ["IsolationError", "SetupError", "SpecError", "UnsupportedError"],
    "result": ["CommandFailed", "CommandResult", "Result", "Stats", "WorkloadError",
               "WorkloadFailed"],
    "spec": ["Resources", "Spec", "TimeOffsets", "parse_size", "validate"],
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "PIPE", "CommandFailed", "CommandResult", "ContainerProcess", "IsolationError", "Resources",
    "Result",
    "SetupError", "Spec", "SpecError", "Stats", "TimeOffsets", "UnsupportedError",
    "WorkloadError", "WorkloadFailed", "parse_size", "run", "run_command", "start",
    "start_command", "start_until_done", "validate",
]


def __getattr__(name: str) -> object:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
