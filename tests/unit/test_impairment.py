"""Impairment values: parsing, checks and the qdisc they become (no kernel)."""

from __future__ import annotations

import pytest

from pytest_isolate.runtime import SpecError
from pytest_isolate.runtime.network.impairment import (
    Impairment,
    parse_duration,
    parse_fraction,
    parse_rate,
)


@pytest.mark.parametrize("text, seconds", [("50ms", 0.05), ("2s", 2.0), ("300us", 0.0003),
                                           (0.25, 0.25), ("1.5 ms", 0.0015), (0, 0.0)])
def test_durations(text, seconds):
    assert parse_duration("delay", text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["fast", "-5ms", "5 minutes", True, None, float("nan"), 7200])
def test_bad_durations_name_the_argument_and_the_form(bad):
    with pytest.raises(SpecError, match=r"^delay=.*expected a duration"):
        parse_duration("delay", bad)


@pytest.mark.parametrize("value, frac", [(0.05, 0.05), ("5%", 0.05), (1, 1.0), ("100%", 1.0)])
def test_fractions(value, frac):
    assert parse_fraction("loss", value) == pytest.approx(frac)


@pytest.mark.parametrize("bad", [1.5, -0.1, "150%", "some", True])
def test_bad_fractions(bad):
    with pytest.raises(SpecError, match=r"^loss=.*probability from 0\.0 to 1\.0"):
        parse_fraction("loss", bad)


@pytest.mark.parametrize("text, bits", [("1mbit", 1_000_000), ("500kbit", 500_000),
                                        ("2mbps", 16_000_000), (64_000, 64_000),
                                        ("1Gbit", 10**9)])
def test_rates(text, bits):
    assert parse_rate("rate", text) == bits


@pytest.mark.parametrize("bad", ["fast", "1mb", 10, "100tbit", 1.5])
def test_bad_rates(bad):
    with pytest.raises(SpecError, match=r"^rate="):
        parse_rate("rate", bad)


def test_a_bare_rate_is_tbf_and_anything_else_is_netem():
    kind, params = Impairment.parse(rate="1mbit").qdisc()
    assert kind == "tbf" and params["rate"] == 125_000 and params["burst"] >= 1600
    kind, params = Impairment.parse(delay="50ms", jitter="5ms", loss="1%", rate="1mbit").qdisc()
    assert kind == "netem"
    assert params["delay"] == 50_000 and params["jitter"] == 5_000  # microseconds
    assert params["loss"] == pytest.approx(1.0)  # pyroute2 takes percent
    assert params["rate"] == 125_000  # bytes per second, an int (see Impairment.qdisc)


def test_jitter_and_reorder_need_a_delay():
    with pytest.raises(SpecError, match=r"^jitter=.*a delay as well"):
        Impairment.parse(jitter="5ms")
    with pytest.raises(SpecError, match=r"^reorder=.*a delay as well"):
        Impairment.parse(reorder=0.1)


def test_no_arguments_is_empty_and_describes_itself():
    assert Impairment.parse().empty
    assert Impairment.parse().describe() == "none"
    assert Impairment.parse(delay="50ms", loss=0.1).describe() == "delay=50ms, loss=0.1"
