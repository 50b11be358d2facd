"""Root filesystem steps: build the container's root under a scratch tmpfs, pivot into it.

Rule: step functions take explicit arguments, raise SetupError, and never call each other's
callers; `plan.py` lists them and `setup.py` runs them in order. What the host tree looks like
is planned beforehand by mountinfo.py (pure).

Why a per-directory overlay tree: an overlay with lowerdir=/ hides every submount (a bind-mounted
venv, a tmpfs a test mounted) and is refused in a user namespace. So each top-level directory
gets its own overlay and every visible host submount gets one stacked at its place. Writes land
in upper layers on a tmpfs that dies with the mount namespace, so nothing reaches the host.

The scratch tmpfs is mounted over /dev/shm inside the container's private mount namespace: a
directory every Linux host has, whose host content the container never needs (it gets its own
/dev). So no per-container directory is ever created on the host.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence

from .. import syscalls as sc
from ..errors import SetupError, hint_for
from .mountinfo import SPECIAL_TOP, Layer

SCRATCH = "/dev/shm"
MASK_DIR = f"{SCRATCH}/mask"  # empty: bound read-only over the masked directories
LAYER_MAP = f"{SCRATCH}/layers"  # only with Spec.keep_dir: "u/<n> TAB <path in the container>"
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
