import pytest

from tests.conftest import require_caps, require_containers


@pytest.fixture(autouse=True)
def _needs_containers():
    require_containers()


@pytest.fixture
def caps_ok():
    require_caps()
