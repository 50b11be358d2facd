"""The subnet pool: sizes, alignment, exhaustion and dead owners (a private state dir)."""

from __future__ import annotations

import ipaddress
import os
import subprocess

import pytest

from pytest_isolate.runtime import SpecError, UnsupportedError
from pytest_isolate.runtime.network import leases


@pytest.fixture(autouse=True)
def private_pool(tmp_path, monkeypatch):
    monkeypatch.setattr(leases, "state_dir", lambda: str(tmp_path))
    monkeypatch.setattr(leases, "_blocks", [])
    monkeypatch.setattr(leases, "_in_use", set())
    yield
    leases.set_pool(leases.DEFAULT_POOL)


@pytest.mark.parametrize("hosts, prefix", [(1, 30), (2, 30), (3, 29), (6, 29), (7, 28),
                                           (254, 24)])
def test_prefix_fits_the_hosts(hosts, prefix):
    assert leases.prefix_for(hosts) == prefix


def test_subnets_are_aligned_disjoint_and_reused_after_release():
    a, b = leases.allocate(2), leases.allocate(5)
    c = leases.allocate(2)
    assert (str(a), str(b), str(c)) == ("198.18.0.0/30", "198.18.0.8/29", "198.18.0.4/30")
    assert a.host(0) == "198.18.0.1" and a.host(1) == "198.18.0.2"
    leases.release(a)
    assert str(leases.allocate(2)) == "198.18.0.0/30"


def test_small_subnets_come_from_a_block_leased_once_and_returned_at_exit():
    subs = [leases.allocate(2) for _ in range(64)]  # a /24 holds 64 /30s
    assert leases.leases() == {"198.18.0.0/24": os.getpid()}
    leases.allocate(2)
    assert set(leases.leases()) == {"198.18.0.0/24", "198.18.1.0/24"}
    big = leases.allocate(300)  # wider than a block: leased from the file itself
    assert str(big) == "198.18.2.0/23" and leases.leases()[str(big)] == os.getpid()
    for s in subs:
        leases.release(s)
    leases.release(big)
    assert str(big) not in leases.leases()
    leases._return_blocks(os.getpid())
    assert leases.leases() == {}


def test_an_exhausted_pool_names_the_pool_and_the_fix():
    leases.set_pool("10.9.0.0/29")
    leases.allocate(2)
    leases.allocate(2)
    with pytest.raises(UnsupportedError, match=r"(?s)10\.9\.0\.0/29 is exhausted.*"
                                               r"wider ini isolate_subnet_pool"):
        leases.allocate(2)


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "10.0.0.1/24", "fe80::/64", "10.0.0.0/31", "x"])
def test_bad_pools_are_spec_errors(bad):
    with pytest.raises(SpecError, match="subnet pool"):
        leases.set_pool(bad)


def test_a_dead_owners_lease_is_taken_back():
    p = subprocess.Popen(["true"])
    p.wait()
    with leases._locked_table() as table:
        table["198.18.0.0/30"] = p.pid
    sub = leases.allocate(2)
    assert str(sub) == "198.18.0.0/30"
    assert ipaddress.ip_address(sub.host(0)) in sub.network
