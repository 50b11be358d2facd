"""The host's mount table and the plan of its copy-on-write view: pure, or read-only.

Rule: nothing here mounts. `plan_host_tree` is pure (mountinfo text and a listing in, layers
out) and runs in the parent, once per mount table (`host_plan` caches it); the mount steps in
rootfs.py build what it plans inside the container's mount namespace.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import select
import stat
from collections import namedtuple

SPECIAL_TOP = ("proc", "sys", "dev")  # rebuilt fresh, never taken from the host

# Named tuples, not dataclasses: the zygote imports this module, and dataclasses pulls in
# inspect (15 ms in a fresh interpreter).
class MountInfo(namedtuple("MountInfo", "mount_id parent_id mountpoint fstype root super_options",
                           defaults=("/", ""))):
    """One line of /proc/<pid>/mountinfo, the fields the planner and cgroup detection use:
    mount_id and parent_id (int), mountpoint, fstype, root, super_options (str)."""

    __slots__ = ()


class Layer(namedtuple("Layer", "kind target source", defaults=("",))):
    """One step of the host tree: kind is overlay, file, symlink or dir; target is in-container;
    source is on the host (or the mode, for dir)."""

    __slots__ = ()


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountInfo]:
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        left, _, right = line.partition(" - ")
        f, r = left.split(), right.split()
        out.append(MountInfo(int(f[0]), int(f[1]), _unescape(f[4]), r[0], _unescape(f[3]),
                             r[2] if len(r) > 2 else ""))
    return out


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def visible_mounts(mounts: list[MountInfo]) -> list[MountInfo]:
    """Drop mounts hidden by a later mount on the same path or on an ancestor path."""
    by_id = {m.mount_id: m for m in mounts}

    def descends_from(m: MountInfo, ancestor_id: int) -> bool:
        seen = set()
        while m.parent_id in by_id and m.mount_id not in seen:
            seen.add(m.mount_id)
            if m.parent_id == ancestor_id:
                return True
            m = by_id[m.parent_id]
        return False

    visible, hidden_ids = [], set()
    for i, m in enumerate(mounts):
        hidden = m.parent_id in hidden_ids or any(
            _under(m.mountpoint, later.mountpoint) and not descends_from(m, later.mount_id)
            for later in mounts[i + 1:])
        if hidden:
            hidden_ids.add(m.mount_id)
        else:
            visible.append(m)
    return visible


class HostFS:
    """What the planner needs to know of the host's files; tests pass a fake."""

    def entries(self, path: str) -> list[tuple[str, str, str]]:
        """(name, kind, link target) for each entry; kind is dir, symlink, file or other."""
        out = []
        try:
            it = os.scandir(path)
        except OSError:
            return out
        with it:
            for e in it:
                if e.is_symlink():
                    out.append((e.name, "symlink", os.readlink(e.path)))
                elif e.is_dir():
                    out.append((e.name, "dir", ""))
                elif e.is_file():
                    out.append((e.name, "file", ""))
                else:
                    out.append((e.name, "other", ""))
        return sorted(out)

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def is_empty(self, path: str) -> bool:
        try:
            with os.scandir(path) as it:
                return next(it, None) is None
        except OSError:  # unreadable (e.g. /root rootless): keep the overlay, it shows the same
            return False

    def mode(self, path: str) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)


