"""Ended warm containers' network namespaces, held open and let go of in batches."""

from __future__ import annotations

import errno
import fcntl
import os

from .. import syscalls as sc
from ..local import here

# Ended containers' network namespaces, kept open and let go of together. A network
# namespace's teardown (cleanup_net) runs two rcu_barrier()s whatever the number of namespaces
# it takes at once; one a container, on a 2-CPU VM, cost 0.2-0.3 ms of CPU a test in kernel
# workers (perf). A held namespace has no process and no socket left: a test's process that
# inherits the fds (as it inherits the zygote socket) finds a loopback and nothing else.
NET_BATCH = 32
_can_hold_nets = True  # PIDFD_GET_NET_NAMESPACE needs Linux 6.11 (a kernel fact: inherited)


def hold_net(pidfd: int) -> None:
    """Keep init's network namespace alive past its death, to be let go with others."""
    global _can_hold_nets
    if not _can_hold_nets:
        return
    dead = here().dead_nets  # a forked child's copies are not its own to batch
    try:
        fd = fcntl.ioctl(pidfd, sc.PIDFD_GET_NET_NAMESPACE, 0)
        dead.append(fd)
        here().open_fds.add(fd)  # a test's process does not inherit it (launch.close_foreign)
    except OSError as e:
        if e.errno in (errno.ENOTTY, errno.EINVAL):  # before Linux 6.11
            _can_hold_nets = False
        return  # else init is gone already (ESRCH): nothing to hold
    if len(dead) >= NET_BATCH:
        release_nets()


def release_nets() -> None:
    """Let go of the held network namespaces (the kernel tears them down in one batch)."""
    dead = here().dead_nets
    while dead:
        fd = dead.pop()
        here().open_fds.discard(fd)
        os.close(fd)
