"""State that belongs to this process, in one object; a forked child gets a fresh one.

Rule: a leaf. Module globals would outlive a fork with the parent's values (its zygote, its
deferred reaps, a lock another thread held at the fork); `here()` notices the new pid at use
and starts over. Checked at use, not in an at-fork handler: a handler runs in every forked
child, each test's included, and the three this package once had cost a test's child 144 page
faults (about 0.5 ms) before its first line ran.
"""

from __future__ import annotations

import os
import threading


class Local:
    """This process's runtime state (see the fields)."""

    def __init__(self, open_fds: set[int] | None = None) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()  # held while a launch makes pipes and forks
        # Every fd the launcher holds. Inherited on purpose: a forked child closes the ones
        # that are not its own (a held write end of another container's pipe means no EOF).
        self.open_fds: set[int] = set(open_fds or ())
        self.clone3_usable = True  # until the kernel or libc says otherwise (launch.fork)
        # warm/pool.py: the zygote, its lock, zygotes told to exit and not reaped yet, asks
        # held back, settled workloads still exiting, ended containers' network namespaces.
        self.pool = None
        self.pool_lock = threading.Lock()
        self.closed: list = []
        self.held: list[tuple] | None = None
        self.exiting: list[int] = []
        self.dead_nets: list[int] = []
        self.owner_lock: tuple[int, str] | None = None  # host/state.py: (fd, path)


_local = Local()


def here() -> Local:
    """This process's state (a new one in a forked child, keeping only the fd registry)."""
    global _local
    if _local.pid != os.getpid():
        old, _local = _local, Local(_local.open_fds)
        if old.pool is not None:
            # The parent's socket to its zygote, which builds containers and writes cgroup
            # files as root: no child keeps a way to ask it (closed through the object, so
            # that its collection later closes nothing else).
            try:
                old.pool.sock.close()
            except Exception:
                pass
    return _local
