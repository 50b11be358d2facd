"""A tour of the runtime API: `python examples/runtime_demo.py` (as root or not)."""

import os
import socket

from pytest_isolate.runtime import Spec, run, run_command


def inside() -> dict:
    with open("/etc/hosts", "a") as f:  # lands in the container's upper layer only
        f.write("10.0.0.1 demo\n")
    return {
        "pid": os.getpid(),
        "parent pid": os.getppid(),
        "hostname": socket.gethostname(),
        "processes visible": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "network links": sorted(os.listdir("/sys/class/net")),
        "uid": os.getuid(),
    }


def main() -> None:
    with open("/etc/hosts") as f:
        hosts_before = f.read()
    result = run(Spec(hostname="demo-box"), inside)
    for key, value in result.unwrap().items():
        print(f"  {key:<18} {value}")
    with open("/etc/hosts") as f:
        assert f.read() == hosts_before, "the host's /etc/hosts changed"
    print("  host /etc/hosts    untouched")
    cmd = run_command(Spec(), ["sh", "-c", "echo $$; hostname"])
    print(f"  a shell's pid and hostname inside: {cmd.stdout.decode().split()}")
    print("demo passed")


if __name__ == "__main__":
    main()
