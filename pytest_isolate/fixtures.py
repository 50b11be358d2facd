"""Fixtures for users' tests.

Rule: fixtures are thin; the work is in runtime/ and runner.py. Whatever a fixture creates
is gone when its test ends, whatever the outcome.
"""

from __future__ import annotations

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


@pytest.fixture
def veth_pair() -> Iterator:
    """Two network namespaces, `a` and `b`, joined by one veth link (eth0 on each side, with
    addresses `a.ip` and `b.ip`). `with veth_pair.a:` moves the current thread into a (root);
    `a.socket()`, `a.run([...])`, `a.spawn([...])` work as root and rootless;
    `veth_pair.impair(delay="50ms", loss=0.05)` shapes both ends, `a.impair(...)` one."""
    from .runtime.network import VethPair

    with VethPair() as pair:
        yield pair


@pytest.fixture
def network() -> Iterator[Callable]:
    """Factory: `net = network(3)` makes a bridge and three member namespaces (`net[0]`...)
    with addresses from one subnet; `net.impair(net[1], delay="20ms")` impairs a member's link
    both ways. Every network made is removed when the test ends."""
    from .runtime.network import Network

    made: list[Network] = []

    def make(members: int = 2) -> Network:
        net = Network(members)
        made.append(net)
        return net

    yield make
    for net in reversed(made):
        net.close()


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
              timeout: float | None = None, network: str = "none",
              hostname: str = "isolated", env: dict[str, str] | None = None,
              mounts: dict[str, str] | None = None, workdir: str | None = None,
              seccomp: object = "default", privileged: bool = False,
              cap_add: Sequence[str] = (), cap_drop: Sequence[str] = ()):
        """A running container (see `pytest_isolate.runtime.live.Container`). `image`: a
        directory, `docker export` tarball, OCI layout or `docker save` archive (None: the
        host root, copy-on-write); `mounts`: {host path: path inside}, read-only;
        `seccomp`, `privileged`, `cap_add`, `cap_drop`: its confinement, as the marker's."""
        from .runtime.live import Container
        from .runtime.spec import Resources

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
