"""pytest_isolate.runtime: containers from kernel primitives, usable without pytest.

Rule: nothing under this package imports pytest (a test enforces it).
"""

from .container import PIPE, ContainerProcess, run, run_command, start, start_command
from .errors import IsolationError, SetupError, SpecError, UnsupportedError
from .result import CommandResult, Result, Stats, WorkloadError, WorkloadFailed
from .spec import Resources, Spec, TimeOffsets, parse_size, validate

__all__ = [
    "PIPE", "CommandResult", "ContainerProcess", "IsolationError", "Resources", "Result",
    "SetupError", "Spec", "SpecError", "Stats", "TimeOffsets", "UnsupportedError",
    "WorkloadError", "WorkloadFailed", "parse_size", "run", "run_command", "start",
    "start_command", "validate",
]
