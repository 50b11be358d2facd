import pytest

from pytest_isolate.runtime import Resources, Spec, SpecError, TimeOffsets, parse_size, validate
from pytest_isolate.runtime.spec import MEMORY_FLOOR, format_size


@pytest.mark.parametrize(("text", "expected"), [
    ("64M", 64 * 1024**2), ("1.5G", int(1.5 * 1024**3)), ("512k", 512 * 1024),
    ("100", 100), (4096, 4096), ("2GiB", 2 * 1024**3), (" 8 M ", 8 * 1024**2),
])
def test_parse_size_accepts_units_of_1024(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["lots", "", "-5M", "1.2.3G", True, None, [1]])
def test_parse_size_rejects_what_is_not_a_size(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def test_format_size_is_readable():
    assert format_size(64 * 1024**2) == "64M"
    assert format_size(int(1.5 * 1024**3)) == "1.5G"
    assert format_size(None) == "-"


def test_validate_normalises_memory_and_rootfs(tmp_path):
    spec = validate(Spec(rootfs=str(tmp_path / "."), resources=Resources(memory="64M")))
    assert spec.resources.memory == 64 * 1024**2
    assert spec.rootfs == str(tmp_path)


@pytest.mark.parametrize(("spec", "field", "value"), [
    (Spec(hostname="h" * 65), "hostname", "h" * 65),
    (Spec(hostname=""), "hostname", ""),
    (Spec(network="bridge"), "network", "bridge"),
    (Spec(rootfs="/nonexistent/rootfs"), "rootfs", "/nonexistent/rootfs"),
    (Spec(env={"A=B": "x"}), "env", "A=B"),
    (Spec(workdir="relative"), "workdir", "relative"),
    (Spec(resources=Resources(cpu=0)), "cpu", 0),
    (Spec(resources=Resources(cpu=-1)), "cpu", -1),
    (Spec(resources=Resources(cpu=float("nan"))), "cpu", None),
    (Spec(resources=Resources(memory="lots")), "memory", "lots"),
    (Spec(resources=Resources(memory=100)), "memory", 100),
    (Spec(resources=Resources(pids=0)), "pids", 0),
    (Spec(resources=Resources(pids=True)), "pids", True),
    (Spec(resources=Resources(timeout=-5)), "timeout", -5),
    (Spec(resources=Resources(timeout=0)), "timeout", 0),
    (Spec(time_offsets=TimeOffsets(monotonic="1d")), "time_offsets.monotonic", "1d"),
])
def test_bad_values_raise_spec_error_naming_field_and_value(spec, field, value):
    with pytest.raises(SpecError) as info:
        validate(spec)
    assert info.value.field == field
    if value is not None:
        assert info.value.value == value
        assert repr(value) in str(info.value)
    assert "expected" in str(info.value)


def test_memory_below_floor_names_the_floor():
    with pytest.raises(SpecError, match=str(MEMORY_FLOOR)):
        validate(Spec(resources=Resources(memory=100)))


def test_spec_error_names_its_source():
    err = SpecError("memory", "lots", "bytes or a size like 64M", source="marker")
    assert str(err) == "memory='lots' from marker: expected bytes or a size like 64M"


def test_spec_is_frozen():
    with pytest.raises(AttributeError):
        Spec().hostname = "x"  # type: ignore[misc]


def test_a_spec_validated_again_gives_the_same_answer_without_a_stale_one(tmp_path):
    spec = Spec(resources=Resources(memory="64M"))
    first = validate(spec)
    assert validate(spec) is first  # remembered: nothing in it can change
    with_env = Spec(env={})
    validate(with_env)
    with_env.env["A=B"] = "x"  # type: ignore[index]  # a mapping changed in place
    with pytest.raises(SpecError, match="A=B"):
        validate(with_env)
    root = tmp_path / "root"
    root.mkdir()
    on_disk = Spec(rootfs=str(root))
    validate(on_disk)
    root.rmdir()  # the filesystem is asked again every time
    with pytest.raises(SpecError, match="rootfs"):
        validate(on_disk)
