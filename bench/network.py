"""Network setup cost against baselines measured in the same run.

    python bench/network.py [--runs 100]

Prints medians (ms) of:
- VethPair() + close(): two namespaces, a veth created in place, IPv4 and IPv6 addresses, lo up
- VethPair(ipv6=False) + close(): the same, IPv4 only
- Network(3) + close(): a bridge namespace and three members
- an impairment change on one end (netem where the kernel has it, else a tbf rate change),
  and a per-direction change (both ends, each its own)
- partition() and heal() of a pair, each; a link down and up; an MTU change
- the same impairment change, partition and heal on a rootless pair (a pod: the calls go to
  its agent), and a socket made in a namespace of each
- run(Spec(network="veth"), noop) beside run(Spec(), noop): what a link to the host adds
and, as baselines, the same pair built with pyroute2's IPRoute objects (the obvious way with
the library) and with iproute2 commands (`ip netns add`, `ip link add ... netns`, as in the
seed notes). Rows alternate round by round so that drift hits every row alike. Root only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_isolate.runtime import Spec, run
from pytest_isolate.runtime.network import Network, VethPair, probe_netem
from pytest_isolate.runtime.network.netns import entered, new_netns_fd


def pair_ours() -> None:
    VethPair().close()


def network3() -> None:
    Network(3).close()


def pair_iproute() -> None:
    """The same pair with pyroute2's IPRoute objects, one per namespace."""
    from pyroute2 import IPRoute

    a, b = new_netns_fd(), new_netns_fd()
    try:
        with entered(a), IPRoute() as ipr:
            ipr.link("add", ifname="eth0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": b})
            idx = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=idx, address="198.18.255.1", prefixlen=30)
            ipr.link("set", index=idx, state="up")
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        with entered(b), IPRoute() as ipr:
            idx = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=idx, address="198.18.255.2", prefixlen=30)
            ipr.link("set", index=idx, state="up")
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    finally:
        os.close(a)
        os.close(b)


def pair_ip_commands() -> None:
    tag = f"ptibench{os.getpid()}"
    a, b = f"{tag}a", f"{tag}b"
    cmds = [["ip", "netns", "add", a], ["ip", "netns", "add", b],
            ["ip", "-n", a, "link", "add", "eth0", "type", "veth", "peer", "eth0", "netns", b],
            ["ip", "-n", a, "addr", "add", "198.18.255.5/30", "dev", "eth0"],
            ["ip", "-n", b, "addr", "add", "198.18.255.6/30", "dev", "eth0"],
            *(["ip", "-n", ns, "link", "set", d, "up"] for ns in (a, b) for d in ("eth0", "lo"))]
    try:
        for c in cmds:
            subprocess.run(c, check=True)
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)


def noop() -> None:
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/network.py: run as root (a link to the host needs it)", file=sys.stderr)
        return 2
    netem = probe_netem() is None
    pair = VethPair()
    change = [0]

    def impair_change() -> None:
        change[0] ^= 1
        if netem:
            pair.a.impair(delay="1ms" if change[0] else "2ms")
        else:
            pair.a.impair(rate="100mbit" if change[0] else "200mbit")

    def impair_each_way() -> None:
        change[0] ^= 1
        key = "delay" if netem else "rate"
        one, two = ("1ms", "2ms") if netem else ("100mbit", "200mbit")
        pair.impair(a_to_b={key: one if change[0] else two},
                    b_to_a={key: two if change[0] else one})

    def mtu_change() -> None:
        change[0] ^= 1
        pair.set_mtu(1400 if change[0] else 1500)

    def link_bounce() -> None:
        pair.link_down()
        pair.link_up()

    pod_pair = VethPair(rootless=True)

    def pod_impair() -> None:
        change[0] ^= 1
        pod_pair.a.impair(rate="100mbit" if change[0] else "200mbit")

    def pod_socket() -> None:
        pod_pair.a.socket().close()

    def root_socket() -> None:
        pair.a.socket().close()

    rows = {
        "VethPair() + close()": pair_ours,
        "VethPair(ipv6=False) + close()": lambda: VethPair(ipv6=False).close(),
        "baseline: pyroute2 IPRoute pair": pair_iproute,
        "Network(3) + close()": network3,
        f"impairment change ({'netem' if netem else 'tbf rate; no netem here'})": impair_change,
        "impairment change, each way its own": impair_each_way,
        "partition()": pair.partition,
        "heal()": pair.heal,
        "link_down() + link_up()": link_bounce,
        "set_mtu() (both ends)": mtu_change,
        "a socket in a namespace": root_socket,
        "rootless pair: impairment change (tbf rate)": pod_impair,
        "rootless pair: partition()": pod_pair.partition,
        "rootless pair: heal()": pod_pair.heal,
        "rootless pair: a socket in a namespace": pod_socket,
        "run(Spec(), noop)": lambda: run(Spec(), noop).unwrap(),
        'run(Spec(network="veth"), noop)': lambda: run(Spec(network="veth"), noop).unwrap(),
    }
    if shutil.which("ip"):
        rows["baseline: ip netns/link commands"] = pair_ip_commands
    alone = []  # back to back, nothing else tearing namespaces down in the background
    for _ in range(5 + args.runs):
        t = time.perf_counter()
        pair_ours()
        alone.append((time.perf_counter() - t) * 1e3)
    samples: dict[str, list[float]] = {k: [] for k in rows}
    try:
        for _ in range(5):
            for fn in rows.values():
                fn()
        for _ in range(args.runs):
            for name, fn in rows.items():
                t = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t) * 1e3)
    finally:
        with contextlib.suppress(Exception):
            pair.close()
        with contextlib.suppress(Exception):
            pod_pair.close()
    med = {k: statistics.median(v) for k, v in samples.items()}
    base = med["VethPair() + close()"]
    print(f"{'row':48} {'median ms':>10} {'vs VethPair':>12}")
    for name, m in med.items():
        print(f"{name:48} {m:10.2f} {m / base:11.2f}x")
    print(f"{'VethPair() + close(), back to back':48} {statistics.median(alone[5:]):10.2f}")
    extra = med['run(Spec(network="veth"), noop)'] - med["run(Spec(), noop)"]
    print(f"a link to the host adds {extra:.2f} ms to a container")
    return 0


if __name__ == "__main__":
    sys.exit(main())
