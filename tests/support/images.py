"""Test images built from Debian's busybox-static: no network, no Docker.

- `rootfs(dir)`: /bin/busybox, applet links, /etc/hello
- `export_tar(path)`: that tree as a `docker export` tarball
- `docker_save(path)`: a two-layer `docker save` archive. Layer 1: the tree plus /etc/gone and
  /opt/old/a; layer 2: a whiteout of /etc/gone, /opt/old made opaque with /opt/old/b in it,
  and /etc/layer2. Config: Env FOO=bar, WorkingDir /opt, Cmd ["sh"].
- `hostile(path, kind)`: an archive with one bad entry of the given kind
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile

BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "ls", "cat", "echo", "hostname", "httpd", "wget", "sleep", "ps", "id", "true",
           "dd", "head", "kill", "mkdir", "rm", "test", "[")


def available() -> str | None:
    if not os.path.exists(BUSYBOX):
        return "busybox-static is not installed (apt-get install busybox-static)"
    return None


def rootfs(d: str) -> str:
    for sub in ("bin", "etc", "tmp", "opt"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    shutil.copy2(BUSYBOX, os.path.join(d, "bin", "busybox"))
    for a in APPLETS:
        link = os.path.join(d, "bin", a)
        if not os.path.lexists(link):
            os.symlink("busybox", link)
    with open(os.path.join(d, "etc", "hello"), "w") as f:
        f.write("hello from the image\n")
    return d


def export_tar(path: str, work: str) -> str:
    tree = rootfs(os.path.join(work, "export-tree"))
    with tarfile.open(path, "w") as tar:
        tar.add(tree, arcname=".")
    return path


def _tar_bytes(entries) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def _dir(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


def docker_save(path: str, work: str) -> str:
    tree = rootfs(os.path.join(work, "save-tree"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(tree, arcname=".")
        for info, data in (_file("etc/gone", b"deleted in layer 2\n"), _dir("opt/old"),
                           _file("opt/old/a", b"hidden by the opaque marker\n")):
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    layer1 = buf.getvalue()
    layer2 = _tar_bytes([_dir("etc"), _file("etc/.wh.gone", b""), _dir("opt"),
                         _dir("opt/old"), _file("opt/old/.wh..wh..opq", b""),
                         _file("opt/old/b", b"new in layer 2\n"),
                         _file("etc/layer2", b"from layer 2\n")])
    diff_ids = [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in (layer1, layer2)]
    config = json.dumps({"config": {"Env": ["PATH=/bin", "FOO=bar"], "Cmd": ["sh"],
                                    "WorkingDir": "/opt"},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": ["pti/busybox:test"],
                            "Layers": ["l1/layer.tar", "l2/layer.tar"]}]).encode()
    with tarfile.open(path, "w") as tar:
        for info, data in (_file("manifest.json", manifest), _file(config_name, config),
                           _dir("l1"), _file("l1/layer.tar", layer1), _dir("l2"),
                           _file("l2/layer.tar", layer2)):
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def oci_layout(d: str, work: str) -> str:
    """The docker_save image as an OCI image layout directory, layers gzip-compressed."""
    import gzip

    save = docker_save(os.path.join(work, "for-oci.tar"), work)
    with tarfile.open(save) as tar:
        layers = [tar.extractfile(f"l{i}/layer.tar").read() for i in (1, 2)]
    blobs = os.path.join(d, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def put(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    diff_ids = [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers]
    config = put(json.dumps({"config": {"Env": ["PATH=/bin", "FOO=oci"], "WorkingDir": "/opt"},
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode())
    layer_descs = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    **put(gzip.compress(layer, mtime=0))} for layer in layers]
    manifest = put(json.dumps({"schemaVersion": 2, "config": config,
                               "layers": layer_descs}).encode())
    with open(os.path.join(d, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [manifest]}, f)
    with open(os.path.join(d, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    return d


def big_export(path: str, work: str, megabytes: int) -> str:
    """An export tarball of about `megabytes` MB: the busybox tree plus incompressible files."""
    tree = rootfs(os.path.join(work, f"big-{megabytes}"))
    os.makedirs(os.path.join(tree, "data"), exist_ok=True)
    for i in range(megabytes):
        with open(os.path.join(tree, "data", f"blob{i}"), "wb") as f:
            f.write(os.urandom(1 << 20))
    with tarfile.open(path, "w") as tar:
        tar.add(tree, arcname=".")
    return path


HOSTILE = ("dotdot", "absolute", "symlink_escape", "through_symlink", "hardlink_escape",
           "device", "truncated")


def _link(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def hostile(path: str, kind: str) -> str:
    ok = _file("etc/fine", b"fine\n")
    if kind == "dotdot":
        bad = [_file("../../escaped", b"x")]
    elif kind == "absolute":
        bad = [_file("/tmp/pti-escaped", b"x")]
    elif kind == "symlink_escape":
        bad = [_link("etc/link", tarfile.SYMTYPE, "../../../../etc/passwd")]
    elif kind == "through_symlink":
        bad = [_link("evil", tarfile.SYMTYPE, "/tmp"), _file("evil/pti-escaped", b"x")]
    elif kind == "hardlink_escape":
        bad = [_link("etc/hard", tarfile.LNKTYPE, "../../etc/passwd")]
    elif kind == "device":
        info, _ = _link("dev/sda", tarfile.BLKTYPE)
        info.devmajor, info.devminor = 8, 0
        bad = [(info, None)]
    elif kind == "truncated":
        data = _tar_bytes([ok, _file("etc/big", b"y" * 100_000)])
        with open(path, "wb") as f:
            f.write(data[:60_000])
        return path
    else:
        raise ValueError(kind)
    with open(path, "wb") as f:
        f.write(_tar_bytes([ok, *bad]))
    return path
