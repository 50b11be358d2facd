"""The host-tree planner is pure: mountinfo text and a fake filesystem in, layers out."""

from pytest_isolate.runtime.kernel.mountinfo import (
    HostFS,
    Layer,
    parse_mountinfo,
    plan_host_tree,
    visible_mounts,
)

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
28 27 0:25 / /mnt/tools/python ro,relatime - tmpfs t ro
40 27 0:40 / /home/u\\040v/venv rw - ext4 /dev/vdb rw
41 27 0:41 / /etc/hosts rw - ext4 /dev/vdb rw
"""


class FakeFS(HostFS):
    TREE = {
        "/": [("bin", "symlink", "usr/bin"), ("dev", "dir", ""), ("etc", "dir", ""),
              ("home", "dir", ""), ("mnt", "dir", ""), ("proc", "dir", ""),
              ("srv", "dir", ""), ("usr", "dir", ""), ("vmlinuz", "file", "")],
        "/mnt": [("tools", "dir", ""), ("readme", "file", "")],
        "/mnt/tools": [("python", "dir", ""), ("lib", "dir", "")],
        "/home": [("u v", "dir", "")],
        "/home/u v": [("venv", "dir", ""), (".bashrc", "file", "")],
        "/etc": [("hosts", "file", ""), ("passwd", "file", "")],
    }

    def entries(self, path):
        return self.TREE.get(path, [])

    def is_dir(self, path):
        return path != "/etc/hosts"

    def mode(self, path):
        return 0o755

    def is_empty(self, path):
        return path == "/srv"


def test_mountinfo_octal_escapes_are_decoded():
    assert [m.mountpoint for m in parse_mountinfo(MOUNTINFO)][4] == "/home/u v/venv"


def test_a_mount_stacked_on_the_same_path_hides_the_one_below():
    text = ("1 0 0:1 / / rw - ext4 a rw\n2 1 0:2 / /x rw - tmpfs b rw\n"
            "3 1 0:3 / /x rw - tmpfs c rw\n4 2 0:4 / /x/y rw - tmpfs d rw\n")
    assert [m.mount_id for m in visible_mounts(parse_mountinfo(text))] == [1, 3]


def test_root_plan_is_one_overlay_of_root_with_each_submount_stacked_on_it():
    plan = plan_host_tree(MOUNTINFO, FakeFS(), split=False)
    assert plan == (Layer("overlay", "/", "/"),
                    Layer("overlay", "/mnt/tools/python", "/mnt/tools/python"),
                    Layer("overlay", "/home/u v/venv", "/home/u v/venv"),
                    Layer("file", "/etc/hosts", "/etc/hosts"))


def test_userns_plan_splits_directories_down_to_their_mounts():
    plan = plan_host_tree(MOUNTINFO, FakeFS(), split=True)
    targets = {lay.target: lay.kind for lay in plan}
    assert targets["/mnt"] == "dir"
    assert targets["/mnt/tools"] == "dir"
    assert targets["/mnt/tools/python"] == "overlay"
    assert targets["/mnt/tools/lib"] == "overlay"
    assert targets["/mnt/readme"] == "file"
    assert targets["/home/u v/venv"] == "overlay"
    assert targets["/etc"] == "dir" and targets["/etc/passwd"] == "file"
    assert targets["/usr"] == "overlay"
    assert targets["/srv"] == "dir"  # empty: nothing to copy on write
    assert targets["/bin"] == "symlink" and targets["/vmlinuz"] == "file"
    assert targets["/proc"] == "dir" and not any(t.startswith("/proc/") for t in targets)
    # parents come before their entries, so the builder can create them in order
    order = [lay.target for lay in plan]
    assert order.index("/mnt") < order.index("/mnt/tools") < order.index("/mnt/tools/python")
