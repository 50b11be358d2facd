"""What a container's workload runs: a Python function or a program.

Rule: a workload is a function of the result pipe that returns the exit code; it reports its
outcome with one frame of protocol.py (return, raise, exec_error).
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from ..errors import SetupError
from . import protocol


def enter_workdir(path: str) -> None:
    try:
        os.chdir(path)
    except OSError as e:
        raise SetupError("chdir", path, e.errno, str(e),
                         "set Spec.workdir to a directory that exists in the container") from None


def function(func: Callable, args: tuple, kwargs: dict, env: dict, workdir: str):
    def run(result_w: int) -> int:
        os.environ.update(env)
        enter_workdir(workdir)
        try:
            value = func(*args, **kwargs)
        except BaseException as e:
            frame = protocol.raised(_qualname(type(e)), str(e), traceback.format_exc())
            code = 1
        else:
            code = 0
            frame = protocol.returned(value)
        _flush_stdio()
        try:
            protocol.write_frame(result_w, frame)
        except (TypeError, ValueError) as e:
            protocol.write_frame(result_w, protocol.raised(
                "TypeError", f"the return value cannot be sent back as JSON: {e}", ""))
            code = 1
        return code
    return run


def command(argv: Sequence[str], env: dict, workdir: str, stdio: dict[int, int]):
    env = {**os.environ, **env}

    def run(result_w: int) -> int:
        for target, fd in stdio.items():
            os.dup2(fd, target)  # dup2 clears close-on-exec on the target
        enter_workdir(workdir)
        try:
            os.execvpe(argv[0], list(argv), env)
        except OSError as e:
            protocol.write_frame(result_w, protocol.exec_failed(argv[0], e.errno,
                                                                e.strerror or str(e)))
        return 127
    return run


def _qualname(tp: type) -> str:
    mod = tp.__module__
    return tp.__qualname__ if mod in ("builtins", "__main__") else f"{mod}.{tp.__qualname__}"


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
