#!/usr/bin/env bash
# Packaging check: build the sdist and the wheel, install the wheel into a fresh venv (no
# checkout on its path), and run an isolated test and the CLI from there.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
python -m build -q --outdir "$out/dist" . >/dev/null
ls "$out"/dist/*.tar.gz "$out"/dist/*.whl >/dev/null
python -m venv "$out/venv"
"$out/venv/bin/pip" install -q --disable-pip-version-check "$out"/dist/*.whl
mkdir "$out/suite"
cat > "$out/suite/test_smoke.py" <<'PY'
import os

import pytest


@pytest.mark.isolated(memory="64M", hostname="smoke")
def test_runs_in_a_container():
    assert os.getpid() == 2 and os.uname().nodename == "smoke"
PY
cd "$out/suite"
"$out/venv/bin/python" -c "import pytest_isolate, importlib.metadata as m; \
assert m.version('pytest-isolate-ns') == pytest_isolate.__version__; \
import pathlib; assert (pathlib.Path(pytest_isolate.__file__).parent / 'py.typed').exists()"
"$out/venv/bin/python" -m pytest_isolate run --hostname box -- hostname | grep -qx box
"$out/venv/bin/python" -m pytest -q -p no:cacheprovider test_smoke.py
echo "wheel smoke test passed: $(ls "$out"/dist)"
