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
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from .errors import ImageError
from .image_layers import CHUNK, unpack

CACHE_ENV = "PYTEST_ISOLATE_CACHE"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


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
        while chunk := f.read(CHUNK):
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
                got = unpack(raw, tmp, what)
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
