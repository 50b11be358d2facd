"""Root filesystem steps: plan the copy-on-write view of the host, build it, pivot into it.

Rule: `plan_host_tree` is pure (mountinfo text and a listing in, layers out) and runs in the
parent, once per mount table; the `mount_*` steps run inside the container's mount namespace.

Why a per-directory overlay tree: an overlay with lowerdir=/ hides every submount (a bind-mounted
venv, a tmpfs a test mounted) and is refused in a user namespace. So each top-level directory
gets its own overlay and every visible host submount gets one stacked at its place. Writes land
in upper layers on a tmpfs that dies with the mount namespace, so nothing reaches the host.

The scratch tmpfs is mounted over /dev/shm inside the container's private mount namespace: a
directory every Linux host has, whose host content the container never needs (it gets its own
/dev). So no per-container directory is ever created on the host.
"""

from __future__ import annotations

import _thread
import contextlib
import errno
import os
import select
import stat
from collections import namedtuple
from collections.abc import Sequence

from . import syscalls as sc
from .errors import SetupError, hint_for

SCRATCH = "/dev/shm"
MASK_DIR = f"{SCRATCH}/mask"  # empty: bound read-only over the masked directories
LAYER_MAP = f"{SCRATCH}/layers"  # only with Spec.keep_dir: "u/<n> TAB <path in the container>"
SPECIAL_TOP = ("proc", "sys", "dev")  # rebuilt fresh, never taken from the host
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
             ("ptmx", "pts/ptmx"))
# runc's defaults: hidden entirely, or visible read-only.
MASKED_PATHS = ("/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap")
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

_PROC_FLAGS = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
# statvfs f_flag bits that a read-only remount must carry over (locked in a user namespace).
_ST_TO_MS = ((os.ST_NOSUID, sc.MS_NOSUID), (os.ST_NODEV, sc.MS_NODEV),
             (os.ST_NOEXEC, sc.MS_NOEXEC), (os.ST_NOATIME, sc.MS_NOATIME),
             (os.ST_NODIRATIME, sc.MS_NODIRATIME), (os.ST_RELATIME, sc.MS_RELATIME))


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


# --- steps run inside the container's mount namespace ------------------------------------

def _mount(step: str, source: str | None, target: str, fstype: str | None, flags: int = 0,
           data: str | None = None) -> None:
    try:
        sc.mount(source, target, fstype, flags, data)
    except OSError as e:
        raise SetupError(step, target, e.errno, str(e), hint_for(step, e.errno)) from None


