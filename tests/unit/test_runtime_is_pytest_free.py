import subprocess
import sys


def test_runtime_never_imports_pytest():
    code = ("import sys, pytest_isolate.runtime, pytest_isolate.runtime.api,"
            " pytest_isolate.runtime.live;"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pytest', '_pytest'));"
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_runtime_does_not_import_pyroute2_on_the_hot_path():
    code = ("import sys, pytest_isolate.runtime;"
            "sys.exit(1 if 'pyroute2' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_every_public_name_resolves_lazily():
    import pytest_isolate
    import pytest_isolate.runtime as rt

    assert sorted(rt.__all__) == sorted(rt._HOME)
    for name in rt.__all__:
        module = sys.modules.get(f"pytest_isolate.runtime.{rt._HOME[name]}") or __import__(
            f"pytest_isolate.runtime.{rt._HOME[name]}", fromlist=[name])
        assert getattr(rt, name) is getattr(module, name), name
    assert pytest_isolate.run is rt.run and pytest_isolate.Spec is rt.Spec


def test_the_zygote_imports_only_what_it_needs():
    # Its start-up is on the path to the first warm container (runtime/warm/pool.py).
    repo = str(__import__("pathlib").Path(__file__).resolve().parents[2])
    code = (f"import sys; sys.path.insert(0, {repo!r}); import pytest_isolate.runtime.warm.zygote;"
            "heavy = {'typing', 'dataclasses', 'inspect', 'ctypes.util', 'platform',"
            " 'pytest_isolate.runtime.api', 'pytest_isolate.runtime.spec'};"
            "print(sorted(heavy & set(sys.modules))); sys.exit(bool(heavy & set(sys.modules)))")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
