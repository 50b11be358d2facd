"""The bookkeeping of cgroups made and removed by the zygote (cgroups/spares.py), and the
zygote's side of it (zygote._chores), without the kernel: fake drivers and a tmp tree."""

from __future__ import annotations

import pytest

from pytest_isolate.runtime.cgroups import spares
from pytest_isolate.runtime.warm import zygote

CAPS = (None, None, 64)


class FakeDriver:
    cpu, memory, pids = CAPS

    def __init__(self, name: str, reusable: bool = False):
        self.name = name
        self.destroyed = False
        self.reusable = reusable

    def recycle(self):
        return self.reusable

    def plan_ahead(self):
        return [f"/cg/{self.name}"], [(f"/cg/{self.name}/pids.max", "64")]

    def directories(self):
        return [f"/cg/{self.name}"]

    def destroy(self):
        self.destroyed = True


@pytest.fixture
def fresh(monkeypatch):
    made = []

    def open_cgroup(cpu, memory, pids):
        made.append(FakeDriver(f"pti-1-{len(made)}"))
        return made[-1]

    monkeypatch.setattr(spares, "open_cgroup", open_cgroup)
    for name in ("_spares", "_retired", "_in_flight", "_unanswered", "_reused"):
        monkeypatch.setattr(spares, name, type(getattr(spares, name))())
    monkeypatch.setattr(spares, "_settle", None)
    return made


def test_a_spare_the_zygote_made_is_claimed_and_the_next_is_asked_for(fresh):
    work, done = spares.chores(*CAPS)
    assert work == {"mkdir": ["/cg/pti-1-0"], "write": [["/cg/pti-1-0/pids.max", "64"]],
                    "rmdir": []}
    assert spares.chores(*CAPS)[0]["mkdir"] == ["/cg/pti-1-1"]  # none is ready yet
    done({"busy": [], "error": None})
    assert spares.claim(*CAPS) is fresh[0]


def test_the_next_spare_is_the_sibling_of_the_cgroup_just_claimed(fresh):
    # Planned from the claimed cgroup (same parents and caps, a new name), not found again.
    claimed = FakeDriver("pti-1-7")
    claimed.sibling = lambda: FakeDriver("pti-1-8")
    work, _ = spares.chores(*CAPS, like=claimed)
    assert work["mkdir"] == ["/cg/pti-1-8"] and fresh == []


def test_a_failed_chore_leaves_the_claim_to_make_its_own(fresh):
    _, done = spares.chores(*CAPS)
    done({"busy": [], "error": "/cg/pti-1-0/pids.max: No such file or directory"})
    assert fresh[0].destroyed and spares._spares == {}


def test_unanswered_chores_are_removed_at_flush(fresh):
    _, done = spares.chores(*CAPS)
    done(None)  # the zygote died: it may have made the cgroup
    assert not fresh[0].destroyed
    spares.flush()
    assert fresh[0].destroyed


def test_flush_asks_for_the_answer_in_flight_first(fresh, monkeypatch):
    _, done = spares.chores(*CAPS)
    monkeypatch.setattr(spares, "_settle", lambda: done({"busy": [], "error": None}))
    spares.flush()
    assert fresh[0].destroyed and spares._in_flight == [] and spares._spares == {}


def test_removals_still_busy_are_sent_again(fresh):
    old, gone = FakeDriver("pti-1-8"), FakeDriver("pti-1-9")
    spares._retired.extend([old, gone])
    work, done = spares.chores(None, None, None)  # uncapped: removals only
    assert work == {"mkdir": [], "write": [], "rmdir": ["/cg/pti-1-8", "/cg/pti-1-9"]}
    done({"busy": ["/cg/pti-1-8"], "error": None})
    assert spares._retired == [old]
    assert spares.chores(None, None, None)[0]["rmdir"] == ["/cg/pti-1-8"]


def test_nothing_to_do_sends_nothing(fresh):
    assert spares.chores(None, None, None) == (None, None)


def test_the_zygote_does_the_chores_and_undoes_a_half_made_cgroup(tmp_path):
    busy = tmp_path / "busy"
    (busy / "child").mkdir(parents=True)  # not empty: rmdir fails as on a cgroup in use
    gone = tmp_path / "gone"
    gone.mkdir()
    (tmp_path / "new").mkdir()
    ok = zygote._chores({"rmdir": [str(busy), str(gone), str(tmp_path / "never")],
                         "mkdir": [str(tmp_path / "new/a")],
                         "write": [[str(tmp_path / "new/a/f"), "64"]]})
    assert ok == {"busy": [str(busy)], "error": "{}: No such file or directory".format(
        tmp_path / "new/a/f")}  # O_CREAT is not used: cgroup files exist or the step fails
    assert not (tmp_path / "new/a").exists() and not gone.exists()
    (tmp_path / "new/b").mkdir()
    (tmp_path / "new/b/f").write_text("")
    ok = zygote._chores({"mkdir": [], "write": [[str(tmp_path / "new/b/f"), "64"]],
                         "rmdir": []})
    assert ok == {"busy": [], "error": None}
    assert (tmp_path / "new/b/f").read_text() == "64"


def test_an_ended_cgroup_as_good_as_new_is_the_next_spare_and_no_chore_is_sent(fresh):
    ended = FakeDriver("pti-1-5", reusable=True)
    spares.retire(ended)
    assert spares.chores(*CAPS) == (None, None)  # nothing to make, nothing to remove
    assert spares.claim(*CAPS) is ended


def test_an_ended_cgroup_is_removed_when_it_cannot_be_reused_or_a_spare_is_there(fresh):
    spares.retire(FakeDriver("pti-1-5", reusable=False))
    spares.retire(FakeDriver("pti-1-6", reusable=True))
    spares.retire(FakeDriver("pti-1-7", reusable=True))  # pti-1-6 is the spare already
    work, _ = spares.chores(*CAPS)
    assert work == {"mkdir": [], "write": [], "rmdir": ["/cg/pti-1-5", "/cg/pti-1-7"]}
    assert spares.claim(*CAPS).name == "pti-1-6"


def test_a_spare_made_while_an_ended_one_was_reused_is_removed_later(fresh):
    _, done = spares.chores(*CAPS)  # the zygote is making pti-1-0 ...
    spares.retire(FakeDriver("pti-1-5", reusable=True))  # ... and an ended one is ready
    done({"busy": [], "error": None})
    assert spares.claim(*CAPS).name == "pti-1-5"
    assert not fresh[0].destroyed  # not removed by this process at the take: by chores
    assert spares.chores(*CAPS)[0]["rmdir"] == ["/cg/pti-1-0"]


def test_while_ended_cgroups_are_reused_none_is_made_ahead_and_after_a_failure_one_is(fresh):
    # Without going ahead the cgroup in use is claimed again as soon as it ended: a spare
    # made meanwhile would only be removed again.
    spares.retire(FakeDriver("pti-1-5", reusable=True))
    assert spares.claim(*CAPS).name == "pti-1-5"
    assert spares.chores(*CAPS) == (None, None)
    spares.retire(FakeDriver("pti-1-5", reusable=False))  # it hit its cap, say
    work, _ = spares.chores(*CAPS)
    assert work["mkdir"] == ["/cg/pti-1-0"] and work["rmdir"] == ["/cg/pti-1-5"]


def test_after_flush_a_spare_is_made_ahead_again(fresh):
    spares.retire(FakeDriver("pti-1-5", reusable=True))
    spares.flush()  # nothing is left to come back
    assert spares.chores(*CAPS)[0]["mkdir"] == ["/cg/pti-1-0"]