def plan_host_tree(mountinfo_text: str, fs: HostFS, split: bool) -> tuple[Layer, ...]:
    """Layers that rebuild the host's visible tree under a new root.

    split=False (root): one overlay of "/", then one overlay stacked on each visible submount
    (an overlay shows only its lower filesystem, not the mounts below).
    split=True (user namespace): overlayfs refuses a lower layer with locked mounts below it,
    so a directory with mounts below is recreated and its entries planned one by one, down to
    the mounts themselves.
    """
    mountpoints = [m.mountpoint for m in visible_mounts(parse_mountinfo(mountinfo_text))
                   if m.mountpoint != "/"
                   and not any(_under(m.mountpoint, "/" + s) for s in SPECIAL_TOP)]
    layers: list[Layer] = []

    def has_mount_below(path: str) -> bool:
        prefix = path.rstrip("/") + "/"
        return any(mp.startswith(prefix) for mp in mountpoints)

    def plan_entry(path: str, kind: str, link: str) -> None:
        if kind == "symlink":
            layers.append(Layer("symlink", path, link))
        elif kind == "file":
            layers.append(Layer("file", path, path))
        elif kind == "dir":
            if split and has_mount_below(path):
                layers.append(Layer("dir", path, oct(fs.mode(path))))
                for name, k, ln in fs.entries(path):
                    plan_entry(f"{path}/{name}", k, ln)
            elif fs.is_empty(path) and not any(mp == path for mp in mountpoints):
                # nothing to copy on write: a plain directory is the same view, one mount less
                layers.append(Layer("dir", path, oct(fs.mode(path))))
            else:
                layers.append(Layer("overlay", path, path))

    if not split:
        # As root one overlay of "/" is the same view as one per directory, at a fraction of
        # the mounts (measured: 2.6 ms -> 0.4 ms); the submounts it hides are stacked on top.
        layers.append(Layer("overlay", "/", "/"))
        for mp in mountpoints:
            layers.append(Layer("overlay" if fs.is_dir(mp) else "file", mp, mp))
        return tuple(layers)
    for name, kind, link in fs.entries("/"):
        if name in SPECIAL_TOP:
            layers.append(Layer("dir", "/" + name, "0o555"))
        else:
            plan_entry("/" + name, kind, link)
    return tuple(layers)


class MountTableWatch:
    """This process's mount table, read again only after it changed.

    /proc/self/mountinfo is pollable: poll() reports POLLPRI once after any mount or unmount
    in the namespace (proc(5)). One poll is a fraction of reading and hashing the table, which
    cost the zygote 0.45 ms per container. The open file is bound to the mount namespace it
    was opened in: a change of namespace opens it again, and so does a forked child (checked
    at use, see warm._own_lock), whose copy of the file shares the parent's poll state.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()  # the process the fields below belong to
        self._fd = -1
        self._ns = 0  # inode of the mount namespace the file was opened in
        self._text = ""
        self._poll = select.poll()
        self._lock = _thread.allocate_lock()  # a poll object refuses concurrent use
        self.generation = 0  # counts the reads: a new value means the table may have changed

    def text(self) -> str:
        if self._pid != os.getpid():
            self.forget()
        ns = os.stat("/proc/self/ns/mnt").st_ino
        with self._lock:
            if self._fd < 0 or ns != self._ns:
                self._forget()
                self._fd = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
                self._poll.register(self._fd, select.POLLPRI)
                self._ns = ns
                self._text = self._read()
            elif self._poll.poll(0):
                self._text = self._read()
            return self._text

    def forget(self) -> None:
        """Close the file (in a forked child: the lock may have been held by another thread
        at the fork, and the file's poll state is shared with the parent)."""
        self._pid = os.getpid()
        self._lock = _thread.allocate_lock()
        self._forget()

    def _forget(self) -> None:
        if self._fd >= 0:
            self._poll = select.poll()
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    def _read(self) -> str:
        self.generation += 1
        os.lseek(self._fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(self._fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks).decode(errors="surrogateescape")


_mount_table = MountTableWatch()
_plan_cache: dict[str, tuple[Layer, ...]] = {}


def mount_table() -> str:
    """This process's /proc/self/mountinfo, read again only after a mount or unmount."""
    return _mount_table.text()


def mount_generation() -> int:
    """Changes whenever this process's mount table may have changed (cheap: one poll)."""
    _mount_table.text()
    return _mount_table.generation


def host_plan(split: bool) -> tuple[Layer, ...]:
    """The host tree plan, recomputed only when the mount table changed, or (split, whose plan
    lists the top-level entries one by one) the "/" listing."""
    text = mount_table()
    fs = HostFS()
    key = f"{split}\n{text}{fs.entries('/')!r}" if split else text
    plan = _plan_cache.get(key)
    if plan is None:
        _plan_cache.clear()
        plan = plan_host_tree(text, fs, split)
        _plan_cache[key] = plan
    return plan