def _escape_layer(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def remount_readonly(target: str, extra: int = 0) -> None:
    """Read-only bind remount, keeping the flags a user namespace would lock."""
    flags = sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | extra
    try:
        st = os.statvfs(target).f_flag
        for st_bit, ms_bit in _ST_TO_MS:
            if st & st_bit:
                flags |= ms_bit
    except OSError:
        pass
    _mount("remount read-only", None, target, None, flags)


def prepare_scratch(keep_dir: str | None = None) -> str:
    """Make every mount private, then put a tmpfs for the new root and upper layers on SCRATCH,
    or bind keep_dir there so the upper layers (what the container wrote) outlive it. keep_dir
    must not be on the root filesystem: an upper inside the lower "/" is an overlap overlayfs
    refuses; the host's /dev/shm is a tmpfs that the container's fresh /dev hides anyway."""
    _mount("make mounts private", None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    if keep_dir:
        _mount("bind keep directory", keep_dir, SCRATCH, None, sc.MS_BIND)
    else:
        _mount("mount scratch tmpfs", "pti-scratch", SCRATCH, "tmpfs", sc.MS_NOSUID, "mode=755")
    for d in ("root", "u", "w"):
        os.mkdir(f"{SCRATCH}/{d}")
    if keep_dir:
        open(LAYER_MAP, "w").close()  # _overlay notes which upper dir belongs to which path
    return f"{SCRATCH}/root"


def _overlay(target: str, lower: str, index: int, userns: bool, escaped: bool = False) -> None:
    upper, work = f"{SCRATCH}/u/{index}", f"{SCRATCH}/w/{index}"
    os.mkdir(upper)
    os.mkdir(work)
    data = f"lowerdir={lower if escaped else _escape_layer(lower)},upperdir={upper},workdir={work}"
    if userns:
        data += ",userxattr"
    _mount("mount overlay", "pti-overlay", target, "overlay", 0, data)
    if os.path.exists(LAYER_MAP):
        with open(LAYER_MAP, "a") as f:
            f.write(f"u/{index}\t{target.removeprefix(SCRATCH + '/root') or '/'}\n")


SMALL_FILE = 64 * 1024  # files up to this size are copied (writable); larger ones bound ro


def _place_file(source: str, target: str, exists: bool) -> None:
    """Copy-on-write by hand for files overlayfs cannot cover (file mounts, files in split
    directories): small ones are copied into the writable tree, large ones bound read-only."""
    try:
        st = os.stat(source)
    except OSError:
        return
    if st.st_size <= SMALL_FILE:
        try:
            with open(source, "rb") as src:
                data = src.read()
        except OSError:  # unreadable for this user: leave it out, as the host hides it too
            return
        fd = os.open(target, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, stat.S_IMODE(st.st_mode))
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return
    if not exists:
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
    _mount("bind file", source, target, None, sc.MS_BIND)
    remount_readonly(target)


def mount_host_tree(root: str, plan: tuple[Layer, ...], userns: bool) -> list[str]:
    """Build the host's tree under root. Returns the paths that fell back to read-only binds
    because overlayfs refused their filesystem as a lower layer."""
    fallbacks = []
    made: set[str] = set()  # directories this function created (their entries are new too)
    if plan and plan[0].target == "/":
        _overlay(root, "/", 0, userns)  # the overlay itself is the mount pivot_root needs
        plan = plan[1:]
    else:
        _mount("bind new root", root, root, None, sc.MS_BIND)
        made.add("/")
    for i, layer in enumerate(plan, start=1):
        target = root + layer.target
        parent = layer.target.rsplit("/", 1)[0] or "/"
        fresh = parent in made  # the target does not exist yet: create it
        if layer.kind == "dir":
            os.mkdir(target, int(layer.source, 8))
            os.chmod(target, int(layer.source, 8))  # umask must not narrow e.g. /tmp's 1777
            made.add(layer.target)
        elif layer.kind == "symlink":
            os.symlink(layer.source, target)
        elif layer.kind == "file":
            _place_file(layer.source, target, exists=not fresh)
        elif layer.kind == "overlay":
            if fresh:
                os.mkdir(target)
            try:
                _overlay(target, layer.source, i, userns)
            except SetupError:
                # e.g. a FUSE or NFS lower: still visible, but read-only rather than writable.
                _mount("bind read-only", layer.source, target, None, sc.MS_BIND | sc.MS_REC)
                remount_readonly(target)
                fallbacks.append(layer.target)
    return fallbacks


def mount_image_root(root: str, layers: Sequence[str], userns: bool) -> None:
    """The image's layers (bottom first) as overlay lower directories, a tmpfs upper."""
    _overlay(root, ":".join(_escape_layer(layer) for layer in reversed(layers)), 0, userns,
             escaped=True)
    for d in (*SPECIAL_TOP, "tmp"):
        os.makedirs(f"{root}/{d}", exist_ok=True)


def mount_binds(root: str, mounts: dict[str, str]) -> None:
    """Host paths bound read-only at their places inside (created in the writable root)."""
    for source, inside in mounts.items():
        target = root + inside
        if os.path.isdir(source):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if not os.path.exists(target):
                os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
        _mount("bind mount", source, target, None, sc.MS_BIND | sc.MS_REC)
        remount_readonly(target)


def mount_tmp(root: str) -> None:
    _mount("mount tmpfs", "tmpfs", f"{root}/tmp", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV,
           "mode=1777")


def mount_proc(root: str, pidns: str | None = None) -> None:
    """A fresh /proc of the mounter's pid namespace, or of the one `pidns` names (a path to a
    pid namespace file: proc's "pidns" option, new in 2025; older kernels refuse it, EINVAL)."""
    target = f"{root}/proc"
    _mount("mount proc", "proc", target, "proc", _PROC_FLAGS,
           None if pidns is None else f"pidns={pidns}")
    for path in MASKED_PATHS:
        if not path.startswith("/proc/"):
            continue
        _mask(root + path)
    for path in READONLY_PATHS:
        p = root + path
        if os.path.exists(p):
            _mount("bind read-only", p, p, None, sc.MS_BIND | sc.MS_REC)
            remount_readonly(p, _PROC_FLAGS)


def _mask(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        # An empty directory of the scratch tmpfs, bound read-only: a tmpfs of its own per
        # masked directory was two more superblocks per container to build and to tear down
        # (with their RCU callbacks) beside the tests.
        if not os.path.isdir(MASK_DIR):
            os.mkdir(MASK_DIR, 0o555)
        _mount("mask path", MASK_DIR, path, None, sc.MS_BIND)
        remount_readonly(path, _PROC_FLAGS)
    else:
        _mount("mask path", "/dev/null", path, None, sc.MS_BIND)


def mount_sys(root: str) -> None:
    target = f"{root}/sys"
    try:
        sc.mount("sysfs", target, "sysfs", sc.MS_RDONLY | _PROC_FLAGS)
    except OSError:
        # A user namespace that does not own the network namespace (network="host") may not
        # mount sysfs: show the host's, read-only.
        _mount("bind /sys", "/sys", target, None, sc.MS_BIND | sc.MS_REC)
        remount_readonly(target)
    for path in MASKED_PATHS:
        if path.startswith("/sys/"):
            _mask(root + path)


def mount_dev(root: str, userns: bool) -> None:
    dev = f"{root}/dev"
    _mount("mount /dev", "tmpfs", dev, "tmpfs", sc.MS_NOSUID | sc.MS_NOEXEC, "mode=755,size=64k")
    for name in DEVICES:
        target = f"{dev}/{name}"
        # As runc does: root makes its own node (one syscall; a bind is one more mount to build
        # and tear down); a user namespace, or root without CAP_MKNOD, binds the host's.
        if userns or not _make_device(f"/dev/{name}", target):
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o666))
            _mount("bind device", f"/dev/{name}", target, None, sc.MS_BIND)
    for name, link in DEV_LINKS:
        os.symlink(link, f"{dev}/{name}")
    for d in ("pts", "shm", "mqueue"):
        os.mkdir(f"{dev}/{d}")
    pts_opts = "newinstance,ptmxmode=0666,mode=620" + ("" if userns else ",gid=5")
    _mount("mount devpts", "devpts", f"{dev}/pts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC, pts_opts)
    _mount("mount /dev/shm", "shm", f"{dev}/shm", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV,
           "mode=1777")
    _mount("mount /dev/mqueue", "mqueue", f"{dev}/mqueue", "mqueue",
           sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)


def _make_device(host_node: str, target: str) -> bool:
    """A character device with the host node's numbers, read-write for everyone; False when
    creating device nodes is not permitted here."""
    try:
        st = os.stat(host_node)
        if not stat.S_ISCHR(st.st_mode):
            raise OSError(errno.ENODEV, "not a character device")
        os.mknod(target, stat.S_IFCHR | 0o666, st.st_rdev)
        os.chmod(target, 0o666)  # the umask narrowed mknod's mode
    except PermissionError:
        return False
    except OSError as e:
        raise SetupError("make device node", target, e.errno, f"host {host_node}: {e.strerror}",
                         "the host's /dev lacks a standard device node") from None
    return True


def pivot_into(root: str) -> None:
    """pivot_root(".", "."): the old root ends up stacked on the new one and is detached at once,
    so no put_old directory is needed and nothing of the host tree stays reachable."""
    os.chdir(root)
    try:
        sc.pivot_root(".", ".")
    except OSError as e:
        raise SetupError("pivot_root", root, e.errno, str(e)) from None
    try:
        sc.umount2(".", sc.MNT_DETACH)
    except OSError as e:
        raise SetupError("detach old root", root, e.errno, str(e)) from None
    os.chdir("/")
