"""Leaving nothing behind: the `pti` prefix, owner locks, and removal of dead runs' leftovers.

Rule: every host resource the project creates is named `pti-<owner pid>-...` (or `pti<hex>`
where names are short) and its owner holds an flock on `<state dir>/<pid>.lock` for as long as
it lives. A lock that can be taken belongs to a dead run: `cleanup_stale` removes what that run
left and each new run calls it once. Containers themselves leave nothing on the host: their
mounts live and die in their own mount namespace.

A leaf: the modules that leave things on the host are named in CLEANERS (imported only when a
cleanup runs, so that a dead run's links are found without this process importing pyroute2
first); each has `stale_owners() -> set[pid]` and `remove_stale(pid) -> [what it removed]`.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import importlib
import os
import tempfile

from ..local import here

PREFIX = "pti"
CLEANERS = ("pytest_isolate.runtime.cgroups", "pytest_isolate.runtime.network.leases",
            "pytest_isolate.runtime.network.hostlink")


_ROOT_DIR = "/run/pytest-isolate"
_root_dir_ok: tuple[int, bool] = (0, False)  # (pid that checked, whether it may write there)


def _may_write(d: str) -> bool:
    """A file made and removed there for real (permission bits tell little in a user
    namespace: on an overlay the directory may be ours while what is in it is not)."""
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=d)
        os.close(fd)
        os.unlink(probe)
        path = os.path.join(d, f"{os.getpid()}.lock")  # the lock this process will take
        if os.path.exists(path):
            os.close(os.open(path, os.O_RDWR))
        return True
    except OSError as e:
        # Only "not ours to write" sends root elsewhere: any other failure would split the
        # processes of one run between two lease tables.
        return e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS)


def state_dir() -> str:
    global _root_dir_ok
    if os.geteuid() == 0:
        # Not when root only in a user namespace (a rootless container's, even one forked
        # from root's pytest): the host's /run is not ours there; the per-user place below is.
        if _root_dir_ok[0] != os.getpid():
            _root_dir_ok = (os.getpid(), _may_write(_ROOT_DIR))
        if _root_dir_ok[1]:
            return _ROOT_DIR
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.access(base, os.W_OK):
        return os.path.join(base, "pytest-isolate")
    return f"/tmp/pytest-isolate-{os.geteuid()}"


def ensure_owner_lock() -> str:
    """Take this process's owner lock (once per process; again after a fork)."""
    local = here()
    if local.owner_lock is not None:
        return local.owner_lock[1]
    d = state_dir()
    os.makedirs(d, mode=0o700, exist_ok=True)
    path = os.path.join(d, f"{os.getpid()}.lock")
    # Locked before it is visible under its name: a sweep that finds the file can never take
    # the lock of a live owner that has not locked it yet (and take it for dead).
    fd, tmp = tempfile.mkstemp(prefix=".lock-", dir=d)
    os.set_inheritable(fd, False)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(tmp, path)
    local.owner_lock = (fd, path)
    atexit.register(_release, path, os.getpid())
    global _cleaned
    if not _cleaned:  # once per run: a forked child's lock is its own, the sweep its parent's
        _cleaned = True
        cleanup_stale()
    return path


_cleaned = False


_before_release: list = []


def before_release(fn) -> None:
    """Have fn (stop the zygote, say) run at exit before the lock file goes: what it stops
    can make no more cgroups once the check below has looked."""
    _before_release.append(fn)


def _release(path: str, pid: int) -> None:
    """At exit: the lock file goes (and the state directory when it is empty), unless
    something of this process is left that its exit could not remove (a cgroup still busy,
    say, in an xdist worker interrupted as its controller died): then the file stays,
    unlocked, and the next run's start finds a dead owner and sweeps. Forked children leave
    through os._exit and never get here."""
    if os.getpid() != pid:
        return
    for fn in _before_release:
        with contextlib.suppress(Exception):
            fn()
    with contextlib.suppress(Exception):
        cgroups = importlib.import_module(CLEANERS[0])
        if pid in cgroups.stale_owners():
            cgroups.remove_stale(pid)
            if pid in cgroups.stale_owners():
                return
    with contextlib.suppress(OSError):
        os.unlink(path)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(path))


def owner_alive(pid: int) -> bool:
    """True when pid's lock is held (or pid runs without a lock file we can see)."""
    path = os.path.join(state_dir(), f"{pid}.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return _pid_exists(pid)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dead_owners() -> list[int]:
    """Owners whose lock file is here but not held: a run killed before it could clean up.
    Cheap (a listing and a lock try each): the start of a run calls it, and sweeps only
    when it finds one."""
    found = []
    if os.geteuid() == 0 and not os.path.isdir(_ROOT_DIR):
        return found  # state_dir() would make it: a run that isolates nothing makes nothing
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(state_dir()):
            if name.endswith(".lock") and name[:-5].isdigit():
                pid = int(name[:-5])
                if pid != os.getpid() and not owner_alive(pid):
                    found.append(pid)
    return found


def cleanup_stale() -> list[str]:
    """Remove leftovers of every dead owner; returns what was removed."""
    removed: list[str] = []
    d = state_dir()
    owners: set[int] = set()
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(d):
            if name.endswith(".lock") and name[:-5].isdigit():
                owners.add(int(name[:-5]))
    cleaners = [importlib.import_module(name) for name in CLEANERS]
    for cleaner in cleaners:
        owners |= cleaner.stale_owners()
    for pid in sorted(owners):
        if pid == os.getpid() or owner_alive(pid):
            continue
        for cleaner in cleaners:
            removed += cleaner.remove_stale(pid)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(d, f"{pid}.lock"))
    return removed
