"""Report frames on the memfd: what goes in comes out, whatever the user put in a report."""

from __future__ import annotations

import collections
import datetime
import enum
import os

from pytest_isolate import report_frames


def _roundtrip(*frames: dict) -> list[dict]:
    fd = os.memfd_create("pti-test")
    try:
        for frame in frames:
            report_frames.write(fd, frame)
        os.lseek(fd, 0, os.SEEK_SET)
        return report_frames.parse(os.read(fd, 1 << 20))
    finally:
        os.close(fd)


def test_frames_come_back_in_order_with_their_tuples():
    a = {"t": "report", "data": {"longrepr": ("test_x.py", 3, "Skipped: why"),
                                 "user_properties": [("k", 1.5)]}}
    b = {"t": "warning", "message": "m", "lineno": 7}
    assert _roundtrip(a, b) == [a, b]


def test_an_object_marshal_cannot_carry_travels_as_its_str():
    frame = {"t": "report", "data": {"user_properties": [("when", datetime.date(2020, 1, 2))]}}
    assert _roundtrip(frame) == [{"t": "report",
                                  "data": {"user_properties": [("when", "2020-01-02")]}}]


class _Colour(enum.IntEnum):
    RED = 1


def test_subclasses_of_basic_types_travel_as_their_base_or_str():
    pair = collections.namedtuple("pair", "a b")
    frame = {"t": "report", "data": {"user_properties": [("p", pair(1, "x")),
                                                         ("c", _Colour.RED)]}}
    assert _roundtrip(frame) == [{"t": "report",
                                  "data": {"user_properties": [("p", (1, "x")),
                                                               ("c", str(_Colour.RED))]}}]


def test_a_frame_cut_short_or_unreadable_ends_the_list():
    whole = {"t": "report", "data": {"when": "setup"}}
    fd = os.memfd_create("pti-test")
    try:
        report_frames.write(fd, whole)
        report_frames.write(fd, {"t": "report", "data": {"when": "call"}})
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 1 << 20)
    finally:
        os.close(fd)
    assert report_frames.parse(data[:-3]) == [whole]  # the child killed mid-write
    unreadable = (8).to_bytes(4, "big") + b"\x00" * 8  # no marshal type code is 0
    assert report_frames.parse(unreadable + data) == []  # what follows is not trusted either
