"""Every private pytest API this plugin touches, in one place (tested on pytest 8.4 and 9.x).

Rule: nothing else imports from `_pytest`; when pytest changes, this is the file to fix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from _pytest.runner import CallInfo, call_and_report
from _pytest.skipping import evaluate_skip_marks, evaluate_xfail_marks, xfailed_key

__all__ = ["CallInfo", "call_and_report", "drop_request", "get_reraise_exceptions",
           "has_report_sections", "prepare_wider_fixtures", "reset_request", "setup_state",
           "skip_reason", "store_xfail", "teardown_item_only", "teardown_needed",
           "wider_setup_needed"]


def get_reraise_exceptions(config: pytest.Config) -> tuple[type[BaseException], ...]:
    """What CallInfo must let through, as pytest's call_and_report decides (8.4 inlines it)."""
    reraise: tuple[type[BaseException], ...] = (pytest.exit.Exception,)
    if not config.getoption("usepdb", False):
        reraise += (KeyboardInterrupt,)
    return reraise


def setup_state(item: pytest.Item) -> Any:
    return item.session._setupstate


def skip_reason(item: pytest.Item) -> str | None:
    """The reason of a skip/skipif mark that applies, else None (evaluated as pytest does)."""
    skipped = evaluate_skip_marks(item)
    return skipped.reason if skipped else None


def store_xfail(item: pytest.Item) -> None:
    """Evaluate xfail marks into the item's stash, so that reports made in this process for a
    test that ran elsewhere become xfailed as pytest's own would."""
    item.stash[xfailed_key] = evaluate_xfail_marks(item)


def teardown_item_only(item: pytest.Item) -> Callable[[], None]:
    """In the container: make teardown pop only the item (its function-scoped fixtures); the
    collectors and wider fixtures belong to the pytest process. Returns the undo."""
    state = setup_state(item)
    original = state.teardown_exact

    def teardown_exact(nextitem: pytest.Item | None) -> None:
        original(item.parent)  # keep everything up to the item's parent on the stack

    state.teardown_exact = teardown_exact
    return lambda: setattr(state, "teardown_exact", original)


def wider_setup_needed(item: pytest.Item) -> bool:
    """Whether prepare_wider_fixtures may run anything for the item: a collector of its chain
    is not set up yet, or it uses a fixture wider than function scope (set up or reused: only
    pytest's own lookup can tell). When not, the caller can skip capturing around it."""
    if list(setup_state(item).stack) != item.parent.listchain():
        return True
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    for name in item.fixturenames:
        defs = info.name2fixturedefs.get(name)
        if defs and defs[-1].scope != "function":
            return True
    return False


def teardown_needed(item: pytest.Item, nextitem: pytest.Item | None) -> bool:
    """Whether SetupState.teardown_exact(nextitem) would tear anything down (its own test)."""
    stack = setup_state(item).stack
    needed = nextitem.listchain() if nextitem is not None else []
    return bool(stack) and list(stack) != needed[:len(stack)]


def has_report_sections(item: pytest.Item) -> bool:
    """Whether output captured in this process waits to go into the item's next report."""
    return bool(getattr(item, "_report_sections", None))


def prepare_wider_fixtures(item: pytest.Item) -> None:
    """Set up the item's collectors and its fixtures of wider than function scope here, in
    the pytest process, so every container inherits them instead of creating its own."""
    setup_state(item).setup(item.parent)
    request = getattr(item, "_request", None)
    info = getattr(item, "_fixtureinfo", None)
    if not request or info is None:
        return
    state = setup_state(item)
    active = getattr(state, "is_node_active", None)
    if active is not None:
        # pytest >= 9.1 treats a lookup for an item that is not on the setup stack as one made
        # during teardown (deprecated); here the item is being set up, its collectors only.
        state.is_node_active = lambda node: node is item or active(node)
    try:
        for name in item.fixturenames:  # already ordered by scope, widest first
            defs = info.name2fixturedefs.get(name)
            if defs and defs[-1].scope != "function":
                request.getfixturevalue(name)
    finally:
        if active is not None:
            del state.is_node_active


def reset_request(item: pytest.Item) -> None:
    """As pytest's runtestprotocol: a re-run item needs a fresh request; a finished one drops
    its fixture values."""
    if hasattr(item, "_request") and not item._request:
        item._initrequest()


def drop_request(item: pytest.Item) -> None:
    if hasattr(item, "_request"):
        item._request = False
        item.funcargs = None
