"""The confinement as data: capability masks, seccomp arguments and the BPF program."""

from __future__ import annotations

import struct

import pytest

from pytest_isolate.runtime import Spec, SpecError, validate
from pytest_isolate.runtime.confine import policy


def _insns(program: bytes) -> list[tuple[int, int, int, int]]:
    return [struct.unpack("=HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]


def test_the_default_set_is_dockers_without_mknod_plus_net_admin_in_an_own_netns():
    caps = policy.confinement(machine="x86_64").caps
    names = {n for n, bit in policy.CAPABILITIES.items() if caps >> bit & 1}
    assert names == set(policy.DEFAULT_CAPS) | {"NET_ADMIN"}
    assert "MKNOD" not in names and "SYS_ADMIN" not in names
    host_net = policy.confinement(own_netns=False, machine="x86_64").caps
    assert not host_net >> policy.CAPABILITIES["NET_ADMIN"] & 1


def test_cap_add_and_drop_and_privileged():
    c = policy.confinement(cap_add=("MKNOD",), cap_drop=("CHOWN",), machine="x86_64")
    assert c.caps >> 27 & 1 and not c.caps & 1
    p = policy.confinement(privileged=True, machine="x86_64")
    assert p.caps is None and p.program == b""
    kept = policy.confinement(privileged=True, seccomp=["socket"], machine="x86_64")
    assert kept.denied == ("socket",)


def test_the_filter_checks_the_architecture_then_denies_each_call_with_eperm():
    c = policy.confinement(machine="x86_64")
    insns = _insns(c.program)
    assert insns[0] == (0x20, 0, 0, 4) and insns[1][3] == policy.AUDIT_ARCH["x86_64"]
    assert insns[-2] == (0x06, 0, 0, policy.SECCOMP_RET_ALLOW)
    assert insns[-1] == (0x06, 0, 0, policy.SECCOMP_RET_ERRNO | 1)
    compares = [i for i in insns if i[0] == 0x15][1:]  # after the arch compare
    table = policy.syscall_table("x86_64")
    assert sorted(i[3] for i in compares) == sorted(table[n] for n in c.denied)
    for code, jt, jf, nr in compares:  # every match lands on the deny return
        assert insns.index((code, jt, jf, nr)) + 1 + jt == len(insns) - 1
    assert {"finit_module", "kexec_load", "clock_settime", "reboot", "keyctl", "bpf",
            "perf_event_open", "userfaultfd", "open_by_handle_at", "swapon"} <= set(c.denied)
    kill = policy.confinement(seccomp={"deny": ["ptrace"], "action": "kill"}, machine="aarch64")
    assert _insns(kill.program)[-1][3] == policy.SECCOMP_RET_TRAP  # reported, then SIGSYS
    assert "ptrace" in kill.denied and policy.syscall_table("aarch64")["ptrace"] == 117


@pytest.mark.parametrize(("field", "value", "said"), [
    ("seccomp", {"deny": ["ptrac"]}, "did you mean 'ptrace'"),
    ("seccomp", {"deny": ["ptrace"], "action": "trap"}, '"errno" or "kill"'),
    ("seccomp", "strict", '"default", "off"'),
    ("cap_add", ["NET_ADMN"], "did you mean 'NET_ADMIN'"),
    ("cap_drop", [3], "a list of capability names"),
    ("privileged", "yes", "True or False"),
])
def test_bad_confinement_values_are_spec_errors_naming_the_value(field, value, said):
    with pytest.raises(SpecError, match=said) as info:
        validate(Spec(**{field: value}))
    assert info.value.field == field and info.value.value == value


def test_capability_names_are_normalised():
    assert validate(Spec(cap_add=["cap_net_admin"])).cap_add == ("NET_ADMIN",)
