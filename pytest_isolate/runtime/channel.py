"""Length-prefixed JSON frames between a container and its parent.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON (an object
with a "t" key naming its kind). Never pickle: a frame written inside a container is data.
The reader must drain the pipe before waitpid: frames may exceed the 64 KiB pipe buffer.
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
