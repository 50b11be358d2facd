import subprocess
import sys


def test_runtime_never_imports_pytest():
    code = ("import sys, pytest_isolate.runtime, pytest_isolate.runtime.container;"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pytest', '_pytest'));"
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_runtime_does_not_import_pyroute2_on_the_hot_path():
    code = ("import sys, pytest_isolate.runtime;"
            "sys.exit(1 if 'pyroute2' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
