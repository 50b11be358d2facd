"""Fixtures for users' tests.

Rule: fixtures are thin; the work is in runtime/ and runner.py. Whatever a fixture creates
is gone when its test ends, whatever the outcome.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest

from .runtime.spec import Spec


@dataclass(frozen=True)
class Isolation:
    """What an isolated test runs with: the container's spec and where each value came from."""

    spec: Spec
    sources: dict[str, str]

    @property
    def resources(self):
        return self.spec.resources

    @property
    def ip(self) -> str | None:
        """network="veth": this container's address on eth0 (else None)."""
        return os.environ.get("PYTEST_ISOLATE_IP")

    @property
    def host_ip(self) -> str | None:
        """network="veth": the host side of the link, where servers of wider-scoped fixtures
        (which run on the host) are reachable; else None."""
        return os.environ.get("PYTEST_ISOLATE_HOST_IP")


@pytest.fixture
def isolation(request: pytest.FixtureRequest) -> Isolation:
    """Inside an isolated test: its settings. Outside one: the test is skipped, saying so."""
    from .runner import ACTIVE_KEY

    active = request.node.stash.get(ACTIVE_KEY, None)
    if active is None:
        pytest.skip("the isolation fixture is only available in isolated tests "
                    "(mark the test @pytest.mark.isolated or run with --isolate=all)")
    return Isolation(spec=active.spec, sources=dict(active.sources))


LINKS_KEY = pytest.StashKey[list]()


def capture_dir(node: pytest.Item) -> str:
    """Where a test's packet captures go: kept only when it fails (its report names them)."""
    import re
    import tempfile

    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", node.nodeid)[-120:]
    d = os.path.join(tempfile.gettempdir(), f"pytest-isolate-captures-{os.geteuid()}",
                     f"{safe}-{os.getpid()}")
    try:
        os.makedirs(d, exist_ok=True)
    except OSError:  # uid 0 of a rootless container, where the host root's directory is seen
        d = tempfile.mkdtemp(prefix=f"pytest-isolate-captures-{safe}-")
    return d


def _tracked(node: pytest.Item, links) -> None:
    links.capture_dir = capture_dir(node)
    node.stash.setdefault(LINKS_KEY, []).append(links)


def _untrack(node: pytest.Item, links) -> None:
    links.close()
    if links.capture_dir and os.path.isdir(links.capture_dir):
        with contextlib.suppress(OSError):
            os.rmdir(links.capture_dir)  # empty unless a failed test's captures are kept
            parent = os.path.dirname(links.capture_dir)
            if os.path.basename(parent).startswith("pytest-isolate-captures-"):
                os.rmdir(parent)


@pytest.fixture
def veth_pair(request: pytest.FixtureRequest) -> Iterator:
    """Two network namespaces, `a` and `b`, joined by one veth link (eth0 on each side, with
    addresses `a.ip`, `a.ip6`, `b.ip`, `b.ip6`). `with veth_pair.a:` moves the current thread
    into a (root); `a.socket()`, `a.run([...])`, `a.spawn([...])` work as root and rootless;
    `impair(delay="50ms")` shapes both ends, `impair(a_to_b=..., b_to_a=...)` each way;
    `partition()`/`heal()`, `link_down()`/`link_up()`, `flap(seconds)`, `set_mtu(n)`;
    `capture("a")` records a pcap, named in the report when the test fails."""
    from .runtime.network import VethPair

    pair = VethPair()
    _tracked(request.node, pair)
    try:
        yield pair
    finally:
        _untrack(request.node, pair)


@pytest.fixture
def network(request: pytest.FixtureRequest) -> Iterator[Callable]:
    """Factory: `net = network(3, names=["client", "web", "db"])` makes a bridge and three
    member namespaces (`net[0]`...) with IPv4 and IPv6 addresses from one subnet, and an
    /etc/hosts naming them for programs run in them; `net.impair(net[1], delay="20ms")`
    impairs a member's link both ways (`outbound=`, `inbound=` each way);
    `net.partition([0], [1, 2])` and `heal()`; `link_down(i)`, `flap(i, seconds)`,
    `capture(i)`; `net.route_to(other)` joins two networks through a router;
    `containers.start(network=net)` puts a container on it (root). Every network made is
    removed when the test ends."""
    from .runtime import syscalls
    from .runtime.network import Network, Pod

    made: list = []
    # Rootless, one pod for all of the test's networks: only then can a router join them.
    pods = [] if syscalls.host_root() else [Pod()]

    def make(members: int = 2, ipv6: bool | None = None, names=None,
             spare: int = 2) -> Network:
        net = Network(members, ipv6=ipv6, names=names, spare=spare,
                      pod=pods[0] if pods else None)
        _tracked(request.node, net)
        made.append(net)
        return net

    try:
        yield make
    finally:
        for net in reversed(made):
            _untrack(request.node, net)
        for pod in pods:
            pod.close()


CONTAINERS_KEY = pytest.StashKey[list]()


class Containers:
    """The `containers` fixture: `start(image=None, **spec fields)` returns a running
    `Container`; all of them stop when the test ends."""

    def __init__(self, node: pytest.Item) -> None:
        self._node = node
        self.started: list = []
        node.stash[CONTAINERS_KEY] = self.started

    def start(self, image: str | None = None, *, cpu: float | None = None,
              memory: int | str | None = None, pids: int | None = None,
              timeout: float | None = None, network: object = "none",
              hostname: str = "isolated", env: dict[str, str] | None = None,
              mounts: dict[str, str] | None = None, workdir: str | None = None,
              seccomp: object = "default", privileged: bool = False,
              cap_add: Sequence[str] = (), cap_drop: Sequence[str] = ()):
        """A running container (see `pytest_isolate.runtime.live.Container`). `image`: a
        directory, `docker export` tarball, OCI layout or `docker save` archive (None: the
        host root, copy-on-write); `mounts`: {host path: path inside}, read-only;
        `network`: "none", "host", "veth", or a Network from the `network` fixture (the
        container becomes a member, named by `hostname`, root only);
        `seccomp`, `privileged`, `cap_add`, `cap_drop`: its confinement, as the marker's."""
        from .runtime.live import Container
        from .runtime.spec import Resources

        if hasattr(network, "attach"):  # a Network: the container joins it as a member
            network = network.attach(None if hostname == "isolated" else hostname)
        spec = Spec(image=image, hostname=hostname, network=network, env=dict(env or {}),
                    workdir=workdir, mounts=dict(mounts or {}),
                    resources=Resources(cpu=cpu, memory=memory, pids=pids, timeout=timeout),
                    seccomp=seccomp, privileged=privileged, cap_add=cap_add, cap_drop=cap_drop)
        container = Container(spec)
        self.started.append(container)
        return container

    def stop_all(self) -> None:
        for container in reversed(self.started):
            container.stop(grace=2)


@pytest.fixture
def containers(request: pytest.FixtureRequest) -> Iterator[Containers]:
    """Factory of long-lived containers for one test; their logs join a failed test's report."""
    factory = Containers(request.node)
    yield factory
    factory.stop_all()


@pytest.fixture
def container(containers: Containers):
    """One container of the host root (copy-on-write), started for this test."""
    return containers.start()
