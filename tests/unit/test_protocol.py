import os

from pytest_isolate.runtime.process.protocol import (
    FrameReader,
    encode,
    read_all_frames,
    write_frame,
)


def test_frames_survive_arbitrary_chunking():
    data = encode({"t": "a", "n": 1}) + encode({"t": "b", "s": "x" * 1000})
    reader = FrameReader()
    frames = []
    for i in range(0, len(data), 7):
        frames += reader.feed(data[i:i + 7])
    assert frames == [{"t": "a", "n": 1}, {"t": "b", "s": "x" * 1000}]
    assert reader.pending == 0


def test_a_frame_larger_than_the_pipe_buffer_arrives_whole():
    r, w = os.pipe()
    big = {"t": "return", "value": "y" * (1 << 20)}
    pid = os.fork()
    if pid == 0:
        os.close(r)
        write_frame(w, big)
        os._exit(0)
    os.close(w)
    frames = read_all_frames(r)  # drained before waitpid, as the protocol requires
    os.close(r)
    os.waitpid(pid, 0)
    assert frames == [big]


def test_a_truncated_frame_is_visible_as_pending_bytes():
    reader = FrameReader()
    assert reader.feed(encode({"t": "x"})[:-2]) == []
    assert reader.pending > 0
