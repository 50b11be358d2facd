"""pytest-isolate: run tests and commands in real, lightweight Linux containers."""

from .runtime import Resources, Result, Spec, run, run_command

__version__ = "0.1.0"
__all__ = ["Resources", "Result", "Spec", "__version__", "run", "run_command"]
