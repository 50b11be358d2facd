"""The generated stress suite: 1000 tests of kinds whose outcome is known, all isolated but
those that start containers from an image (inside an isolated test /proc has masked paths
mounted over it, and the kernel then refuses a nested container a fresh /proc).

`write(dir, marker)` writes it; `EXPECTED[kind]` is (outcome, cap hit) as JUnit XML gives
them. The `marker` names the background processes the suite leaves running, so that the
lane can look for survivors of this run and of no other.
"""

from __future__ import annotations

import os

# kind -> how many, (outcome in JUnit XML, isolate_cap_hits)
KINDS: dict[str, tuple[int, tuple[str, str]]] = {
    "trivial": (790, ("passed", "none")),
    "assertion": (50, ("failed", "none")),
    "fixture_error": (30, ("error", "none")),
    "segfault": (20, ("failed", "none")),
    "oom": (20, ("failed", "oom")),
    "fork_bomb": (20, ("passed", "pids")),
    "hang": (8, ("failed", "timeout")),
    "background": (20, ("passed", "none")),
    "big_file": (12, ("passed", "none")),
    "veth_pair": (10, ("passed", "none")),
    "network": (10, ("passed", "none")),
    "image": (10, ("passed", "none")),
}
TOTAL = sum(n for n, _ in KINDS.values())

BODIES = {
    "trivial": "def test_trivial_{i}():\n    assert {i} >= 0\n",
    "assertion": "def test_assertion_{i}():\n    assert {i} < 0, 'expected'\n",
    "fixture_error": "def test_fixture_error_{i}(broken):\n    pass\n",
    "segfault": "def test_segfault_{i}():\n    import ctypes\n    ctypes.string_at(0)\n",
    "oom": ("@pytest.mark.isolated(memory='32M')\ndef test_oom_{i}():\n"
            "    hog = []\n    while True:\n        hog.append(bytearray(8 << 20))\n"),
    "fork_bomb": ("@pytest.mark.isolated(pids=32)\ndef test_fork_bomb_{i}():\n"
                  "    kids = []\n    with pytest.raises(BlockingIOError):\n"
                  "        for _ in range(64):\n            pid = os.fork()\n"
                  "            if pid == 0:\n                time.sleep(30)\n"
                  "                os._exit(0)\n            kids.append(pid)\n"),
    "hang": "@pytest.mark.isolated(timeout=1)\ndef test_hang_{i}():\n    time.sleep(60)\n",
    "background": ("def test_background_{i}():\n"
                   "    subprocess.Popen(['sleep', '1000{marker}'])\n"),
    "big_file": ("def test_big_file_{i}(tmp_path):\n"
                 "    with open('/var/tmp/pti-stress-{i}', 'wb') as f:\n"
                 "        f.write(os.urandom(1 << 20) * 50)\n"
                 "    assert os.path.getsize('/var/tmp/pti-stress-{i}') == 50 << 20\n"),
    "veth_pair": ("def test_veth_pair_{i}(veth_pair):\n"
                  "    s = veth_pair.b.socket(); s.bind((veth_pair.b.ip, 0)); s.listen()\n"
                  "    c = veth_pair.a.socket(); c.settimeout(2); c.connect(s.getsockname())\n"),
    "network": ("def test_network_{i}(network):\n    net = network(3)\n"
                "    s = net[2].socket(); s.bind((net[2].ip, 0)); s.listen()\n"
                "    c = net[0].socket(); c.settimeout(2); c.connect(s.getsockname())\n"),
    # not isolated: inside an isolated test /proc has masked paths mounted over it, and the
    # kernel then refuses a nested container a fresh /proc (docs/explanation/limitations.md)
    "image": ("def test_image_{i}(containers):\n"
              "    box = containers.start(image=IMAGE)\n"
              "    assert box.run(['cat', '/etc/hello']).stdout == b'hello from the image\\n'\n"),
}

HEADER = """import os, subprocess, time
import pytest

pytestmark = {mark}
IMAGE = {image!r}

@pytest.fixture
def broken():
    raise RuntimeError("a fixture that fails")

"""


def write(d: str, marker: str, image: str) -> None:
    """The suite in d: one module per kind, tests interleaved by number."""
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "pytest.ini"), "w") as f:
        f.write("[pytest]\nisolate_unsupported = fail\n")
    for kind, (n, _) in KINDS.items():
        body = "".join(BODIES[kind].format(i=i, marker=marker) for i in range(n))
        with open(os.path.join(d, f"test_{kind}.py"), "w") as f:
            mark = "[]" if kind == "image" else "pytest.mark.isolated"
            f.write(HEADER.format(image=image, mark=mark) + body)


def kind_of(name: str) -> str:
    """test_<kind>_<i> -> kind."""
    return name[len("test_"):].rsplit("_", 1)[0]
