"""Subnets for links, leased from a pool that every process of a user shares.

Rule: one JSON file per user (`<state dir>/leases.json`), changed only under its filelock, so
pytest-xdist workers and parallel runs never hand out the same subnet. A lease names its
owner's pid; leases of owners that are gone (no owner lock held, see `state.py`) are dropped
the next time anyone allocates, and by `cleanup`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
from dataclasses import dataclass

from ..errors import SpecError, UnsupportedError
from ..state import ensure_owner_lock, owner_alive, state_dir

# RFC 2544 benchmarking range: never routed on the internet, rarely used on LANs.
DEFAULT_POOL = "198.18.0.0/15"
_pool = ipaddress.IPv4Network(DEFAULT_POOL)


@dataclass(frozen=True)
class Subnet:
    """A leased IPv4 subnet; `hosts()[i]` are its usable addresses."""

    network: ipaddress.IPv4Network

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    def host(self, i: int) -> str:
        """The i-th usable address (0-based), as text."""
        return str(self.network.network_address + 1 + i)

    def __str__(self) -> str:
        return str(self.network)


def parse_pool(text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(text.strip(), strict=True)
    except ValueError as e:
        raise SpecError("subnet pool", text, f"an IPv4 network like {DEFAULT_POOL} ({e})") from None
    if net.prefixlen > 30:
        raise SpecError("subnet pool", text, "a network of at least 4 addresses (/30 or wider)")
    return net


def set_pool(text: str) -> None:
    """Use this pool from now on in this process (the plugin passes ini isolate_subnet_pool)."""
    global _pool
    _pool = parse_pool(text)


def pool() -> ipaddress.IPv4Network:
    return _pool


def prefix_for(hosts: int) -> int:
    """The longest prefix whose subnet has `hosts` usable addresses."""
    if hosts < 1:
        raise SpecError("hosts", hosts, "at least 1")
    prefix = 30
    while prefix > 8 and 2 ** (32 - prefix) - 2 < hosts:
        prefix -= 1
    return prefix


def _paths() -> tuple[str, str]:
    d = state_dir()
    return os.path.join(d, "leases.json"), os.path.join(d, "leases.lock")


@contextlib.contextmanager
def _locked_table():
    from filelock import FileLock

    ensure_owner_lock()  # our leases must outlive only us: the lock marks us alive
    path, lock = _paths()
    with FileLock(lock):
        try:
            with open(path) as f:
                table = json.load(f)
        except (FileNotFoundError, ValueError):  # a torn file cannot hold live leases' truth
            table = {}
        yield table
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(table, f)
        os.replace(tmp, path)


def allocate(hosts: int = 2) -> Subnet:
    """Lease the first free subnet of the pool with room for `hosts` addresses."""
    prefix = prefix_for(hosts)
    size = 2 ** (32 - prefix)
    base, top = int(_pool.network_address), int(_pool.broadcast_address) + 1
    if prefix < _pool.prefixlen:
        raise UnsupportedError(f"a subnet for {hosts} addresses", f"the pool {_pool} is smaller",
                               "set a wider ini isolate_subnet_pool")
    me = os.getpid()
    with _locked_table() as table:
        _drop_dead(table)
        taken = sorted((int(ipaddress.IPv4Network(k).network_address),
                        ipaddress.IPv4Network(k).num_addresses) for k in table)
        start = base
        for lo, n in taken:
            if start + size <= lo:
                break
            start = max(start, -(-(lo + n) // size) * size)  # next aligned block after it
        if start + size > top:
            owners = sorted({v for v in table.values()})
            raise UnsupportedError(
                f"a /{prefix} subnet", f"the pool {_pool} is exhausted: {len(table)} subnets "
                f"are leased by live processes {owners}",
                "set a wider ini isolate_subnet_pool, or end the processes holding leases")
        net = ipaddress.IPv4Network((start, prefix))
        table[str(net)] = me
    return Subnet(net)


def release(subnet: Subnet) -> None:
    with _locked_table() as table:
        if table.get(str(subnet.network)) == os.getpid():
            del table[str(subnet.network)]


def _drop_dead(table: dict) -> list[str]:
    dead = [k for k, pid in table.items() if pid != os.getpid() and not owner_alive(pid)]
    for k in dead:
        del table[k]
    return dead


def leases() -> dict[str, int]:
    """Current leases, subnet -> owner pid (for tests and `cleanup`)."""
    path, _ = _paths()
    try:
        with open(path) as f:
            return dict(json.load(f))
    except (FileNotFoundError, ValueError):
        return {}


def remove_stale(pid: int) -> list[str]:
    """state.py cleaner: drop the leases of a dead owner."""
    path, _ = _paths()
    if not os.path.exists(path):
        return []
    with _locked_table() as table:
        gone = [k for k, owner in table.items() if owner == pid]
        for k in gone:
            del table[k]
    return [f"lease {k}" for k in gone]
