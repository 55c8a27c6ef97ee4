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
from conftest import (
    RATED_GUIDELINE,
    RatedStore,
    app_served_on_loopback,
    cartpole_segments,
)
from prefloop.apps.rating import RaterSession
from prefloop.envs.clips import CLIP_MIME
from streamlit.testing.v1 import AppTest

from prefloop.cli.main import main as cli_main
from prefloop.store import PreferenceStore, sqlite_url
from prefloop.store.identity import (
    IdentityError,
    hash_secret,
    name_skeleton,
    normalize_rater_name,
    sign_in,
)
from prefloop.training.rundir import store_of_run_folder
from prefloop.types import Choice, SegmentPair

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


def test_unicodes_full_confusables_table_catches_look_alikes_a_short_list_misses(store: PreferenceStore) -> None:
    """Single-script look-alikes (so the one-alphabet rule passes them) that only Unicode's full
    table (UTS #39, ~9,600 characters) knows: Latin alpha, Lisu and Cherokee capitals, a dotless i."""
    from prefloop.store.identity import confusable_classes

    assert len(confusable_classes()) > 5000  # the full table, not a hand-made list
    for name in ("ɑlice", "ꓮlice", "Ꭺlice", "alıce"):
        assert name_skeleton(name) == "alice", name
    assert name_skeleton("Bob") != name_skeleton("Rob") and name_skeleton("ann") != name_skeleton("anm")
    sign_in(store, "alice", None)
    with pytest.raises(IdentityError, match="look"):
        sign_in(store, "ɑlice", None)
    assert [r["name"] for r in store.raters()] == ["alice"]


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
        {"name": "alice", "registered": True, "onboarded": False, "labels": 0, "flags": {},
         "checks": 0, "checks_right": 0, "repeats": 0, "repeats_same": 0, "gets": "labels",
         "error_rate": None, "unreliable": None}]


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
    # Two and a half minutes of nothing but heartbeats: every idle session pauses and lets go (a
    # tab that was still waiting for pairs gets some of those let go, and 30 s to answer them).
    for _ in range(22):
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
    segments = store.get_segments(list(range(1, 14)))
    store.add_pairs([SegmentPair(a, b) for a, b in zip(segments, segments[2:] + segments[:2])] * 3)  # 51 pairs in all
    tab = session(store, clock, "burst", max_answers_per_minute=30)
    for sent in range(1, 301):
        clock.advance(58.0 / 300)
        tab.apply([answer(sent, tab.current.pair_id, seconds=3.0)])
    labels = store.labels(rater_id="burst")
    assert len(labels) == 30  # the rate limit: 30 in the minute, the other 270 refused (not stored)
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
    from prefloop.cli.raters import rater_summary

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


# -- agreement, consistency, fatigue and cost (dashboard) ----------------------------------------------


def lab(pair: int, rater: str, choice: Choice, t: float, rt: float = 2.0, label_id: int | None = None):
    from prefloop.types import Label

    return Label(pair_id=pair, rater_id=rater, choice=choice, response_time_s=rt, created_at=t, id=label_id)


def test_krippendorffs_alpha_matches_the_published_example() -> None:
    from prefloop.apps.rater_quality import krippendorff_alpha, pair_alpha

    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", nominal example: 0.743.
    units = [[1, 1, 1], [2, 2, 3, 2], [3, 3, 3, 3], [3, 3, 3, 3], [2, 2, 2, 2], [1, 2, 3, 4], [4, 4, 4, 4],
             [1, 1, 2, 1], [2, 2, 2, 2], [5, 5, 5], [1, 1], [3]]
    assert krippendorff_alpha(units) == pytest.approx(0.743, abs=5e-4)
    L, R = Choice.LEFT, Choice.RIGHT
    agreeing = [lab(p, r, L if p % 2 else R, p) for p in range(1, 7) for r in ("a", "b")]
    assert pair_alpha(agreeing) == pytest.approx(1.0)
    contrary = [lab(p, "a", L if p % 2 else R, p) for p in range(1, 7)] + [lab(p, "b", R if p % 2 else L, p) for p in range(1, 7)]
    assert pair_alpha(contrary) < 0 and pair_alpha([lab(1, "a", L, 0)]) is None


def test_self_consistency_counts_repeats_in_either_orientation() -> None:
    from prefloop.apps.rater_quality import self_consistency

    segments = {1: (10, 11), 2: (11, 10), 3: (10, 11), 4: (12, 13)}
    labels = [lab(1, "ann", Choice.LEFT, 0), lab(2, "ann", Choice.RIGHT, 1),  # the same preference, swapped
              lab(1, "bo", Choice.LEFT, 0), lab(3, "bo", Choice.RIGHT, 1), lab(4, "bo", Choice.LEFT, 2)]
    rows = {c.rater_id: c for c in self_consistency(labels, segments)}
    assert (rows["ann"].repeats, rows["ann"].share) == (1, 1.0)
    assert (rows["bo"].repeats, rows["bo"].share) == (1, 0.0)


