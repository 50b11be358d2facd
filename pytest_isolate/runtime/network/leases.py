"""Subnets for links, leased from a pool that every process of a user shares.

Rule: one JSON file per user (`<state dir>/leases.json`), changed only under its filelock, so
pytest-xdist workers and parallel runs never hand out the same subnet. A lease names its
owner's pid; leases of owners that are gone (no owner lock held, see `state.py`) are dropped
the next time anyone allocates, and by `cleanup`.

A process leases a block (/24, or the whole pool when smaller) and hands out small subnets
from it itself: a trip through the file costs about 0.9 ms (lock, read, write, rename), which
would be a fifth of a veth pair's cost. Larger subnets are leased from the file directly.
Blocks go back to the pool when the process exits.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
from dataclasses import dataclass

from ..errors import SpecError, UnsupportedError
from ..host.state import ensure_owner_lock, owner_alive, state_dir

# RFC 2544 benchmarking range: never routed on the internet, rarely used on LANs.
DEFAULT_POOL = "198.18.0.0/15"
_pool = ipaddress.IPv4Network(DEFAULT_POOL)
# IPv6 beside it: each leased IPv4 subnet has its own /64 of this ULA range, numbered by the
# subnet's place in the IPv4 pool, so that the IPv4 lease makes the IPv6 one too.
DEFAULT_POOL6 = "fd70:7469:7465::/48"
_pool6 = ipaddress.IPv6Network(DEFAULT_POOL6)


@dataclass(frozen=True)
class Subnet:
    """A leased IPv4 subnet; `hosts()[i]` are its usable addresses."""

    network: ipaddress.IPv4Network

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    @property
    def capacity(self) -> int:
        """How many usable addresses it has."""
        return self.network.num_addresses - 2

    def host(self, i: int) -> str:
        """The i-th usable address (0-based), as text."""
        return str(self.network.network_address + 1 + i)

    @property
    def network6(self) -> ipaddress.IPv6Network:
        """This subnet's /64 of the IPv6 pool (see DEFAULT_POOL6)."""
        return network6_for(self.network)

    def host6(self, i: int) -> str:
        """The i-th IPv6 address (0-based): the /64's ::1, ::2, ..."""
        return str(self.network6.network_address + 1 + i)

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


def network6_for(net: ipaddress.IPv4Network) -> ipaddress.IPv6Network:
    offset = int(net.network_address) & ((1 << (32 - _pool.prefixlen)) - 1)
    number = offset >> 2  # subnets are /30 or wider: every 4th address starts one
    if number >> (64 - _pool6.prefixlen):
        raise SpecError("subnet6 pool", str(_pool6), f"a range with room for a /64 for each "
                        f"/30 of the IPv4 pool {_pool} (a /{64 - (30 - _pool.prefixlen)} "
                        "or wider)")
    return ipaddress.IPv6Network((int(_pool6.network_address) + (number << 64), 64))


def parse_pool6(text: str) -> ipaddress.IPv6Network:
    try:
        net = ipaddress.IPv6Network(text.strip(), strict=True)
    except ValueError as e:
        raise SpecError("subnet6 pool", text, f"an IPv6 network like {DEFAULT_POOL6} ({e})"
                        ) from None
    if net.prefixlen > 64 or not net.subnet_of(ipaddress.IPv6Network("fc00::/7")):
        raise SpecError("subnet6 pool", text, "a unique local (fc00::/7) range of /64 or wider, "
                        f"like {DEFAULT_POOL6}")
    return net


def set_pool6(text: str) -> None:
    """Use this IPv6 range from now on in this process (ini isolate_subnet6_pool)."""
    global _pool6
    _pool6 = parse_pool6(text)


def set_pool(text: str) -> None:
    """Use this pool from now on in this process (the plugin passes ini isolate_subnet_pool).
    Blocks of the old pool with nothing handed out go back."""
    global _pool
    _pool = parse_pool(text)
    idle = [b for b in _blocks if not any(u.subnet_of(b) for u in _in_use)]
    if idle:
        with _locked_table() as table:
            for block in idle:
                if table.get(str(block)) == os.getpid():
                    del table[str(block)]
        _blocks[:] = [b for b in _blocks if b not in idle]


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


BLOCK_PREFIX = 24
_blocks: list[ipaddress.IPv4Network] = []  # leased by this process from the file
_in_use: set[ipaddress.IPv4Network] = set()  # handed out from those blocks
_blocks_pid = 0


def allocate(hosts: int = 2) -> Subnet:
    """A free subnet of the pool with room for `hosts` addresses."""
    global _blocks_pid
    prefix = prefix_for(hosts)
    if _blocks_pid != os.getpid():  # a forked child owns nothing of its parent's
        _blocks.clear()
        _in_use.clear()
        _blocks_pid = os.getpid()
    block_prefix = max(BLOCK_PREFIX, _pool.prefixlen)
    if prefix <= block_prefix:
        return _lease(prefix)
    for block in _blocks:
        if not block.subnet_of(_pool):  # a block of an earlier pool, still partly in use
            continue
        for sub in block.subnets(new_prefix=prefix):
            if not any(sub.overlaps(u) for u in _in_use):
                _in_use.add(sub)
                return Subnet(sub)
    block = _lease(block_prefix).network
    if not _blocks:
        atexit.register(_return_blocks, os.getpid())
    _blocks.append(block)
    sub = next(block.subnets(new_prefix=prefix))
    _in_use.add(sub)
    return Subnet(sub)


def in_use() -> set[str]:
    """Subnets this process has handed out and not released (for tests)."""
    return {str(s) for s in _in_use}


def _return_blocks(pid: int) -> None:
    if os.getpid() != pid or not _blocks:
        return
    with contextlib.suppress(Exception), _locked_table() as table:
        for block in _blocks:
            if table.get(str(block)) == pid:
                del table[str(block)]
    _blocks.clear()


def _lease(prefix: int) -> Subnet:
    """Lease the first free subnet of this prefix from the file."""
    size = 2 ** (32 - prefix)
    base, top = int(_pool.network_address), int(_pool.broadcast_address) + 1
    if prefix < _pool.prefixlen:
        raise UnsupportedError(f"a /{prefix} subnet", f"the pool {_pool} is smaller",
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
            owners = sorted(set(table.values()))
            raise UnsupportedError(
                f"a /{prefix} subnet", f"the pool {_pool} is exhausted: {len(table)} blocks "
                f"are leased by live processes {owners} ({len(_in_use)} subnets in use here)",
                "set a wider ini isolate_subnet_pool, or end the processes holding leases")
        net = ipaddress.IPv4Network((start, prefix))
        table[str(net)] = me
    return Subnet(net)


def release(subnet: Subnet) -> None:
    if subnet.network in _in_use:
        _in_use.discard(subnet.network)
        return
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


def stale_owners() -> set[int]:
    """host/state.py cleaner: the owners of current leases."""
    return set(leases().values())


def remove_stale(pid: int) -> list[str]:
    """host/state.py cleaner: drop the leases of a dead owner."""
    path, _ = _paths()
    if not os.path.exists(path):
        return []
    with _locked_table() as table:
        gone = [k for k, owner in table.items() if owner == pid]
        for k in gone:
            del table[k]
    return [f"lease {k}" for k in gone]
