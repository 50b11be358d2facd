"""Error types of the runtime. Rule: every error names its cause and the fix.

IsolationError
  SpecError          a value in a Spec is wrong (field, value, what is expected)
  UnsupportedError   this host cannot do what was asked (what, why, fix)
  SetupError         a kernel call failed while building a container (step, target, errno, hint)
  ImageError         an image cannot be used as it is (which image, which entry, why, fix)
"""

from __future__ import annotations

import errno as _errno
import os


class IsolationError(Exception):
    """Base class of every error pytest-isolate raises on purpose."""


class SpecError(IsolationError, ValueError):
    """A Spec field holds a value that cannot work. Raised before anything touches the kernel."""

    def __init__(self, field: str, value: object, expected: str, source: str | None = None):
        self.field = field
        self.value = value
        self.expected = expected
        self.source = source
        where = f" from {source}" if source else ""
        super().__init__(f"{field}={value!r}{where}: expected {expected}")


class UnsupportedError(IsolationError):
    """The host lacks a feature the request needs."""

    def __init__(self, what: str, why: str, fix: str):
        self.what = what
        self.why = why
        self.fix = fix
        super().__init__(f"{what}: {why}\nhint: {fix}")


class SetupError(IsolationError):
    """A step of container setup failed: `<step>: <target>: <cause>` then `hint: <fix>`."""

    def __init__(self, step: str, target: str, err: int | None, message: str, hint: str = ""):
        self.step = step
        self.target = target
        self.errno = err
        self.message = message
        self.hint = hint
        cause = message
        if err:
            cause = f"{message} ({_errno.errorcode.get(err, err)}: {os.strerror(err)})"
        text = f"{step}: {target}: {cause}"
        if hint:
            text += f"\nhint: {hint}"
        super().__init__(text)

    def to_frame(self) -> dict:
        return {
            "t": "setup_error", "step": self.step, "target": self.target,
            "errno": self.errno, "message": self.message, "hint": self.hint,
        }

    @classmethod
    def from_frame(cls, frame: dict) -> SetupError:
        return cls(frame["step"], frame["target"], frame.get("errno"), frame["message"],
                   frame.get("hint", ""))


class ImageError(IsolationError):
    """An image (or one entry of it) is malformed, hostile or does not match its digest."""

    def __init__(self, image: str, entry: str | None, why: str, fix: str = ""):
        self.image = image
        self.entry = entry
        self.why = why
        self.fix = fix
        where = f": entry {entry!r}" if entry else ""
        text = f"image {image}{where}: {why}"
        if fix:
            text += f"\nhint: {fix}"
        super().__init__(text)


# Hints for the errno values that setup steps commonly hit, keyed by (step, errno).
_HINTS = {
    ("unshare", _errno.EPERM): "run as root, or allow unprivileged user namespaces "
    "(sysctl kernel.unprivileged_userns_clone=1; on Ubuntu "
    "kernel.apparmor_restrict_unprivileged_userns=0)",
    ("unshare", _errno.ENOSPC): "the user namespace limit is reached: raise "
    "user.max_user_namespaces (sysctl -w user.max_user_namespaces=15000)",
    ("unshare", _errno.EINVAL): "this kernel lacks the namespace type "
    "(see `python -m pytest_isolate check`)",
    ("mount overlay", _errno.EINVAL): "overlayfs refused the layers; rootless overlay needs "
    "Linux >= 5.11 (see `python -m pytest_isolate check`)",
    ("mount overlay", _errno.ENODEV): "load the overlay module: modprobe overlay",
    ("mount proc", _errno.EPERM): "a fresh /proc is refused when the host's /proc has paths "
    "mounted over it (as in many containers); run on a host or a VM, or as root",
}


# Hints for errno values whose fix is the same whatever step hit them: host limits.
_ERRNO_HINTS = {
    _errno.EMFILE: "raise this process's open-file limit (ulimit -n 65536 before pytest, or "
    "resource.setrlimit(resource.RLIMIT_NOFILE, ...) in conftest.py), or find what leaks "
    "files (ls -l /proc/<pid>/fd)",
    _errno.ENFILE: "the whole system is out of open files: raise fs.file-max "
    "(sysctl -w fs.file-max=...), or find the process that holds them",
    # The container's writable layers are on a tmpfs of its own, which has no size cap; only
    # --isolate-keep puts them on the host, in /dev/shm.
    _errno.ENOSPC: "a filesystem is full: with --isolate-keep the container's writes go to "
    "/dev/shm/pytest-isolate-keep-<uid> on the host (df -h /dev/shm): free space there, or "
    "keep less (--isolate-keep=failed or never)",
}


def hint_for(step: str, err: int | None) -> str:
    return _HINTS.get((step, err)) or _ERRNO_HINTS.get(err or 0, "")


def open_files_text() -> str:
    """How many files this process has open, against its soft RLIMIT_NOFILE."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    try:
        n = str(len(os.listdir("/proc/self/fd")) - 1)  # not listdir's own
    except OSError:  # EMFILE itself: no fd left to list them with
        n = "all"
    return f"{n} files open, RLIMIT_NOFILE soft limit {soft}"


def host_limit_error(step: str, e: OSError) -> SetupError | None:
    """A SetupError for an OSError that says the calling process ran out of something
    (open files), or None: the step and its fix, not a traceback of the launcher."""
    if e.errno == _errno.EMFILE:
        return SetupError(step, f"this process ({open_files_text()})", e.errno,
                          "no file descriptor left",
                          hint_for(step, e.errno))
    if e.errno == _errno.ENFILE:
        return SetupError(step, "the system", e.errno, "no file descriptor left",
                          hint_for(step, e.errno))
    return None