def test_fatigue_shows_drift_over_the_latest_session() -> None:
    from prefloop.apps.rater_quality import fatigue

    gold = {p: Choice.LEFT for p in range(100)}
    steady = [lab(p, "steady", Choice.LEFT, 100.0 * p, rt=3.0) for p in range(12)]
    tiring = [lab(p, "tiring", Choice.LEFT if p < 6 else Choice.RIGHT, 100.0 * p, rt=3.0 if p < 6 else 0.8)
              for p in range(12)]
    rows = {f.rater_id: f for f in fatigue(steady + tiring, gold)}
    assert rows["steady"].time_ratio == 1.0 and rows["steady"].gold_change == 0.0 and not rows["steady"].tired
    assert rows["tiring"].time_ratio < 0.5 and rows["tiring"].gold_change == -1.0 and rows["tiring"].tired


def test_cost_per_label_and_return_per_hour_and_per_cost() -> None:
    from prefloop.apps.rater_quality import (
        CostSettings,
        cost_summary,
        parse_cost,
        rating_hours,
    )

    # Two sessions of one rater: 10 labels a minute apart (from 60 s before the first), and one
    # label a day later (its 30 s of response time).
    labels = [lab(p, "ann", Choice.LEFT, 60.0 * (p + 1), rt=60.0) for p in range(10)] + [lab(99, "ann", Choice.LEFT, 90_000.0, rt=30.0)]
    assert rating_hours(labels) == pytest.approx((600 + 30) / 3600)
    curve = [{"env_step": 0, "true_return": 20.0}, {"env_step": 1000, "true_return": 120.0}]
    hourly = cost_summary(labels, parse_cost('{"hourly_rate": 36, "currency": "EUR"}'), curve)
    assert hourly.total == pytest.approx(36 * 630 / 3600) and hourly.currency == "EUR"
    assert hourly.per_label == pytest.approx(hourly.total / 11)
    assert hourly.return_gain == 100.0 and hourly.gain_per_hour == pytest.approx(100 / (630 / 3600))
    assert hourly.gain_per_cost == pytest.approx(100 / hourly.total)
    per_label = cost_summary(labels, CostSettings(cost_per_label=0.5), curve)
    assert per_label.total == 5.5 and per_label.gain_per_cost == pytest.approx(100 / 5.5)
    assert cost_summary(labels, None).total is None and parse_cost('{"hourly_rate": -3}') is None


def test_the_dashboard_shows_alpha_flags_and_cost(rated_store: RatedStore, tmp_path: Path) -> None:
    with PreferenceStore(rated_store.url, rated_store.run_name) as store:
        clock = Clock(1_900_000_000.0)
        quick = RaterSession(store, "quick", clock=clock)
        quick.refresh()
        clock.advance(0.2)
        quick.apply([answer(1, quick.current.pair_id, seconds=4.0)])  # too fast, and a cut claim
        store.set_meta("cost", '{"cost_per_label": 0.25}')
        store.set_meta("progress", json.dumps({"status": "training", "curve": [
            {"env_step": 0, "true_return": 10.0}, {"env_step": 100, "true_return": 30.0}]}))
    with app_served_on_loopback():
        at = AppTest.from_function(_app, args=(["--db-url", rated_store.url, "--run-name", rated_store.run_name],),
                                   default_timeout=30)
        at._page_hash = None
        at.run()
        at._page_hash = next(h for h, info in at._registered_pages.items() if info.get("url_pathname") == "dashboard")
        at.run()
        assert not at.exception
        metrics = {m.label: m.value for m in at.metric}
        assert metrics["Total cost"] == "0.25 USD" and metrics["Cost per label"] == "0.250 USD"
        assert metrics["Krippendorff's alpha"] == "–"  # one rater: nothing to agree on yet
        (table,) = [d for d in at.dataframe]
        row = table.value.loc["quick"]
        assert (row["labels"], row["too fast"], row["time cut"]) == (1, 1, 1)


# -- guidelines and breaks ---------------------------------------------------------------------------

HOSTILE_GUIDE = """# How to judge
Prefer the cart whose **pole** stays up longest. <script>window.__pwned = 1</script>
<img src="https://tracker.example/pixel.png" onerror="window.__pwned = 2">
![tracking pixel](https://tracker.example/pixel.gif) and ![local](/etc/passwd)
Read [our site](https://phish.example/login) or <https://phish.example/auto>.

![Left is better: its pole never falls](pair:1)

<iframe src="https://evil.example"></iframe>
"""


