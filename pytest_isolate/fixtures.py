"""Fixtures for users' tests.

Rule: fixtures are thin; the work is in runtime/ and runner.py.
"""

from __future__ import annotations

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


@pytest.fixture
def isolation(request: pytest.FixtureRequest) -> Isolation:
    """Inside an isolated test: its settings. Outside one: the test is skipped, saying so."""
    from .runner import ACTIVE_KEY

    active = request.node.stash.get(ACTIVE_KEY, None)
    if active is None:
        pytest.skip("the isolation fixture is only available in isolated tests "
                    "(mark the test @pytest.mark.isolated or run with --isolate=all)")
    return Isolation(spec=active.spec, sources=dict(active.sources))
