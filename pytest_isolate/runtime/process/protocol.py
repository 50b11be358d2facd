"""Every message that crosses a process boundary in the runtime, and how it is framed.

Rule: a message is a JSON object, never pickle (what a container writes is data); the kinds
and their fields are defined here and nowhere else, and builders below make each one.

1. Result pipe, container -> caller: length-prefixed frames (a 4-byte big-endian length, then
   that many bytes of UTF-8 JSON with a "t" key naming the kind). The reader drains the pipe
   before waitpid: frames may exceed the 64 KiB pipe buffer.
     return      {value}                      the function returned (JSON-able value)
     raise       {type, message, traceback}   the function, or the glue around it, raised
     exec_error  {argv0, errno, message}      execve of a command failed
     exit        {status}                     pid 1: the workload's wait status
     setup_error {step, target, errno, message, hint}   a setup step failed (errors.SetupError)
     ready       {}                           a forked warm init is built (zygote.py)
     seccomp     {nr, name}                   the workload made a call its filter denies with
                                              action "kill", and dies of SIGSYS
2. Zygote socket (SOCK_SEQPACKET, one datagram each way per container), caller <-> zygote:
     request {network: "none" | "host", chores?: {mkdir: [dir], write: [[file, value]],
              rmdir: [dir]}}
     reply   {hostname} with init's pidfd (SCM_RIGHTS) | {error: <setup_error frame>};
             with chores: chores: {busy: [dirs not removed], error: text | null}
3. Exec helper pipe (live.py), helper -> caller, one JSON object then EOF:
     {pid} the program runs | {errno, message} it could not be started
4. Call pipe (live.py Container.call), helper -> caller: {ok: value} | {type, error, tb}
"""

from __future__ import annotations

import json
import os
import struct

MAX_FRAME = 256 * 1024 * 1024
_HEADER = struct.Struct(">I")


def encode(frame: dict) -> bytes:
    data = json.dumps(frame, separators=(",", ":")).encode()
    return _HEADER.pack(len(data)) + data


def write_frame(fd: int, frame: dict) -> None:
    view = memoryview(encode(frame))
    while view:
        n = os.write(fd, view)
        view = view[n:]


class FrameReader:
    """Accumulates bytes from a pipe and yields complete frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict]:
        self._buf += data
        frames = []
        while len(self._buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buf)
            if size > MAX_FRAME:
                raise ValueError(f"frame of {size} bytes exceeds the {MAX_FRAME} byte limit")
            end = _HEADER.size + size
            if len(self._buf) < end:
                break
            frames.append(json.loads(bytes(self._buf[_HEADER.size:end])))
            del self._buf[:end]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame (non-zero at EOF means the writer died mid-frame)."""
        return len(self._buf)


def read_all_frames(fd: int) -> list[dict]:
    reader = FrameReader()
    frames: list[dict] = []
    while True:
        data = os.read(fd, 1 << 16)
        if not data:
            return frames
        frames.extend(reader.feed(data))


# -- 1. result pipe ------------------------------------------------------------------------

RETURN, RAISE, EXEC_ERROR, EXIT, SETUP_ERROR, READY, SECCOMP = (
    "return", "raise", "exec_error", "exit", "setup_error", "ready", "seccomp")
# A function workload's last frame, and the exit code that follows it.
LAST_WORDS = {RETURN: 0, RAISE: 1}


def returned(value: object) -> dict:
    return {"t": RETURN, "value": value}


def raised(type_name: str, message: str, traceback: str) -> dict:
    return {"t": RAISE, "type": type_name, "message": message, "traceback": traceback}


def exec_failed(argv0: str, err: int | None, message: str) -> dict:
    return {"t": EXEC_ERROR, "argv0": argv0, "errno": err, "message": message}


def exited(status: int) -> dict:
    return {"t": EXIT, "status": status}


def ready() -> dict:
    return {"t": READY}


def seccomp_killed(nr: int, name: str) -> dict:
    return {"t": SECCOMP, "nr": nr, "name": name}


# -- 2. zygote socket ----------------------------------------------------------------------

def zygote_request(network: str, chores: dict | None) -> bytes:
    request: dict = {"network": network}
    if chores is not None:
        request["chores"] = chores
    return json.dumps(request).encode()


def zygote_reply(hostname: str | None, error: dict | None, chores: dict | None) -> bytes:
    reply: dict = {"hostname": hostname} if error is None else {"error": error}
    if chores is not None:
        reply["chores"] = chores
    return json.dumps(reply).encode()


def chores_done(busy: list[str], error: str | None) -> dict:
    return {"busy": busy, "error": error}


# -- 3, 4. live helpers --------------------------------------------------------------------

def started(pid: int) -> bytes:
    return json.dumps({"pid": pid}).encode()


def failed(err: int | None, message: str) -> bytes:
    return json.dumps({"errno": err, "message": message}).encode()


def call_returned(value: object) -> bytes:
    try:
        return json.dumps({"ok": value}).encode()
    except (TypeError, ValueError) as e:
        return json.dumps({"error": f"the return value is not JSON-able: {e}"}).encode()


def call_raised(type_name: str, message: str, tb: str) -> bytes:
    return json.dumps({"type": type_name, "error": message, "tb": tb}).encode()


def decode(data: bytes, default: dict) -> dict:
    """A helper's one message, or `default` when it died before writing one."""
    return json.loads(data) if data else default