def test_the_guideline_page_strips_remote_images_html_and_links() -> None:
    from prefloop.apps.guideline import ExampleBlock, HtmlBlock, render_guideline

    blocks = render_guideline(HOSTILE_GUIDE)
    html = "".join(b.html for b in blocks if isinstance(b, HtmlBlock))
    assert "<strong>pole</strong>" in html and "<h1>How to judge</h1>" in html  # Markdown still works
    for forbidden in ("<script", "<img", "<iframe", "<a "):  # as tags: what a browser would act on
        assert forbidden not in html
    assert "&lt;script&gt;" in html and "tracking pixel" in html and "our site" in html  # shown as text
    assert [b for b in blocks if isinstance(b, ExampleBlock)] == [ExampleBlock(1, "Left is better: its pole never falls")]


def test_raters_guideline_command_and_the_page_above_the_clips(rated_store: RatedStore, tmp_path: Path, capsys) -> None:
    guide = tmp_path / "guide.md"
    guide.write_text(HOSTILE_GUIDE, encoding="utf-8")
    assert cli_main(["raters", "guideline", "--db-url", rated_store.url, "--run-name", rated_store.run_name,
                     "--file", str(guide)]) == 0
    assert "1 example pairs" in capsys.readouterr().out
    with app_served_on_loopback():
        at = AppTest.from_function(_app, args=(["--db-url", rated_store.url, "--run-name", rated_store.run_name],),
                                   default_timeout=30)
        at.query_params.update(rater="reader")
        at.run()
        assert not at.exception
        assert at.markdown[0].value == f"### {RATED_GUIDELINE}"  # the one-line question stays on top
        (fold,) = at.expander
        assert fold.label == "How to judge (guidelines)"
        # The one element allowed a script is the app's own cookie writer (prefloop.apps.rater_key):
        # the guideline's HTML is rendered without JavaScript and holds no active tag.
        scripted = [e.proto.body for e in at.get("html") if e.proto.unsafe_allow_javascript]
        assert all("document.cookie=" in body and "prefloop_rater_" in body for body in scripted)
        html = "".join(e.proto.body for e in at.get("html") if not e.proto.unsafe_allow_javascript)
        assert "<strong>pole</strong>" in html
        assert not any(tag in html for tag in ("<script", "<img", "<iframe", "<a "))
        assert len(at.get("video")) == 2  # the example pair's two clips, from the store


def test_a_break_reminder_after_a_stretch_of_rating(store: PreferenceStore, clock: Clock) -> None:
    alice = session(store, clock, "alice")
    assert not alice.break_due(20 * 60)
    for seq in range(1, 12):
        clock.advance(3.0 if seq < 11 else 20 * 60)
        alice.apply([answer(seq, alice.current.pair_id)])
        if alice.paused:
            alice.resume()
    assert alice.break_due(20 * 60) and not alice.break_due(0)
    alice.keep_going()
    assert not alice.break_due(20 * 60)
    clock.advance(20 * 60)
    assert alice.break_due(20 * 60)
    alice.pause()  # "Take a break": the pairs go back, the stretch starts again afterwards
    assert store.counts()["claimed"] == 0 or all(p is None for p in (alice.current, alice.next))
    alice.resume()
    assert not alice.break_due(20 * 60) and alice.current is not None


# -- onboarding ------------------------------------------------------------------------------------


def test_a_new_rater_practises_on_gold_pairs_and_counts_once_passed(rated_store: RatedStore, capsys) -> None:
    with PreferenceStore(rated_store.url, rated_store.run_name) as store:
        segments = store.get_segments([1, 2, 3, 4])
        gold = [store.add_pairs([SegmentPair(segments[a], segments[b])], gold_choice=choice)[0]
                for a, b, choice in ((0, 1, Choice.LEFT), (1, 2, Choice.RIGHT), (2, 3, Choice.LEFT))]
        store.set_meta("guideline_page", f"![The left pole never falls: that is what counts]({f'pair:{gold[0]}'})")
    assert cli_main(["raters", "onboarding", "--db-url", rated_store.url, "--run-name", rated_store.run_name,
                     "--pairs", "3", "--pass", "2"]) == 0
    assert "practise on 3 gold pairs" in capsys.readouterr().out

    def app(rater: str) -> AppTest:
        at = AppTest.from_function(_app, args=(["--db-url", rated_store.url, "--run-name", rated_store.run_name],),
                                   default_timeout=30)
        at.query_params.update(rater=rater)
        return at.run()

    def press(at: AppTest, label: str) -> AppTest:
        next(b for b in at.button if b.label == label).click()
        return at.run()

    with app_served_on_loopback():
        at = app("newbie")
        assert "Practice first" in "\n".join(c.value for c in at.caption)
        assert not [e for e in at.get("bidi_component")]  # no rating player before passing
        press(at, "Right is better")  # wrong: the left one was better, and the guideline says why
        assert "Not quite: the left clip was better. The left pole never falls" in at.warning[0].value
        press(at, "Next practice pair")
        press(at, "Right is better")
        assert at.success[0].value.startswith("Right: the right clip was better.")
        press(at, "Next practice pair")
        press(at, "Left is better")
        assert any("You passed (2 of 3 right)" in s.value for s in at.success)
        press(at, "Start rating")
        assert [e for e in at.get("bidi_component")]  # now rating for real
        with PreferenceStore(rated_store.url, rated_store.run_name) as store:
            assert store.rater("newbie")["onboarded_at"] is not None
            assert store.labels(rater_id="newbie") == []  # practice answers are never labels

        failing = app("clicker")
        for _ in range(3):
            press(failing, "About the same")
            if any(b.label == "Next practice pair" for b in failing.button):
                press(failing, "Next practice pair")
        assert "0 of 3 right; 2 are needed" in failing.info[-1].value
        press(failing, "Try again")
        assert "Practice pair 1 of 3" in "\n".join(c.value for c in failing.caption)
        with PreferenceStore(rated_store.url, rated_store.run_name) as store:
            assert store.rater("clicker")["onboarded_at"] is None


