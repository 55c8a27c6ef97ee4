"""Raters you can trust (issue 10): identity that holds, leases that follow attention, honest
timing -- and the five attacks that were measured against the old app, each refused or contained.

Sessions run against a real SQLite store with a clock the test moves, so people's timing (a rater
who answers in seconds, walks away, closes the tab) is played out without waiting for it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from prefloop.apps.rating import RaterSession
from prefloop.cli import main as cli_main
from prefloop.envs.clips import CLIP_MIME
from prefloop.identity import IdentityError, hash_secret, invite, name_skeleton, normalize_rater_name, sign_in
from prefloop.rundir import store_of_run_folder
from prefloop.store import PreferenceStore, sqlite_url
from prefloop.types import Choice, SegmentPair

from conftest import RATED_GUIDELINE, RatedStore, app_served_on_loopback, cartpole_segments

SEGMENT_LENGTH = 20
FPS = 10.0  # every clip plays 2 s at 1x


class Clock:
    """Unix seconds that only move when the test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[PreferenceStore]:
    """A store of 12 pairs with (tiny stand-in) clips of 2 s each: the queue logic never decodes them."""
    with PreferenceStore(sqlite_url(tmp_path / "prefs.sqlite"), "run", clock=clock) as opened:
        opened.set_meta("render_fps", str(FPS))
        segs = cartpole_segments(13, segment_length=SEGMENT_LENGTH)
        opened.add_pairs([SegmentPair(a, b) for a, b in zip(segs, segs[1:])])
        for seg in segs:
            opened.put_clip(seg.id, f"clip {seg.id}".encode(), CLIP_MIME)
        yield opened


def session(store: PreferenceStore, clock: Clock, rater: str, **kwargs) -> RaterSession:
    opened = RaterSession(store, rater, lease_seconds=30.0, clock=clock, **kwargs)
    opened.refresh()
    return opened


def answer(seq: int, pair_id: int, choice: str = "left", seconds: float = 3.0) -> dict:
    return {"seq": seq, "type": "answer", "pair_id": pair_id, "choice": choice, "response_time_s": seconds}


# -- names ---------------------------------------------------------------------------------------


def test_names_are_nfkc_one_script_and_look_alikes_collide() -> None:
    assert normalize_rater_name("  Ａda   Ｌovelace ") == "Ada Lovelace"  # full-width letters: NFKC
    assert normalize_rater_name("Зоя") == "Зоя" and normalize_rater_name("李小龙") == "李小龙"
    with pytest.raises(IdentityError, match="Cyrillic, Latin"):
        normalize_rater_name("\u0430lice")  # Cyrillic a + Latin lice
    assert name_skeleton("\u0430\u04cf\u0456\u0441\u0435") == name_skeleton("Alice.") == "alice"


def test_attack_look_alike_names_are_refused(store: PreferenceStore) -> None:
    """Attack 5: a Cyrillic "аlice" (or "Alice.") passed as a second rater that looks identical."""
    alice = sign_in(store, "alice", None)
    for look_alike in ("\u0430lice", "\u0430\u04cf\u0456\u0441\u0435", "Alice", "alice."):
        with pytest.raises(IdentityError, match="(look|alphabets)"):
            sign_in(store, look_alike, None)
    assert [r["name"] for r in store.raters()] == ["alice"] and alice.issued_key


def test_attack_markdown_names_render_as_plain_text(rated_store: RatedStore) -> None:
    """Attack 5b: a rater named ``__bold__`` rendered bold; now the page escapes it."""
    with app_served_on_loopback():
        at = AppTest.from_function(_app, args=(["--db-url", rated_store.url, "--run-name", rated_store.run_name],),
                                   default_timeout=30)
        at.query_params.update(rater="__bold__")
        at.run()
        assert r"Not \_\_bold\_\_?" in [b.label for b in at.button]  # shown as typed, never bold
        assert RATED_GUIDELINE in "\n".join(m.value for m in at.markdown)


def _app(argv: list[str]) -> None:
    from prefloop.apps.rater_app import main

    main(argv)


# -- per-rater secrets -----------------------------------------------------------------------------


def test_a_name_belongs_to_whoever_holds_its_key(store: PreferenceStore) -> None:
    first = sign_in(store, "alice", None)
    assert first.issued_key and store.rater("alice")["secret_hash"] == hash_secret(first.issued_key)
    assert sign_in(store, "alice", first.issued_key).issued_key is None  # the same browser, reloaded
    for wrong in (None, "", "guess", first.issued_key + "x", 12):
        with pytest.raises(IdentityError, match="already taken"):
            sign_in(store, "alice", wrong)
    with pytest.raises(IdentityError, match="invitation"):
        sign_in(store, "bob", None, open_enrolment=False)


