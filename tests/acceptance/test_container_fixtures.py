"""The containers and container fixtures as users see them, through pytester."""

from __future__ import annotations

import os

from tests.acceptance.test_marker import run
from tests.support import images as imgs


def test_containers_from_an_image_and_the_host_root_and_logs_on_failure(pytester, tmp_path,
                                                                          monkeypatch):
    os.chmod(tmp_path, 0o755)
    image = imgs.export_tar(str(tmp_path / "bb.tar"), str(tmp_path))
    monkeypatch.setenv("PYTEST_ISOLATE_CACHE", str(tmp_path / "cache"))
    result = run(pytester, f"""
        import pytest

        IMAGE = {image!r}

        def test_image(containers):
            srv = containers.start(image=IMAGE, hostname="web")
            assert srv.run(["hostname"]).stdout == b"web\\n"
            other = containers.start(image=IMAGE)
            assert other.run(["cat", "/etc/hello"]).stdout == b"hello from the image\\n"

        def test_host_root(container):
            assert container.call(lambda: __import__("os").getpid()) > 2
            assert container.run(["sh", "-c", "echo $$"]).returncode == 0

        def test_failure_shows_the_logs(containers):
            c = containers.start(image=IMAGE)
            c.spawn(["sh", "-c", "echo server says hello; echo and an error >&2"]).wait()
            assert False, "fails on purpose"
    """)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*container 0 logs*", "*server says hello*",
                                 "*and an error*"])
