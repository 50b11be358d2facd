"""Image unpacking without containers: formats, whiteouts, hostile archives, the cache."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from pytest_isolate.runtime.errors import ImageError
from pytest_isolate.runtime.images import open_image
from tests.conftest import require
from tests.support import images as imgs


@pytest.fixture(autouse=True)
def _busybox():
    missing = imgs.available()
    require(missing is None, missing or "")


def _listing(path: str) -> set[str]:
    return set(os.listdir(path)) if os.path.isdir(path) else set()


def _nothing_outside(cache: str) -> None:
    assert not os.path.exists("/tmp/pti-escaped")
    assert _listing(os.path.join(cache, "tmp")) == set(), "a half-unpacked layer was left"
    assert _listing(os.path.join(cache, "layers")) == set()


def test_a_directory_is_one_layer_as_it_is(tmp_path):
    tree = imgs.rootfs(str(tmp_path / "tree"))
    image = open_image(tree, str(tmp_path / "cache"))
    assert image.layers == (tree,) and image.unpacked == 0


def test_an_export_tarball_is_unpacked_once_then_cached(tmp_path):
    tar = imgs.export_tar(str(tmp_path / "export.tar"), str(tmp_path))
    first = open_image(tar, str(tmp_path / "cache"))
    again = open_image(tar, str(tmp_path / "cache"))
    assert first.unpacked == 1 and again.unpacked == 0 and first.layers == again.layers
    (layer,) = first.layers
    assert os.readlink(os.path.join(layer, "bin", "sh")) == "busybox"
    with open(os.path.join(layer, "etc", "hello")) as f:
        assert f.read() == "hello from the image\n"


def test_docker_save_layers_whiteouts_opaque_and_config(tmp_path):
    tar = imgs.docker_save(str(tmp_path / "save.tar"), str(tmp_path))
    image = open_image(tar, str(tmp_path / "cache"))
    assert len(image.layers) == 2 and image.unpacked == 2
    assert image.environment()["FOO"] == "bar" and image.workdir == "/opt"
    assert image.cmd == ("sh",)
    top = image.layers[1]
    gone = os.lstat(os.path.join(top, "etc", "gone"))
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0  # an overlay whiteout
    assert os.getxattr(os.path.join(top, "opt", "old"), "user.overlay.opaque") == b"y"
    assert not os.path.exists(os.path.join(top, "opt", "old", ".wh..wh..opq"))


def test_an_oci_layout_with_gzip_layers_resolves_like_docker_save(tmp_path):
    layout = imgs.oci_layout(str(tmp_path / "oci"), str(tmp_path))
    image = open_image(layout, str(tmp_path / "cache"))
    assert len(image.layers) == 2 and image.environment()["FOO"] == "oci"
    top = image.layers[1]
    assert stat.S_ISCHR(os.lstat(os.path.join(top, "etc", "gone")).st_mode)
    assert open_image(layout, str(tmp_path / "cache")).unpacked == 0


def test_a_changed_layer_is_a_digest_mismatch_and_leaves_nothing(tmp_path):
    tar = imgs.docker_save(str(tmp_path / "save.tar"), str(tmp_path))
    # Rewrite the config's diff_ids: the layers no longer match.
    import tarfile
    with tarfile.open(tar) as t:
        members = {m.name: (m, t.extractfile(m).read() if m.isfile() else None)
                   for m in t.getmembers()}
    manifest = json.loads(members["manifest.json"][1])
    cfg_name = manifest[0]["Config"]
    cfg = json.loads(members[cfg_name][1])
    cfg["rootfs"]["diff_ids"][1] = "sha256:" + "0" * 64
    data = json.dumps(cfg).encode()
    bad = str(tmp_path / "bad.tar")
    with tarfile.open(bad, "w") as out:
        for name, (m, content) in members.items():
            if name == cfg_name:
                m.size, content = len(data), data
            import io
            out.addfile(m, io.BytesIO(content) if content is not None else None)
    cache = str(tmp_path / "cache")
    with pytest.raises(ImageError, match="digest mismatch"):
        open_image(bad, cache)
    assert len(os.listdir(os.path.join(cache, "layers"))) == 1  # layer 1 was fine
    assert os.listdir(os.path.join(cache, "tmp")) == []


@pytest.mark.parametrize("kind", imgs.HOSTILE)
def test_hostile_archives_raise_image_error_naming_the_entry(tmp_path, kind):
    if kind == "device" and os.geteuid() == 0:
        pytest.skip("root may create device nodes: only rootless refuses them")
    tar = imgs.hostile(str(tmp_path / f"{kind}.tar"), kind)
    cache = str(tmp_path / "cache")
    with pytest.raises(ImageError) as info:
        open_image(tar, cache)
    expected = {"dotdot": "../../escaped", "absolute": "/tmp/pti-escaped",
                "symlink_escape": "etc/link", "through_symlink": "evil/pti-escaped",
                "hardlink_escape": "etc/hard", "device": "dev/sda", "truncated": None}[kind]
    if expected:
        assert info.value.entry == expected, str(info.value)
    else:
        assert "truncated" in str(info.value) or "damaged" in str(info.value)
    _nothing_outside(cache)


def test_two_processes_unpack_the_same_image_once(tmp_path):
    tar = imgs.export_tar(str(tmp_path / "export.tar"), str(tmp_path))
    cache = str(tmp_path / "cache")
    script = textwrap.dedent(f"""
        from pytest_isolate.runtime.images import open_image
        print(open_image({tar!r}, {cache!r}).unpacked)
    """)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              env=env, text=True) for _ in range(2)]
    counts = sorted(int(p.communicate(timeout=60)[0]) for p in procs)
    assert counts == [0, 1]
    assert len(os.listdir(os.path.join(cache, "layers"))) == 1
