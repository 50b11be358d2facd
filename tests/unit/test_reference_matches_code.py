"""The reference pages name exactly what the code has: marker arguments, options, ini keys,
fixtures, CLI commands and flags, report properties, public runtime names."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from pytest_isolate import settings

REPO = Path(__file__).resolve().parents[2]
REF = REPO / "docs" / "reference"


def _section(page: str, heading: str) -> str:
    text = (REF / page).read_text()
    start = text.index(heading)
    nxt = text.find("\n## ", start + len(heading))
    return text[start:nxt if nxt > 0 else None]


def _first_column(table: str) -> set[str]:
    return {m for line in table.splitlines() if line.startswith("| `")
            for m in re.findall(r"`([^`]+)`", line.split("|")[1])}


def test_every_marker_argument_is_documented_and_nothing_else():
    table = _section("plugin.md", "## Marker")
    assert _first_column(table) == set(settings.MARKER_ARGS)


def test_every_option_and_ini_key_is_documented_and_nothing_else():
    out = subprocess.run([sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"],
                         capture_output=True, text=True, cwd=REPO, check=True).stdout
    options = set(re.findall(r"(--isolate[a-z-]*)", out))
    inis = set(re.findall(r"^  (isolate_[a-z0-9_]+) \(", out, re.M))
    text = _section("plugin.md", "## Options and ini keys")
    documented = set(re.findall(r"`(--isolate[a-z-]*)", text))
    documented_ini = set(re.findall(r"`(isolate_[a-z0-9_]+)", text))
    assert documented == options
    assert documented_ini == inis


def test_every_fixture_is_documented():
    tree = ast.parse((REPO / "pytest_isolate" / "fixtures.py").read_text())
    fixtures = {f.name for f in tree.body if isinstance(f, ast.FunctionDef)
                and any("fixture" in ast.unparse(d) for d in f.decorator_list)}
    text = (REF / "plugin.md").read_text() + (REF / "containers.md").read_text()
    named = set(re.findall(r"[Ff]ixtures? `(\w+)`(?: and `(\w+)`)?", text))
    documented = {n for pair in named for n in pair if n}
    assert fixtures <= documented, fixtures - documented


def test_every_cli_command_and_run_flag_is_documented():
    main = subprocess.run([sys.executable, "-m", "pytest_isolate", "--help"],
                          capture_output=True, text=True, check=True).stdout
    commands = set(re.search(r"\{([a-z,]+)\}", main).group(1).split(","))
    text = (REF / "cli.md").read_text()
    assert {c for c in commands if f"`{c}" in text} == commands
    run = subprocess.run([sys.executable, "-m", "pytest_isolate", "run", "--help"],
                         capture_output=True, text=True, check=True).stdout
    flags = set(re.findall(r"(--[a-z][a-z-]+)", run)) - {"--help"}
    assert {f for f in flags if f in text} == flags, flags - {f for f in flags if f in text}


def test_every_report_property_is_documented():
    from pytest_isolate import reporting
    from pytest_isolate.runtime import Result, Spec
    from pytest_isolate.runtime.cgroups.files import CgroupStats

    stats = CgroupStats(cpu_seconds=1.0, throttled_seconds=0.0, memory_peak=1)
    names = {k for k, _ in reporting.properties(Result(stats=stats), Spec())}
    text = _section("plugin.md", "## Report properties")
    assert set(re.findall(r"`(isolate_[a-z_]+)`", text)) == names


def test_every_public_runtime_name_is_documented():
    import pytest_isolate.runtime as rt

    text = (REF / "runtime.md").read_text()
    missing = [n for n in rt.__all__ if f"`{n}" not in text and f"{n}(" not in text]
    assert not missing, missing
