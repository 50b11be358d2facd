"""Link impairments as values: parsed and checked here, applied by `netlink.py` through tc.

Rule: pure. `Impairment.parse(**kw)` raises `SpecError` naming the argument, the value and what
is expected; nothing here touches the kernel.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

from ..errors import SpecError

_TIME_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|µs|ms|s)?\s*$")
_TIME_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, None: 1.0}
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(bit|bps)\s*$", re.IGNORECASE)
_RATE_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3}


def parse_duration(name: str, value: object) -> float:
    """'50ms' | '2s' | '300us' | seconds as a number -> seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _TIME_RE.match(value)):
        seconds = float(m.group(1)) * _TIME_UNITS[m.group(2)]
    else:
        raise SpecError(name, value, "a duration like '50ms', '2s', '300us' or seconds as a number")
    if not math.isfinite(seconds) or seconds < 0 or seconds > 3600:
        raise SpecError(name, value, "a duration between 0 and 1 hour")
    return seconds


def parse_fraction(name: str, value: object) -> float:
    """0.05 | '5%' -> 0.05 (a probability)."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            frac = float(value.strip()[:-1]) / 100
        except ValueError:
            frac = math.nan
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        frac = float(value)
    else:
        frac = math.nan
    if not math.isfinite(frac) or not 0.0 <= frac <= 1.0:
        raise SpecError(name, value, "a probability from 0.0 to 1.0, or a percentage like '5%'")
    return frac


def parse_rate(name: str, value: object) -> int:
    """'1mbit' | '500kbit' | '2mbps' (bytes) | bits per second as an int -> bits per second."""
    if isinstance(value, int) and not isinstance(value, bool):
        bits = value
    elif isinstance(value, str) and (m := _RATE_RE.match(value)):
        number, prefix, unit = m.groups()
        bits = int(float(number) * _RATE_UNITS[prefix.lower()] * (8 if unit.lower() == "bps"
                                                                   else 1))
    else:
        raise SpecError(name, value, "a rate like '1mbit', '500kbit' or '2mbps', or bits per "
                        "second as an int")
    if not 8 * 1000 <= bits <= 2**32 * 8 - 1:  # tc keeps bytes per second in 32 bits
        raise SpecError(name, value, "between 8kbit and 34gbit")
    return bits


@dataclass(frozen=True)
class Impairment:
    """What tc applies to one interface's egress. All zero = no impairment."""

    delay: float = 0.0  # seconds
    jitter: float = 0.0  # seconds, +- around delay
    loss: float = 0.0  # probabilities 0..1
    duplicate: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    rate: int | None = None  # bits per second

    @classmethod
    def parse(cls, delay: object = 0, jitter: object = 0, loss: object = 0,
              duplicate: object = 0, reorder: object = 0, corrupt: object = 0,
              rate: object = None) -> Impairment:
        imp = cls(delay=parse_duration("delay", delay), jitter=parse_duration("jitter", jitter),
                  loss=parse_fraction("loss", loss),
                  duplicate=parse_fraction("duplicate", duplicate),
                  reorder=parse_fraction("reorder", reorder),
                  corrupt=parse_fraction("corrupt", corrupt),
                  rate=None if rate is None else parse_rate("rate", rate))
        if imp.jitter and not imp.delay:
            raise SpecError("jitter", jitter, "a delay as well (jitter varies the delay)")
        if imp.reorder and not imp.delay:
            raise SpecError("reorder", reorder, "a delay as well (netem reorders by sending "
                            "some packets at once and delaying the rest)")
        return imp

    @property
    def needs_netem(self) -> bool:
        """tbf alone can do a bare rate; everything else is netem (CONFIG_NET_SCH_NETEM)."""
        return any(getattr(self, f.name) for f in fields(self) if f.name != "rate")

    @property
    def empty(self) -> bool:
        return not self.needs_netem and self.rate is None

    def qdisc(self) -> tuple[str, dict]:
        """(kind, pyroute2 tc keyword arguments) for the root qdisc."""
        if not self.needs_netem:
            assert self.rate is not None
            # burst: at least one full-size frame and about 5 ms worth of data, so that a low
            # rate still passes 1500-byte packets and a high one is not burst-limited.
            burst = max(3200, self.rate // 8 // 200)
            # Rates go to pyroute2 as ints in bytes per second: its "1mbit" parsing yields a
            # float, which its netem encoder drops (the kernel then answers ERANGE).
            return "tbf", {"rate": self.rate // 8, "burst": burst, "latency": "100ms"}
        params: dict = {"delay": round(self.delay * 1e6), "jitter": round(self.jitter * 1e6),
                        "loss": self.loss * 100, "duplicate": self.duplicate * 100}
        if self.reorder:
            params["prob_reorder"] = self.reorder * 100
        if self.corrupt:
            params["prob_corrupt"] = self.corrupt * 100
        if self.rate is not None:
            params["rate"] = self.rate // 8
        return "netem", params

    def describe(self) -> str:
        parts = []
        for f in fields(self):
            v = getattr(self, f.name)
            if not v:
                continue
            if f.name in ("delay", "jitter"):
                parts.append(f"{f.name}={v * 1e3:g}ms")
            elif f.name == "rate":
                parts.append(f"rate={v / 1e6:g}mbit")
            else:
                parts.append(f"{f.name}={v:g}")
        return ", ".join(parts) or "none"
