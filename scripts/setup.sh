#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for pytest-isolate: system packages, the project with its
# test extras, and an interpreter that user `nobody` can run for the rootless lane.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
if command -v apt-get >/dev/null; then
  $SUDO apt-get update -qq
  # util-linux: setpriv/unshare; bubblewrap: the benchmark baseline; busybox-static: test images;
  # user-mode-linux + kmod: the cgroup v2 lane and its modules; python3-venv: the rootless
  # interpreter; graphviz: the docs' pictures (dot).
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    util-linux bubblewrap busybox-static user-mode-linux kmod python3-venv iproute2 \
    graphviz >/dev/null
fi

python -m pip install -q --disable-pip-version-check -e '.[test,docs,dev]'

# pyenv's Python lives under /root (mode 700): `nobody` needs one it can read.
if [ "$(id -u)" = 0 ]; then
  venv=/opt/pytest-isolate/rootless-venv
  if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    'pytest>=8.4' pluggy pyroute2 filelock pytest-xdist pytest-cov
  # The oldest pytest we support, for the pytest 8.4 lane and bench/per_test_overhead.py
  # (pytest-forked 1.7.5, its baseline, is broken on pytest 9).
  old=/opt/pytest-isolate/pytest84
  if [ ! -x "$old/bin/python" ]; then
    python -m venv "$old"
  fi
  "$old/bin/python" -m pip install -q --disable-pip-version-check 'pytest==8.4.2' pluggy \
    pyroute2 filelock pytest-xdist 'pytest-forked==1.7.5' pytest-cov
  "$old/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e .
  # A suite written by others, for the lane that runs it with and without --isolate=all.
  python -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
    -d /opt/pytest-isolate/real-suite 'six==1.17.0'
  chmod -R a+rX /opt/pytest-isolate
fi
echo "setup done: $(python -m pytest_isolate check | tail -1)"
