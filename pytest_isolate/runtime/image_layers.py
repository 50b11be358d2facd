"""One image layer, unpacked safely: our own tar extractor, OCI whiteouts as overlay ones.

Rule: every entry is created through directory fds below the destination (never
`tarfile.extractall`: it follows symlinks it has just created); an entry that climbs out
(`..`, an absolute name, a link out of the layer), a device node without root or a truncated
file raises ImageError naming it. `.wh.NAME` becomes an overlay whiteout (a 0/0 character
device), `.wh..wh..opq` the overlay opaque xattr.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tarfile
from typing import IO

from .errors import ImageError

CHUNK = 1 << 20

class _Hashing:
    """A read-only stream that hashes what passes through (the compressed bytes for OCI
    blobs, the tar itself for docker save layers and export tarballs)."""

    def __init__(self, raw: IO[bytes]):
        self.raw = raw
        self.h = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.h.update(data)
        return data

    def drain(self) -> str:
        while self.read(CHUNK):
            pass
        return self.h.hexdigest()


def unpack(raw: IO[bytes], dest: str, what: str) -> str:
    """Extract the tar stream (plain or compressed: tarfile's "r|*" tells) into dest; returns
    the sha256 of the raw bytes."""
    stream = _Hashing(raw)
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:  # type: ignore[call-overload]
            _extract(tar, dest, what)
    except (tarfile.TarError, EOFError, OSError) as e:
        if isinstance(e, ImageError):
            raise
        raise ImageError(what, None, f"the archive is damaged or truncated: {e}") from None
    return stream.drain()


# -- the extractor ----------------------------------------------------------------------------

def _safe_name(what: str, name: str) -> tuple[str, ...]:
    if name.startswith("/"):
        raise ImageError(what, name, "an absolute path: entries must stay inside the layer")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ImageError(what, name, "'..' in the path: entries must stay inside the layer")
    return parts


def _walk(root_fd: int, parts: tuple[str, ...], what: str, name: str) -> int:
    """An fd of the directory parts[:-1] under root, creating what is missing; never follows
    a symlink (O_NOFOLLOW on every component)."""
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            try:
                nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(part, 0o755, dir_fd=fd)
                nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except (NotADirectoryError, OSError) as e:
                raise ImageError(what, name, f"its path passes through {part!r}, which is not "
                                 f"a directory (a symlink?): {e.strerror}") from None
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _set_opaque(dir_fd: int, what: str, entry: str) -> None:
    """user.* serves overlays mounted in a user namespace (userxattr), trusted.* root's; a
    filesystem may take only one of them (tmpfs before 6.6 has no user xattrs)."""
    path = f"/proc/self/fd/{dir_fd}"
    names = ("user.overlay.opaque",) + (("trusted.overlay.opaque",) if os.geteuid() == 0
                                        else ())
    errors = []
    for attr in names:
        try:
            os.setxattr(path, attr, b"y")
        except OSError as e:
            errors.append(f"{attr}: {e.strerror}")
    if len(errors) == len(names):
        raise ImageError(what, entry, f"cannot mark the directory opaque ({'; '.join(errors)})",
                         "put the cache (PYTEST_ISOLATE_CACHE) on a filesystem with xattrs")


def _extract(tar: tarfile.TarFile, dest: str, what: str) -> None:
    root = os.geteuid() == 0
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    dir_modes: list[tuple[tuple[str, ...], int]] = []
    try:
        for m in tar:
            parts = _safe_name(what, m.name)
            if not parts:
                continue  # "./" itself
            base = parts[-1]
            dfd = _walk(root_fd, parts, what, m.name)
            try:
                if base == ".wh..wh..opq":
                    _set_opaque(dfd, what, m.name)
                elif base.startswith(".wh."):
                    _whiteout(dfd, base[4:], what, m.name)
                else:
                    _entry(tar, m, parts, dfd, root_fd, what, root, dir_modes)
            finally:
                os.close(dfd)
        for parts, mode in reversed(dir_modes):  # last: a read-only dir takes no more files
            os.chmod("/".join(parts), mode, dir_fd=root_fd)
    finally:
        os.close(root_fd)


def _whiteout(dfd: int, name: str, what: str, entry: str) -> None:
    if not name or name in (".", ".."):
        raise ImageError(what, entry, "a whiteout without a name")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dfd)
    os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=dfd)


def _entry(tar: tarfile.TarFile, m: tarfile.TarInfo, parts: tuple[str, ...], dfd: int,
           root_fd: int, what: str, root: bool, dir_modes: list) -> None:
    base = parts[-1]
    mode = m.mode & 0o7777
    if m.isdir():
        with contextlib.suppress(FileExistsError):
            os.mkdir(base, 0o755, dir_fd=dfd)
        dir_modes.append((parts, mode))
    else:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.unlink(base, dir_fd=dfd)  # a later entry replaces an earlier one
        if m.isreg():
            _write_file(tar, m, base, dfd, mode, what)
        elif m.issym():
            target = m.linkname
            if not target.startswith("/"):  # absolute targets resolve inside the container
                depth = len(parts) - 1
                up = 0
                for p in target.split("/"):
                    up = up - 1 if p == ".." else up + (p not in ("", "."))
                    if up < -depth:
                        raise ImageError(what, m.name, f"a symlink to {target!r}, which points "
                                         "outside the layer")
            os.symlink(target, base, dir_fd=dfd)
        elif m.islnk():
            try:
                target = _safe_name(what, m.linkname)
            except ImageError as e:
                raise ImageError(what, m.name, f"a hard link to {m.linkname!r}: {e.why}") from None
            if not target:
                raise ImageError(what, m.name, "a hard link to the layer's root")
            try:
                os.link("/".join(target), base, src_dir_fd=root_fd, dst_dir_fd=dfd,
                        follow_symlinks=False)
            except FileNotFoundError:
                raise ImageError(what, m.name, f"a hard link to {m.linkname!r}, which is not "
                                 "an earlier entry of this layer") from None
        elif m.ischr() or m.isblk() or m.isfifo():
            if (m.ischr() or m.isblk()) and not root:
                raise ImageError(what, m.name, "a device node, which only root may create",
                                 "run as root, or use an image without device nodes")
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK if m.isblk() else stat.S_IFIFO
            os.mknod(base, kind | mode, os.makedev(m.devmajor, m.devminor), dir_fd=dfd)
        else:
            raise ImageError(what, m.name, f"an entry of unsupported type {m.type!r}")
    if root:
        os.chown(base, m.uid, m.gid, dir_fd=dfd, follow_symlinks=False)
        if mode & 0o6000 and not m.isdir() and not m.issym():
            os.chmod(base, mode, dir_fd=dfd)  # chown cleared setuid/setgid


def _write_file(tar: tarfile.TarFile, m: tarfile.TarInfo, base: str, dfd: int, mode: int,
                what: str) -> None:
    src = tar.extractfile(m)
    fd = os.open(base, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode & 0o777 | 0o200, dir_fd=dfd)
    try:
        left = m.size
        while left > 0:
            try:
                chunk = src.read(min(left, CHUNK)) if src else b""
            except (tarfile.TarError, EOFError) as e:
                raise ImageError(what, m.name, f"truncated: {e}") from None
            if not chunk:
                raise ImageError(what, m.name, f"truncated: {m.size - left} of {m.size} bytes")
            os.write(fd, chunk)
            left -= len(chunk)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


# -- index: a file's resolution, keyed by what stat says about it ------------------------------
