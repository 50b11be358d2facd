"""`python -m pytest_isolate run|check|cleanup`: a thin shell over the runtime."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from .runtime import IsolationError, Resources, SetupError, Spec, SpecError
from .runtime.api import start_command
from .runtime.spec import format_size


def _cmd_run(args: argparse.Namespace) -> int:
    argv = list(args.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    spec_image = None
    if args.image:
        from .runtime.api import resolve_image

        spec_image, image = resolve_image(Spec(image=os.path.abspath(args.image)))
        argv = argv or list(image.cmd)  # the image's Entrypoint + Cmd, as docker run does
    if not argv:
        print("pytest-isolate run: no command given (usage: run [options] -- CMD ...)",
              file=sys.stderr)
        return 2
    env = {}
    for item in args.env or []:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"pytest-isolate run: --env {item!r}: expected NAME=VALUE", file=sys.stderr)
            return 2
        env[key] = value
    if spec_image is not None:
        env = {**spec_image.env, **env}
    spec = Spec(hostname=args.hostname, network=args.network, rootfs=args.rootfs, env=env,
                workdir=args.workdir or (spec_image.workdir if spec_image else None),
                layers=spec_image.layers if spec_image else (),
                resources=Resources(cpu=args.cpu, memory=args.memory, pids=args.pids,
                                    timeout=args.timeout),
                seccomp=_seccomp(args.seccomp, args.seccomp_action),
                privileged=args.privileged, cap_add=_names(args.cap_add),
                cap_drop=_names(args.cap_drop))
    proc = start_command(spec, argv)  # stdin/stdout/stderr pass straight through
    try:
        result = proc.communicate()
    except KeyboardInterrupt:
        return 130
    if args.stats:
        print(format_stats(result), file=sys.stderr)
    if result.timed_out:
        print(f"pytest-isolate run: timeout {args.timeout}s exceeded: every process of the "
              "container was killed", file=sys.stderr)
    if result.signal == signal.SIGSYS:
        print("pytest-isolate run: killed by seccomp (SIGSYS): the program made a call the "
              "container's filter denies with --seccomp-action=kill", file=sys.stderr)
    if result.signal is not None:
        return 128 + result.signal
    return result.returncode


def _seccomp(value: str, action: str) -> object:
    """--seccomp default|off|NAME,... and --seccomp-action, as Spec.seccomp takes them."""
    if value in ("default", "off") and action == "errno":
        return value
    if value in ("default", "off"):
        return {"profile": value, "action": action}
    return {"deny": _names([value]), "action": action}


def _names(values: list[str] | None) -> tuple[str, ...]:
    """Repeated or comma-separated names: --cap-add SYS_PTRACE,NET_ADMIN --cap-add MKNOD."""
    return tuple(n.strip() for v in values or () for n in v.split(",") if n.strip())


def format_stats(result) -> str:
    s = result.stats
    cpu = "-" if s.cpu_seconds is None else f"{s.cpu_seconds:.3f}s"
    thr = "-" if s.throttled_seconds is None else \
        f"{s.throttled_seconds:.3f}s in {s.throttled_periods} periods"
    hits = [name for name, hit in (("oom-kill", result.oom_killed),
                                   ("pids", result.pids_limited),
                                   ("timeout", result.timed_out),
                                   ("seccomp", result.signal == signal.SIGSYS)) if hit]
    return (f"stats: cpu {cpu}, throttled {thr}, memory peak {format_size(s.memory_peak)}, "
            f"caps hit: {', '.join(hits) or 'none'}")


def _cmd_check(args: argparse.Namespace) -> int:
    from .runtime import probe

    features = probe.check()
    width = max(len(f.name) for f in features)
    missing = 0
    for f in features:
        mark = "ok  " if f.ok else "MISS"
        print(f"{mark}  {f.name:<{width}}  {f.detail}")
        if not f.ok:
            missing += 1
            if f.fix:
                print(f"      {'':<{width}}  fix: {f.fix}")
    print(f"\n{len(features) - missing} of {len(features)} available")
    return 0


def _cmd_cleanup(args: argparse.Namespace) -> int:
    from .runtime.host import state

    removed = state.cleanup_stale()
    for item in removed:
        print(f"removed {item}")
    print(f"{len(removed)} leftover(s) of dead runs removed")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pytest_isolate",
                                description="Run commands in lightweight Linux containers.")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a command in a container",
                       usage="%(prog)s [options] -- CMD [ARG ...]")
    r.add_argument("--hostname", default="isolated")
    r.add_argument("--network", default="none",
                   help="none (only lo), veth (eth0 linked to the host; root) or host")
    r.add_argument("--rootfs", help="a directory to use as root (default: the host's, CoW)")
    r.add_argument("--image", help="an image: a directory, a `docker export` tarball, an OCI "
                   "layout or a `docker save` archive (unpacked once into the cache); without "
                   "CMD, the image's own command runs")
    r.add_argument("--workdir", help="working directory inside the container")
    r.add_argument("--env", action="append", metavar="NAME=VALUE")
    r.add_argument("--cpu", type=float, help="CPUs, e.g. 0.5")
    r.add_argument("--memory", help="bytes or a size like 64M")
    r.add_argument("--pids", type=int, help="most processes at once")
    r.add_argument("--timeout", type=float, help="seconds; then every process is killed")
    r.add_argument("--seccomp", default="default", metavar="PROFILE",
                   help="default (the calls Docker's default profile denies fail with "
                        "EPERM), off, or NAME[,NAME...]: these calls denied besides")
    r.add_argument("--seccomp-action", default="errno", choices=("errno", "kill"),
                   help="what a denied call gets: EPERM (default), or SIGSYS, which kills")
    r.add_argument("--privileged", action="store_true",
                   help="full host root: every capability, no seccomp filter")
    r.add_argument("--cap-add", action="append", metavar="CAP",
                   help="capabilities kept besides the default set (repeat, or CAP,CAP)")
    r.add_argument("--cap-drop", action="append", metavar="CAP",
                   help="capabilities of the default set dropped too")
    r.add_argument("--stats", action="store_true",
                   help="print CPU time, throttling, peak memory and cap hits to stderr")
    r.add_argument("command", nargs=argparse.REMAINDER)
    r.set_defaults(func=_cmd_run)
    c = sub.add_parser("check", help="what this host supports, with the fix for what is missing")
    c.set_defaults(func=_cmd_check)
    k = sub.add_parser("cleanup", help="remove leftovers of dead runs")
    k.set_defaults(func=_cmd_cleanup)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpecError as e:
        print(f"pytest-isolate {args.cmd}: --{e.field.replace('_', '-')}: {e}", file=sys.stderr)
        return 2
    except SetupError as e:
        print(f"pytest-isolate {args.cmd}: {e}", file=sys.stderr)
        return 127 if e.step == "exec" else 125  # 127: command not found, as shells say
    except IsolationError as e:
        print(f"pytest-isolate {args.cmd}: {e}", file=sys.stderr)
        return 125
    finally:
        sys.stdout.flush()


if __name__ == "__main__":  # pragma: no cover
    os._exit(main())