def test_bench_reports_cost_and_return_per_hour_and_per_cost(tmp_path: Path) -> None:
    from prefloop.bench.report import (
        aggregate,
        cost_rows,
        cost_table,
        plot_return_vs_cost,
    )
    from prefloop.cost import CostSettings

    def row(kind: str, seed: int, ret: float, labels: int = 0, human_s: float = 0.0) -> dict:
        return {"kind": kind, "env_id": "E-v0", "algo": "ppo", "seed": seed, "labels": labels,
                "teacher": "oracle" if kind == "preferences" else None, "query": "uniform" if kind == "preferences" else None,
                "eval_return_mean": ret, "wall_time_s": 10.0, "cpu_time_s": 5.0, "reward_learning_time_s": 1.0,
                "human_time_s": human_s}

    runs = [row("true_reward", s, 100.0) for s in range(3)] + [
        row("preferences", s, 60.0 + 10 * s, labels, human_s=1800.0 * (labels / 100)) for s in range(3) for labels in (100, 200)]
    groups = aggregate(runs, [{"env_id": "E-v0", "seed": s, "return_mean": 10.0} for s in range(3)])
    assert cost_rows(groups, None) == []
    hourly = {r["labels"]: r for r in cost_rows(groups, CostSettings(hourly_rate=20.0, currency="EUR"))}
    # 100 labels: half an hour of a person's time at 20/h = 10; return 70 (median) - 10 (random) = 60 gained
    assert hourly[100]["human_hours"] == 0.5 and hourly[100]["cost"] == 10.0 and hourly[100]["cost_per_label"] == 0.1
    assert hourly[100]["return_gain"] == 60.0 and hourly[100]["per_human_hour"] == 120.0 and hourly[100]["per_cost"] == 6.0
    assert hourly[200]["cost"] == 20.0 and hourly[200]["per_cost"] == 3.0
    per_label = cost_rows(groups, CostSettings(cost_per_label=0.5))
    assert [r["cost"] for r in per_label] == [50.0, 100.0]
    table = cost_table(list(hourly.values()), "EUR")
    assert "| E-v0 | ppo | oracle | uniform | 100 | 0.50 | 10.00 | 0.100 | 60.0 | 120.0 | 6.00 |" in table
    plot_return_vs_cost(list(hourly.values()), "EUR", tmp_path / "return_vs_cost.png")
    assert (tmp_path / "return_vs_cost.png").stat().st_size > 10_000


def test_a_rater_waiting_for_the_trainer_gets_the_new_pairs_but_must_answer_soon(store: PreferenceStore, clock: Clock) -> None:
    busy = [session(store, clock, f"busy{i}") for i in range(6)]  # hold all 12 pairs
    waiter = session(store, clock, "waiter")
    assert waiter.current is None
    for _ in range(40):  # five minutes of waiting (the trainer is training)
        clock.advance(7.5)
        for tab in busy:
            tab.last_activity = clock()  # these raters are busy answering
            tab.heartbeat()
        waiter.heartbeat()
    assert not waiter.paused
    busy[0].release_all()  # two pairs come free
    busy[0].paused = True
    assert waiter.heartbeat() and waiter.current is not None and not waiter.paused
    clock.advance(20)
    waiter.apply([answer(1, waiter.current.pair_id)])  # the person was there: rating goes on
    assert not waiter.paused and len(store.labels(rater_id="waiter")) == 1
    clock.advance(119)
    waiter.heartbeat()
    assert not waiter.paused
    clock.advance(2)  # then the person leaves: two minutes after the answer the page pauses
    waiter.heartbeat()
    assert waiter.paused and waiter.current is None
