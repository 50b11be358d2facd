"""pytest hooks only (entry point `isolate`, so `-p no:isolate` disables the plugin).

The `isolated` marker and its options arrive with the marker work; until then the plugin only
puts one line in the pytest header saying which isolation this host supports.
"""

from __future__ import annotations

import pytest


def pytest_report_header(config: pytest.Config) -> str:
    from .runtime import probe

    return f"isolate: {probe.summary_line()}"
