"""pytest-isolate: run tests and commands in real, lightweight Linux containers."""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing costs a fresh interpreter ~20 ms
if TYPE_CHECKING:
    from .runtime import Resources, Result, Spec, run, run_command

__version__ = "0.1.0"
__all__ = ["Resources", "Result", "Spec", "__version__", "run", "run_command"]


def __getattr__(name: str) -> object:
    # Lazy: the zygote (runtime/zygote.py) imports a few runtime modules through this
    # package, and its start-up time is paid before the first warm container.
    if name in __all__:
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
