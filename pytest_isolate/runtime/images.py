"""Images as overlay lower layers: a directory, a `docker export` tarball, an OCI image layout,
or a `docker save` archive.

Rule: nothing is ever written outside the cache directory. Every layer is unpacked into a
temporary directory inside the cache by our own extractor (never `tarfile.extractall`: it
follows symlinks it has just created), checked against its digest, then renamed into place
under a per-digest file lock, so xdist workers starting the same image unpack it once. Entries
that climb out (`..`, absolute names, links out of the layer), device nodes without root, a
truncated file or a digest mismatch raise `ImageError` naming the entry. OCI whiteouts
(`.wh.NAME`) become overlay whiteouts (a 0/0 character device) and opaque markers
(`.wh..wh..opq`) the overlay opaque xattr.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from .errors import ImageError

CACHE_ENV = "PYTEST_ISOLATE_CACHE"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_CHUNK = 1 << 20


def cache_dir() -> str:
    """$PYTEST_ISOLATE_CACHE, else $XDG_CACHE_HOME/pytest-isolate, else ~/.cache/..."""
    if os.environ.get(CACHE_ENV):
        return os.path.abspath(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pytest-isolate")


@dataclass(frozen=True)
class Image:
    """A resolved image: unpacked layer directories (bottom first) and its config."""

    layers: tuple[str, ...]
    env: tuple[str, ...] = ()  # "NAME=value", from the image config
    cmd: tuple[str, ...] = ()  # Entrypoint + Cmd
    workdir: str | None = None
    unpacked: int = 0  # how many layers this call unpacked (0: all came from the cache)

    def environment(self) -> dict[str, str]:
        env = {"PATH": DEFAULT_PATH}
        for item in self.env:
            key, _, value = item.partition("=")
            env[key] = value
        return env


def open_image(path: str, cache: str | None = None) -> Image:
    """Resolve `path` (directory, export tarball, OCI layout, docker save archive) to layers."""
    src = os.path.abspath(os.fspath(path))
    if not os.path.exists(src):
        raise ImageError(src, None, "no such file or directory",
                         "give a directory, a `docker export` tarball, an OCI image layout or "
                         "a `docker save` archive")
    cache = os.path.abspath(cache or cache_dir())
    if os.path.isdir(src):
        if os.path.exists(os.path.join(src, "oci-layout")):
            return _oci_layout(src, cache)
        return Image(layers=(src,))
    known = _index_get(src, cache)
    if known is not None:
        return known
    try:
        with tarfile.open(src, "r:*") as tar:
            names = {m.name.removeprefix("./") for m in _headers(tar, src)}
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ImageError(src, None, f"not a readable tar archive: {e}") from None
    if "manifest.json" in names:
        image = _docker_save(src, cache)
    elif "oci-layout" in names and "index.json" in names:
        raise ImageError(src, None, "an OCI layout packed in a tar archive",
                         "unpack it (tar -xf) and give the directory")
    else:
        digest = _file_digest(src)
        layer, fresh = _layer(cache, digest, src, functools.partial(open, src, "rb"))
        image = Image(layers=(layer,), unpacked=int(fresh))
    _index_put(src, cache, image)
    return image


# -- image formats ----------------------------------------------------------------------------

def _headers(tar: tarfile.TarFile, src: str) -> Iterator[tarfile.TarInfo]:
    try:
        yield from tar
    except (tarfile.TarError, EOFError) as e:
        raise ImageError(src, None, f"the archive is damaged: {e}") from None


def _read_json(src: str, what: str, data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError as e:
        raise ImageError(src, what, f"not valid JSON: {e}") from None


def _config(src: str, config: dict) -> dict:
    c = config.get("config") or {}
    cmd = (c.get("Entrypoint") or []) + (c.get("Cmd") or [])
    return {"env": tuple(c.get("Env") or ()), "cmd": tuple(cmd),
            "workdir": c.get("WorkingDir") or None}


def _docker_save(src: str, cache: str) -> Image:
    with tarfile.open(src, "r:*") as tar:
        def member_bytes(name: str) -> bytes:
            try:
                f = tar.extractfile(name)
            except KeyError:
                f = None
            if f is None:
                raise ImageError(src, name, "named by manifest.json but missing")
            return f.read()

        manifest = _read_json(src, "manifest.json", member_bytes("manifest.json"))
        if not isinstance(manifest, list) or not manifest or "Layers" not in manifest[0]:
            raise ImageError(src, "manifest.json", "expected a list of images with Layers")
        entry = manifest[0]
        config = _read_json(src, entry["Config"], member_bytes(entry["Config"]))
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        if len(diff_ids) != len(entry["Layers"]):
            raise ImageError(src, entry["Config"], f"{len(diff_ids)} diff_ids for "
                             f"{len(entry['Layers'])} layers")
        layers, fresh = [], 0
        for name, digest in zip(entry["Layers"], diff_ids, strict=True):
            def opener(name: str = name) -> IO[bytes]:
                f = tar.extractfile(name)
                if f is None:
                    raise ImageError(src, name, "named by manifest.json but missing")
                return f
            path, new = _layer(cache, digest, f"{src}:{name}", opener)
            layers.append(path)
            fresh += new
    return Image(layers=tuple(layers), unpacked=fresh, **_config(src, config))


def _oci_layout(src: str, cache: str) -> Image:
    def blob(digest: str) -> str:
        algo, _, hexd = digest.partition(":")
        if algo != "sha256" or len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
            raise ImageError(src, digest, "only sha256 digests are supported")
        return os.path.join(src, "blobs", "sha256", hexd)

    def read(path: str, what: str) -> Any:
        try:
            with open(path, "rb") as f:
                return _read_json(src, what, f.read())
        except FileNotFoundError:
            raise ImageError(src, what, "missing") from None

    index = read(os.path.join(src, "index.json"), "index.json")
    manifests = index.get("manifests") or []
    if not manifests:
        raise ImageError(src, "index.json", "lists no manifest")
    manifest = read(blob(manifests[0]["digest"]), manifests[0]["digest"])
    config = read(blob(manifest["config"]["digest"]), manifest["config"]["digest"])
    layers, fresh = [], 0
    for desc in manifest.get("layers") or []:
        path = blob(desc["digest"])
        layer, new = _layer(cache, desc["digest"], f"{src}:{desc['digest']}",
                            functools.partial(open, path, "rb"))
        layers.append(layer)
        fresh += new
    return Image(layers=tuple(layers), unpacked=fresh, **_config(src, config))


# -- the layer cache --------------------------------------------------------------------------

def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def _layer(cache: str, digest: str, what: str, opener) -> tuple[str, bool]:
    """The unpacked layer for `digest`: (directory, True when this call unpacked it)."""
    from filelock import FileLock

    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or len(hexd) != 64:
        raise ImageError(what, None, f"unsupported digest {digest!r} (sha256 expected)")
    final = os.path.join(cache, "layers", hexd)
    if os.path.isdir(final):
        return final, False
    for d in ("layers", "locks", "tmp"):
        os.makedirs(os.path.join(cache, d), exist_ok=True)
    with FileLock(os.path.join(cache, "locks", f"{hexd}.lock")):
        if os.path.isdir(final):  # another worker unpacked it while we waited
            return final, False
        tmp = os.path.join(cache, "tmp", f"{hexd}.{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.mkdir(tmp, 0o755)
        try:
            with opener() as raw:
                got = _unpack(raw, tmp, what)
            if got != hexd:
                raise ImageError(what, None, f"digest mismatch: expected sha256:{hexd}, the "
                                 f"content hashes to sha256:{got}",
                                 "the file is damaged or was changed; fetch it again")
            os.rename(tmp, final)
        except BaseException:
            _remove(tmp)
            raise
    return final, True


def _remove(path: str) -> None:
    """rmtree that also gets through directories unpacked read-only."""
    def onerror(func, p, exc):
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
        with contextlib.suppress(OSError):
            func(p)
    shutil.rmtree(path, onerror=onerror)


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
        while self.read(_CHUNK):
            pass
        return self.h.hexdigest()


def _unpack(raw: IO[bytes], dest: str, what: str) -> str:
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
                chunk = src.read(min(left, _CHUNK)) if src else b""
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

def _index_key(src: str) -> str:
    st = os.stat(src)
    key = f"{os.path.realpath(src)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{st.st_dev}"
    return hashlib.sha256(key.encode()).hexdigest()


def _index_get(src: str, cache: str) -> Image | None:
    path = os.path.join(cache, "index", _index_key(src))
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    layers = tuple(data["layers"])
    if not all(os.path.isdir(layer) for layer in layers):
        return None  # the cache was pruned: resolve again
    return Image(layers=layers, env=tuple(data["env"]), cmd=tuple(data["cmd"]),
                 workdir=data["workdir"])


def _index_put(src: str, cache: str, image: Image) -> None:
    d = os.path.join(cache, "index")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, _index_key(src))
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"layers": image.layers, "env": image.env, "cmd": image.cmd,
                   "workdir": image.workdir}, f)
    os.replace(tmp, path)