def test_raters_add_prints_a_link_and_stores_only_its_hash(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    url, run = store_of_run_folder(run_dir)
    PreferenceStore(url, run).close()
    assert cli_main(["raters", "add", "alice", "--run-dir", str(run_dir), "--url", "http://rate.example:8501"]) == 0
    link = capsys.readouterr().out.strip()
    assert link.startswith("http://rate.example:8501/?rater=alice&key=")
    secret = link.rsplit("key=", 1)[1]
    for path in run_dir.iterdir():  # the secret is in the link only: not in the store, not in its journal
        assert secret.encode() not in path.read_bytes(), path
    with PreferenceStore(url, run) as store:
        assert sign_in(store, "alice", secret).name == "alice"
    assert cli_main(["raters", "add", "alice", "--run-dir", str(run_dir)]) == 2  # taken: one clear line
    assert "--new-link" in capsys.readouterr().err
    assert cli_main(["raters", "add", "alice", "--run-dir", str(run_dir), "--new-link"]) == 0
    new_secret = capsys.readouterr().out.strip().rsplit("key=", 1)[1]
    with PreferenceStore(url, run) as store:
        with pytest.raises(IdentityError):
            sign_in(store, "alice", secret)  # the old link stopped working
        assert sign_in(store, "alice", new_secret).name == "alice"
    assert cli_main(["raters", "list", "--run-dir", str(run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"name": "alice", "registered": True, "onboarded": False, "labels": 0, "flags": {}}]


def test_attack_undo_reaches_only_the_sessions_own_answers(store: PreferenceStore, clock: Clock) -> None:
    """Attack 1: another browser pressing Undo six times retracted five of alice's labels. Without
    alice's key it cannot be alice at all (above); even alice's own second tab undoes only what that
    tab answered."""
    alice = session(store, clock, "alice")
    for seq in range(1, 6):
        clock.advance(4)
        alice.apply([answer(seq, alice.current.pair_id)])
    assert len(store.labels(rater_id="alice")) == 5

    second_tab = session(store, clock, "alice")
    for seq in range(1, 7):
        second_tab.apply([{"seq": seq, "type": "undo"}])
    assert len(store.labels(rater_id="alice")) == 5  # nothing of the first tab's was touched
    assert "no answers on this page" in second_tab.take_notices()[-1].text

    alice.apply([{"seq": 6, "type": "undo"}])  # the tab that answered can take back its latest
    assert len(store.labels(rater_id="alice")) == 4


# -- leases that follow attention ------------------------------------------------------------------


def test_a_closed_tab_releases_its_pairs_within_the_lease(store: PreferenceStore, clock: Clock) -> None:
    alice = session(store, clock, "alice")
    held = {alice.current.pair_id, alice.next.pair_id}
    for _ in range(10):  # the open page's heartbeat keeps them for as long as it beats
        clock.advance(7.5)
        alice.heartbeat()
    bob = session(store, clock, "bob")
    assert not held & {bob.current.pair_id, bob.next.pair_id}
    clock.advance(30.0)  # alice's tab closed: no more heartbeats; 30 s later the pairs are free
    carol = session(store, clock, "carol", prefetch=False)
    dave = session(store, clock, "dave", prefetch=False)
    assert {carol.current.pair_id, dave.current.pair_id} == held


def test_attack_ten_idle_tabs_do_not_starve_a_rater_or_the_trainer(store: PreferenceStore, clock: Clock) -> None:
    """Attack 2: ten idle sessions doing nothing but the keep-alive held every pair for minutes."""
    idle = [session(store, clock, f"idle{i}") for i in range(10)]
    real = session(store, clock, "real")
    assert real.current is not None or store.counts()["claimed"] == 12
    # Two minutes of nothing but heartbeats: every idle session pauses and lets go.
    for _ in range(17):
        clock.advance(7.5)
        for tab in idle:
            tab.heartbeat()
    assert all(tab.paused and tab.current is None and tab.next is None for tab in idle)
    for tab in idle:  # paused tabs claim nothing new, also when pairs are free
        assert not tab.heartbeat() and tab.current is None
    real = session(store, clock, "real2")
    answered = 0
    while real.current is not None and answered < 12:  # the real rater can label every pair
        clock.advance(3)
        answered += 1
        real.apply([answer(answered, real.current.pair_id)])
    assert answered == 12 and store.counts()["answered"] == 12  # a waiting trainer gets all its labels


# -- honest timing ---------------------------------------------------------------------------------


def test_response_time_is_bounded_by_the_servers_clock(store: PreferenceStore, clock: Clock) -> None:
    alice = session(store, clock, "alice")
    first, second = alice.current.pair_id, alice.next.pair_id
    clock.advance(0.8)
    alice.apply([answer(1, first, seconds=3.0)])  # the browser claims 3 s; the server saw 0.8 s
    clock.advance(5.0)
    alice.apply([answer(2, second, seconds=4.0)])  # 4 s claimed, 5 s seen: the claim stands
    times = {label.pair_id: label.response_time_s for label in store.labels()}
    assert times == pytest.approx({first: 0.8, second: 4.0})
    flags = store.label_flags()
    ids = {label.pair_id: label.id for label in store.labels()}
    assert flags[ids[first]] == pytest.approx({"too_fast": 0.8, "time_cut": 3.0})  # < half of a 2 s clip
    assert ids[second] not in flags


def test_answers_sent_together_share_the_time_between_them(store: PreferenceStore, clock: Clock) -> None:
    """Answers are given one after another: two arriving in one message cannot both claim the
    whole time since the first was served."""
    alice = session(store, clock, "alice")
    first, second = alice.current.pair_id, alice.next.pair_id
    clock.advance(5.0)
    alice.apply([answer(1, first, seconds=3.0), answer(2, second, seconds=3.0)])
    times = [label.response_time_s for label in store.labels()]
    assert times == [3.0, 2.0] and sum(times) <= 5.0


def test_attack_a_burst_of_answers_is_limited_and_flagged(store: PreferenceStore, clock: Clock) -> None:
    """Attack 3: one tab stored 300 labels in 58 s, each claiming 3 s. Now the server's clock
    bounds each time, answers faster than the clips are flagged, and the rate limit refuses the
    burst -- refused answers are not stored and their pairs stay on screen."""
    tab = session(store, clock, "burst", max_answers_per_minute=30)
    sent = 0
    for step in range(300):
        clock.advance(58.0 / 300)
        if tab.current is None:
            break
        sent += 1
        tab.apply([answer(sent, tab.current.pair_id, seconds=3.0)])
    labels = store.labels(rater_id="burst")
    assert 0 < len(labels) <= 12  # (12 pairs exist; the limit would stop it at 30 per minute)
    assert sum(l.response_time_s for l in labels) <= 58.0
    flags = store.label_flags()
    assert all(flags[l.id].get("too_fast") is not None for l in labels)  # all flagged, all kept
    assert all(flags[l.id]["time_cut"] == 3.0 for l in labels)


def test_the_rate_limit_refuses_answers_beyond_it(store: PreferenceStore, clock: Clock) -> None:
    tab = session(store, clock, "quick", max_answers_per_minute=3)
    for seq in range(1, 6):
        clock.advance(2.0)
        tab.apply([answer(seq, tab.current.pair_id)])
    assert len(store.labels()) == 3
    assert "more than 3 answers in a minute" in tab.take_notices()[-1].text
    clock.advance(60.0)  # a minute later the rater may answer again
    tab.apply([answer(6, tab.current.pair_id)])
    assert len(store.labels()) == 4


def test_attack_a_rater_answering_left_to_everything_is_contained(store: PreferenceStore, clock: Clock) -> None:
    """Attack 4: a rater answering "left" to everything is noticed only in the gold percentage.
    Their answers stay (flags are data), each too fast to have watched the clips is flagged, and
    the flags and per-rater counts are in the store for the dashboard, `raters list` and the loss."""
    from prefloop.cli_raters import rater_summary

    clicker = session(store, clock, "clicker")
    careful = session(store, clock, "careful")
    for seq in range(1, 5):
        clock.advance(0.3)
        clicker.apply([answer(seq, clicker.current.pair_id, "left", seconds=2.5)])
    for seq in range(1, 5):
        clock.advance(2.7)
        careful.apply([answer(seq, careful.current.pair_id, "right", seconds=2.5)])
    rows = {row["name"]: row for row in rater_summary(store)}
    assert rows["clicker"]["labels"] == rows["careful"]["labels"] == 4
    assert rows["clicker"]["flags"] == {"time_cut": 4, "too_fast": 4}
    assert rows["careful"]["flags"] == {}


def test_flagging_checks_its_input(store: PreferenceStore, clock: Clock) -> None:
    from prefloop.store import StoreError

    alice = session(store, clock, "alice")
    clock.advance(3)
    alice.apply([answer(1, alice.current.pair_id)])
    (label,) = store.labels()
    with pytest.raises(StoreError, match="not a label"):
        store.flag_label(10_000, "too_fast")
    with pytest.raises(StoreError, match="short printable"):
        store.flag_label(label.id, "x" * 40)
    store.flag_label(label.id, "reviewed")
    store.flag_label(label.id, "reviewed", 2.0)  # the first value stays
    assert store.label_flags() == {label.id: {"reviewed": None}}


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
