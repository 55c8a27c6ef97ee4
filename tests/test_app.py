"""The rater app's pages, run by Streamlit's AppTest against a real store with real clips.

The player is a custom component whose buttons live in the browser; here its answers are sent the
way the browser sends them (the component's trigger value), so the app's real code path runs.
The browser side itself is tested in test_app_browser.py.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    RATED_GUIDELINE,
    RatedStore,
    app_served_on_loopback,
    cartpole_segments,
)
from prefloop.apps.access import (
    AppConfigError,
    clean_rater_name,
    is_loopback_host,
    parse_app_args,
)
from prefloop.apps.cli_rate import RateCommandError, add_rate_parser, resolve_store
from prefloop.apps.dashboard import (
    agreement,
    gold_accuracy,
    labels_per_hour,
    parse_progress,
    rater_table,
    step_chart,
)
from prefloop.apps.launch import launch_rater_app
from prefloop.apps.player import PLAYER_KEY
from prefloop.apps.rating import RaterSession
from prefloop.apps.rating_values import clamp_response_time
from prefloop.envs.clips import CLIP_MIME
from sqlalchemy.exc import OperationalError
from streamlit.components.v2.bidi_component.main import _make_trigger_id
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.util import patch_config_options

from prefloop.store import PreferenceStore, sqlite_url
from prefloop.types import Choice, Label, SegmentPair


def app_script(argv: list[str]) -> None:
    from prefloop.apps.rater_app import main

    main(argv)


@pytest.fixture(autouse=True)
def app_test_isolation() -> Iterator[None]:
    with app_served_on_loopback():
        yield


def make_app(rated: RatedStore, *args: str, **query: str) -> AppTest:
    argv = ["--db-url", rated.url, "--run-name", rated.run_name, *args]
    at = AppTest.from_function(app_script, args=(argv,), default_timeout=30)
    at.query_params.update(query)
    return at.run()


def cookie_key(at: AppTest) -> str:
    """The rater key this run wrote into the rater cookie (prefloop.apps.rater_key); the key itself
    never reaches the address, so a test that reopens a rater's page takes it from here."""
    from prefloop.apps.rater_key import decode_credentials

    (body,) = [e.proto.body for e in at.get("html") if e.proto.unsafe_allow_javascript and "document.cookie=" in e.proto.body]
    found = re.search(r"prefloop_rater_[0-9a-f]+=([A-Za-z0-9_-]+);", body)
    assert found is not None and "key" not in at.query_params
    credentials = decode_credentials(found.group(1))
    assert credentials is not None
    return credentials[1]


def player(at: AppTest) -> dict | None:
    """The data the page sent to the player, or None when no player is shown."""
    found = [e for e in at.get("bidi_component") if e.key == PLAYER_KEY]
    return json.loads(found[0].proto.json) if found else None


def send(at: AppTest, *actions: dict) -> AppTest:
    """What the browser does on an answer or undo: set the player's ``actions`` trigger."""
    (element,) = [e for e in at.get("bidi_component") if e.key == PLAYER_KEY]
    states = at._tree.get_widget_states()
    state = states.widgets.add()
    state.id = _make_trigger_id(element.proto.id, "events")
    state.json_trigger_value = json.dumps([{"event": "actions", "value": {"items": list(actions), "sent": 1}}])
    return at._run(states)


def open_page(at: AppTest, url_path: str) -> AppTest:
    """Go to a page of the app's ``st.navigation`` (AppTest.switch_page only knows page files)."""
    at._page_hash = next(h for h, info in at._registered_pages.items() if info.get("url_pathname") == url_path)
    return at.run()


def answer(seq: int, pair_id: int, choice: str, seconds: float = 1.5) -> dict:
    return {"seq": seq, "type": "answer", "pair_id": pair_id, "choice": choice, "response_time_s": seconds}


def labels(rated: RatedStore, **kwargs) -> list[Label]:
    with PreferenceStore(rated.url, rated.run_name) as store:
        return store.labels(**kwargs)


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


# -- identity and access ---------------------------------------------------------------------------


def test_first_visit_asks_for_a_name_then_shows_two_clips_of_a_prepared_pair(rated_store: RatedStore) -> None:
    at = make_app(rated_store)
    assert player(at) is None
    assert "comparing short clips" in texts(at.markdown)
    at.text_input(key="rater_name_input").input("  Ada   Lovelace ")
    at.button[0].click().run()  # the form's "Start comparing"

    assert at.query_params["rater"] == "Ada Lovelace"  # a reload keeps the name
    assert RATED_GUIDELINE in texts(at.markdown)
    data = player(at)
    assert data["pair"]["id"] == rated_store.pair_ids[0] and data["next"]["id"] == rated_store.pair_ids[1]
    with PreferenceStore(rated_store.url, rated_store.run_name) as store:
        pair = store.get_pair(data["pair"]["id"])
        assert base64.b64decode(data["pair"]["left"]) == store.get_clip(pair.left.id)[0]
        assert base64.b64decode(data["pair"]["right"]) == store.get_clip(pair.right.id)[0]
        assert data["pair"]["mime"] == CLIP_MIME
        assert store.counts()["claimed"] == 2  # the shown pair and the one ready next are reserved
    assert "Pairs waiting: **10**" in texts(at.caption)


def test_rater_name_from_the_url_and_a_bad_one(rated_store: RatedStore) -> None:
    at = make_app(rated_store, rater="grace")
    assert player(at) is not None and "Not grace?" in [b.label for b in at.button]

    bad = make_app(rated_store, rater="<script>")
    assert player(bad) is None
    assert "only letters" in texts(bad.warning)
    assert bad.text_input(key="rater_name_input") is not None


def test_switching_rater_gives_the_pairs_back(rated_store: RatedStore) -> None:
    at = make_app(rated_store, rater="ada")
    assert player(at) is not None
    next(b for b in at.button if b.label == "Not ada?").click().run()
    assert player(at) is None and at.text_input(key="rater_name_input") is not None
    scripts = [e.proto.body for e in at.get("html") if e.proto.unsafe_allow_javascript]
    assert any("prefloop_rater_" in body and "Max-Age=0;" in body for body in scripts)  # the cookie goes
    with PreferenceStore(rated_store.url, rated_store.run_name) as store:
        assert store.counts()["claimed"] == 0  # ada's two reserved pairs went back to the queue


def test_wrong_token_shows_a_clear_message_and_nothing_else(rated_store: RatedStore) -> None:
    at = make_app(rated_store, "--token", "s3cret-token", rater="ada", token="guess")
    assert "not valid" in texts(at.error)
    assert player(at) is None and RATED_GUIDELINE not in texts(at.markdown)
    at.text_input(key="prefloop_token_typed").input("s3cret-token").run()  # typed over the bad link
    assert player(at) is not None and at.query_params["token"] == "s3cret-token"
    key = cookie_key(at)

    asked = make_app(rated_store, "--token", "s3cret-token", rater="ada", key=key)
    assert player(asked) is None and not asked.error
    asked.text_input(key="prefloop_token_typed").input("s3cret-token").run()
    assert player(asked) is not None

    ok = make_app(rated_store, "--token", "s3cret-token", rater="ada", token="s3cret-token", key=key)
    assert player(ok) is not None


@pytest.mark.parametrize(
    ("tokens", "served"),
    [
        ([], False),
        (["--token", "rater-token-1"], False),  # a rater token alone does not guard the dashboard
        (["--admin-token", "admin-token-1"], False),
        (["--token", "same-token-1", "--admin-token", "same-token-1"], False),  # raters know it
        (["--token", "rater-token-1", "--admin-token", "admin-token-1"], True),
    ],
)
def test_off_loopback_the_app_needs_a_rater_and_a_different_admin_token(
    rated_store: RatedStore, tokens: list[str], served: bool
) -> None:
    with patch_config_options({"server.address": "0.0.0.0"}):
        at = make_app(rated_store, *tokens, rater="ada", token="rater-token-1")
    assert not at.exception
    if served:
        assert not at.error and player(at) is not None
    else:
        assert "reachable from other machines" in texts(at.error) and player(at) is None
        kwargs = dict(zip([t.removeprefix("--").replace("-", "_") for t in tokens[::2]], tokens[1::2]))
        with pytest.raises(ValueError, match="refusing to serve|must differ"):
            launch_rater_app(rated_store.url, rated_store.run_name, host="0.0.0.0", **kwargs)


def test_run_and_rate_refuse_a_public_address_without_both_tokens_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefloop.cli.main import main

    run_dir = tmp_path / "run"
    for argv, expected in (
        (["run", "--host", "0.0.0.0", "--token", "rater-token-1", "--run-dir", str(run_dir)], "without --admin-token"),
        (["run", "--host", "192.168.1.20", "--admin-token", "admin-token-1", "--run-dir", str(run_dir)], "without --token"),
        (["run", "--host", "::", "--run-dir", str(run_dir)], "without --token and --admin-token"),
        (["run", "--host", "0.0.0.0", "--token", "same-token-1", "--admin-token", "same-token-1",
          "--run-dir", str(run_dir)], "--admin-token must differ from --token"),
        (["rate", "--db-url", sqlite_url(tmp_path / "x.sqlite"), "--host", "0.0.0.0", "--token", "rater-token-1"],
         "without --admin-token"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and expected in err
    assert not run_dir.exists() and not (tmp_path / "x.sqlite").exists()  # nothing was started


# -- answering ---------------------------------------------------------------------------------------


def test_an_answer_is_stored_once_and_the_next_pair_is_shown(rated_store: RatedStore) -> None:
    at = make_app(rated_store, rater="ada")
    first, second = player(at)["pair"]["id"], player(at)["next"]["id"]

    served = time.time()
    time.sleep(0.5)
    send(at, answer(1, first, "right", 2.5))

    (label,) = labels(rated_store)
    assert (label.pair_id, label.rater_id, label.choice) == (first, "ada", Choice.RIGHT)
    # The browser claimed 2.5 s; the server served the pair less than that ago, and its clock wins.
    assert 0.5 <= label.response_time_s <= time.time() - served + 0.5 < 2.5
    data = player(at)
    assert data["ack"] == 1 and data["pair"]["id"] == second and data["next"]["id"] not in (first, second)
    assert data["today"] == 1  # the player shows it; the browser adds answers still on their way

    send(at, answer(1, first, "right", 2.5))  # the browser re-sent it: the same sequence number
    send(at, answer(2, first, "right", 2.5))  # a second tab sent it again: the store's idempotence
    assert len(labels(rated_store)) == 1
    assert player(at)["pair"]["id"] == second


def test_answers_sent_together_are_all_stored_in_order(rated_store: RatedStore) -> None:
    at = make_app(rated_store, rater="ada")
    first, second = player(at)["pair"]["id"], player(at)["next"]["id"]
    send(at, answer(2, second, "equal"), answer(1, first, "left"))
    assert [(l.pair_id, l.choice) for l in labels(rated_store)] == [(first, Choice.LEFT), (second, Choice.EQUAL)]
    assert player(at)["ack"] == 2


def test_undo_takes_the_answer_back_and_shows_that_pair_again(rated_store: RatedStore) -> None:
    at = make_app(rated_store, rater="ada")
    first = player(at)["pair"]["id"]
    send(at, answer(1, first, "left"))
    send(at, {"seq": 2, "type": "undo"})

    assert labels(rated_store) == []
    assert [l.choice for l in labels(rated_store, include_retracted=True)] == [Choice.LEFT]
    assert player(at)["pair"]["id"] == first
    assert "Took back your answer" in texts(at.toast)

    send(at, answer(3, first, "cant_tell"))
    assert [(l.pair_id, l.choice) for l in labels(rated_store)] == [(first, Choice.CANT_TELL)]


def test_reloading_the_page_gives_the_same_pair_back(rated_store: RatedStore) -> None:
    at = make_app(rated_store, rater="ada")
    key = cookie_key(at)
    send(at, answer(1, player(at)["pair"]["id"], "left"))
    shown, ready = player(at)["pair"]["id"], player(at)["next"]["id"]

    reloaded = make_app(rated_store, rater="ada", key=key)  # ada's key (from her cookie), reloaded
    assert (player(reloaded)["pair"]["id"], player(reloaded)["next"]["id"]) == (shown, ready)

    other = make_app(rated_store, rater="bob")
    assert player(other)["pair"]["id"] not in (shown, ready)  # raters never share a pair


def test_a_pair_taken_by_someone_else_after_the_lease_ran_out(rated_store: RatedStore) -> None:
    at = make_app(rated_store, "--lease-seconds", "30", rater="ada")
    mine, following = player(at)["pair"]["id"], player(at)["next"]["id"]
    later = time.time() + 3600  # an hour later ada's leases have long expired
    with PreferenceStore(rated_store.url, rated_store.run_name, clock=lambda: later) as store:
        taken = store.claim_next("bob")
        assert taken.id == mine
        store.answer(mine, "bob", Choice.LEFT, 9.0)

    send(at, answer(1, mine, "right"))

    assert "already answered by someone else" in texts(at.toast)
    assert [(l.rater_id, l.choice) for l in labels(rated_store)] == [("bob", Choice.LEFT)]
    assert player(at)["pair"]["id"] == following and player(at)["ack"] == 1


def test_a_database_error_loses_no_answer(rated_store: RatedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    at = make_app(rated_store, rater="ada")
    first = player(at)["pair"]["id"]

    def broken(*args, **kwargs):
        raise OperationalError("UPDATE pairs", {}, Exception("database is locked"))

    monkeypatch.setattr(PreferenceStore, "answer", broken)
    send(at, answer(1, first, "left"))
    assert "not reachable" in texts(at.toast)
    assert player(at)["ack"] == 0 and player(at)["pair"]["id"] == first  # the browser sends it again
    assert not at.exception

    monkeypatch.undo()
    send(at, answer(1, first, "left"))
    assert [(l.pair_id, l.choice) for l in labels(rated_store)] == [(first, Choice.LEFT)]


def test_rater_sessions_on_both_backends(store_url: str) -> None:
    """The queue logic the page runs, on SQLite and PostgreSQL: prefetch, answer, undo, reload."""
    segs = cartpole_segments(4, segment_length=10)
    with PreferenceStore(store_url, "run") as store:
        pair_ids = store.add_pairs([SegmentPair(a, b) for a, b in zip(segs, segs[1:])])
        for seg in segs:
            store.put_clip(seg.id, f"clip {seg.id}".encode(), CLIP_MIME)
        ada = RaterSession(store, "ada")
        ada.refresh()
        assert (ada.current.pair_id, ada.next.pair_id) == tuple(pair_ids[:2])
        assert ada.current.left_clip == f"clip {segs[0].id}".encode()
        bob = RaterSession(store, "bob")
        bob.refresh()
        assert (bob.current.pair_id, bob.next) == (pair_ids[2], None)  # nothing else is free

        ada.apply([answer(1, pair_ids[0], "left")])
        assert ada.current.pair_id == pair_ids[1] and ada.next is None
        reloaded = RaterSession(store, "ada")  # the page reloaded: a new session
        reloaded.refresh()
        assert reloaded.current.pair_id == pair_ids[1]  # shows the same pair

        ada.apply([{"seq": 2, "type": "undo"}])
        assert (ada.current.pair_id, ada.next.pair_id) == (pair_ids[0], pair_ids[1])
        assert store.labels() == [] and ada.take_notices()[-1].level == "success"
        bob.apply([answer(1, pair_ids[2], "equal")])
        assert bob.current is None and bob.queue.waiting == 2  # ada holds the other two
        assert [l.rater_id for l in store.labels()] == ["bob"]


def test_response_times_are_clamped_to_something_sane() -> None:
    assert clamp_response_time(2.5) == 2.5
    assert clamp_response_time(-3) == 0.0
    assert clamp_response_time(1e12) == 3600.0
    assert clamp_response_time("soon") == 0.0 and clamp_response_time(float("nan")) == 0.0
    assert clamp_response_time(True) == 0.0


# -- the empty queue -----------------------------------------------------------------------------


def test_empty_queue_waits_calmly_shows_the_trainer_and_picks_up_new_pairs(rated_store: RatedStore) -> None:
    with PreferenceStore(rated_store.url, rated_store.run_name) as store:
        for pair_id in rated_store.pair_ids:
            store.claim_next("bob")
            store.answer(pair_id, "bob", Choice.LEFT, 1.0)
        store.set_meta("progress", json.dumps(
            {"status": "training", "env_step": 2500, "total_steps": 10000, "updated_at": time.time()}))

    at = make_app(rated_store, rater="ada")
    assert player(at) is None
    assert "No pairs are waiting right now" in texts(at.info) and "refreshes by itself" in texts(at.info)
    assert "25% of training done" in texts(at.text)  # the trainer's words are shown as plain text

    with PreferenceStore(rated_store.url, rated_store.run_name) as store:
        (new_pair,) = store.add_pairs([SegmentPair(*store.get_segments([1, 2]))])
    at.run()  # what the page's own polling does every few seconds
    assert player(at)["pair"]["id"] == new_pair

    with PreferenceStore(rated_store.url, rated_store.run_name) as store:
        store.set_meta("progress", json.dumps({"status": "finished"}))
    send(at, answer(1, new_pair, "left"))
    assert player(at) is None and "Training has finished" in texts(at.success)


def test_a_flagged_rater_with_no_gold_pair_left_is_told_why_not_that_the_trainer_waits_for_them(
    rated_store: RatedStore,
) -> None:
    """Found in Chromium: bob, flagged, read "No pairs for you right now ..." and then "The trainer
    is waiting for your comparisons" right under it."""
    from prefloop.training.rater_checks import RATER_RELIABILITY_META, CheckPolicy, publish_policy

    with PreferenceStore(rated_store.url, rated_store.run_name) as store:  # no gold pair in this run
        # The session's template store made these pairs minutes ago, perhaps: under the default
        # stall rule (120 s with nobody labelling) bob would then rightly get one from the queue.
        publish_policy(store, CheckPolicy(stalled_after_s=24 * 3600))
        store.add_rater("carl", "carl", "0" * 64)  # a second rater: checks are on
        store.set_meta(RATER_RELIABILITY_META, json.dumps(
            {"raters": [{"rater_id": "carl", "flagged": False}, {"rater_id": "bob", "flagged": True}]}))
        store.set_meta("progress", json.dumps({
            "status": "waiting_for_labels", "env_step": 2500, "total_steps": 10000, "updated_at": time.time(),
            "message": "waiting for raters: 3 of 10 pairs answered"}))
    at = make_app(rated_store, rater="bob")
    assert player(at) is None and "No pairs for you right now" in texts(at.warning)
    assert "25% of training done" in texts(at.text)
    assert "waiting for your comparisons" not in texts(at.text) and "Waiting for raters" not in texts(at.text)
    assert player(make_app(rated_store, rater="ada")) is not None  # ada gets pairs


def test_a_finished_run_says_so_at_once_shows_its_result_and_serves_no_more_pairs(rated_store: RatedStore) -> None:
    at = make_app(rated_store, rater="ada")
    first = player(at)["pair"]["id"]
    send(at, answer(1, first, "left"))
    assert player(at)["today"] == 1
    with PreferenceStore(rated_store.url, rated_store.run_name) as store:  # the trainer's last labels are in
        store.set_meta("progress", json.dumps({"status": "evaluating"}))
    at.run()  # what the page's run-end watch does within seconds, with a pair still on screen
    assert player(at) is None and "Labelling is over" in texts(at.info)
    with PreferenceStore(rated_store.url, rated_store.run_name) as store:
        store.set_meta("progress", json.dumps({"status": "finished", "eval_return_mean": 487.25,
                                               "random_return_mean": 22.4, "reward_threshold": 475.0,
                                               "message": "run finished: eval return 487.2"}))
    at.run()
    assert player(at) is None
    assert "this run is complete" in texts(at.success) and "**487.2**" in texts(at.markdown)
    # the number comes with what makes it readable: random play, and what the task calls solved
    assert "at random scores 22.4" in texts(at.markdown) and "475 as solved" in texts(at.markdown)
    assert "Your answers today: **1**" in texts(at.caption)
    with PreferenceStore(rated_store.url, rated_store.run_name) as store:
        assert store.counts()["claimed"] == 0  # the pairs this page held went back (nothing is served)
    with PreferenceStore(rated_store.url, rated_store.run_name) as store:
        store.set_meta("progress", json.dumps({"status": "finished", "message": "run finished: eval return 9.0"}))
    assert "Trainer: run finished: eval return 9.0" in texts(make_app(rated_store, rater="bob").markdown)


def test_pairs_whose_clips_are_not_ready_are_not_shown(rated_store: RatedStore) -> None:
    with PreferenceStore(rated_store.url, rated_store.run_name) as store:
        for pair_id in rated_store.pair_ids:
            store.claim_next("bob")
            store.answer(pair_id, "bob", Choice.LEFT, 1.0)
        fresh = cartpole_segments(2, seed=9)
        (pending,) = store.add_pairs([SegmentPair(*fresh)])
    at = make_app(rated_store, rater="ada")
    assert player(at) is None and "Preparing the clips of 1 pair --" in texts(at.info)
    with PreferenceStore(rated_store.url, rated_store.run_name) as store:
        assert store.counts()["claimed"] == 0  # the pair is not held back from other raters
        for seg in fresh:
            store.put_clip(seg.id, b"\x1a\x45\xdf\xa3 a clip", CLIP_MIME)
    at.run()
    assert player(at)["pair"]["id"] == pending


# -- dashboard -------------------------------------------------------------------------------------


def test_dashboard_needs_the_admin_token_and_shows_the_run(rated_store: RatedStore) -> None:
    with PreferenceStore(rated_store.url, rated_store.run_name) as store:
        (double,) = store.add_pairs([SegmentPair(*store.get_segments([1, 2]))], labels_per_pair=2)
        (gold,) = store.add_pairs([SegmentPair(*store.get_segments([1, 3]))], labels_per_pair=2, gold_choice=Choice.RIGHT)
        for rater, pair_id, choice in [("ada", double, "left"), ("bob", double, "left"), ("ada", gold, "right"), ("bob", gold, "left")]:
            store.claim_next(rater, exclude=[p for p in range(1, 100) if p != pair_id])
            store.answer(pair_id, rater, choice, 2.0)
        store.set_meta("progress", json.dumps({
            "status": "waiting_for_labels", "env_step": 500, "total_steps": 1000,
            "fit_history": [{"env_step": 100, "labels": 4, "val_accuracy": 0.6}, {"env_step": 500, "labels": 8, "val_accuracy": 0.8}],
            "curve": [{"env_step": 100, "true_return": 20.0, "learned_return": 1.0}, {"env_step": 500, "true_return": 60.0}],
        }))

    at = make_app(rated_store, "--admin-token", "admin-token-1", rater="ada")
    open_page(at, "dashboard")
    assert "needs the admin token" in texts(at.markdown) and not at.metric

    at = make_app(rated_store, "--admin-token", "admin-token-1", rater="ada", admin_token="admin-token-1")
    open_page(at, "dashboard")
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Labels"] == "4" and metrics["Raters"] == "2" and metrics["Median seconds per label"] == "2.0"
    assert metrics["Pairs waiting"] == "10"
    assert metrics["Same answer (rater pairs)"] == "50%"  # pair a agreed, the gold pair did not
    charts = [e for e in at.get("arrow_vega_lite_chart")] + [e for e in at.get("vega_lite_chart")]
    assert len(charts) >= 5  # per hour, per rater, validation accuracy, returns, gold accuracy
    assert "Labels on gold pairs, all raters: 1 of 2 right" in texts(at.caption)
    assert "Gold checks" not in texts(at.caption)  # this run has none
    with PreferenceStore(rated_store.url, rated_store.run_name) as store:  # cid fails a gold check
        store.answer_check(store.claim_check("cid").id, "cid", "left", 2.0)
    at.run()
    assert "Gold checks (gold pairs asked only to measure a rater, not labels) are under Rater quality" in texts(at.caption)


def test_dashboard_says_there_is_no_accuracy_yet_instead_of_an_empty_chart(rated_store: RatedStore) -> None:
    # Right after the first fit (nothing was judged before it was learned) and before any episode
    # ended, the two charts had nothing to draw: axes only, labelled "3,000.000000".
    with PreferenceStore(rated_store.url, rated_store.run_name) as store:
        store.set_meta("progress", json.dumps({
            "status": "waiting_for_labels", "env_step": 3256, "total_steps": 150000,
            "fit_history": [{"env_step": 3000, "labels": 10, "val_accuracy": None, "val_pairs": 0}],
            "curve": [{"env_step": 3256, "true_return": None, "learned_return": None}],
        }))
    at = make_app(rated_store, "--admin-token", "admin-token-1", rater="ada", admin_token="admin-token-1")
    open_page(at, "dashboard")
    assert not at.exception
    assert "No accuracy yet" in texts(at.info) and "No returns reported yet" in texts(at.info)
    assert not at.get("vega_lite_chart")


def test_dashboard_charts_one_point_and_label_env_steps_as_whole_numbers() -> None:
    import pandas as pd

    frame = pd.DataFrame({"env step": [3000.0], "series": "validation accuracy", "value": [1.0], "pairs": [1.0]})
    spec = step_chart(frame, "validation accuracy", percent=True).to_dict()
    assert spec["mark"] == {"type": "line", "point": True}  # a single value shows as a point
    assert spec["encoding"]["x"]["axis"]["format"] == ",d"
    assert spec["encoding"]["y"]["scale"]["domain"] == [0, 1]
    assert [t["field"] for t in spec["encoding"]["tooltip"]] == ["env step", "series", "value", "pairs"]


def test_label_statistics() -> None:
    def lab(pair: int, rater: str, choice: Choice, t: float, rt: float = 1.0) -> Label:
        return Label(pair, rater, choice, rt, t)

    items = [lab(1, "a", Choice.LEFT, 0, 1), lab(1, "b", Choice.LEFT, 10, 3), lab(1, "c", Choice.RIGHT, 7300, 5),
             lab(2, "a", Choice.EQUAL, 20), lab(2, "b", Choice.CANT_TELL, 30)]
    agree = agreement(items)
    assert (agree.pairs, agree.comparisons, agree.pairwise, agree.unanimous) == (1, 3, pytest.approx(1 / 3), 0.0)
    assert labels_per_hour(items) == [(0.0, 4), (3600.0, 0), (7200.0, 1)]
    rows = rater_table(items)
    assert [(r.rater_id, r.labels, r.cant_tell) for r in rows] == [("a", 2, 0), ("b", 2, 1), ("c", 1, 0)]
    gold = gold_accuracy(items, {1: Choice.LEFT, 2: Choice.RIGHT})
    assert [(g.rater_id, g.correct, g.answered) for g in gold] == [("a", 1, 2), ("b", 1, 1), ("c", 0, 1)]
    assert parse_progress("not json") is None and parse_progress(None) is None
    assert parse_progress('{"env_step": "many", "status": 3}').env_step is None


# -- configuration -----------------------------------------------------------------------------------


def test_config_names_and_hosts() -> None:
    config = parse_app_args(["--db-url", "sqlite:///x.sqlite", "--lease-seconds", "60"], environ={})
    assert (config.run_name, config.lease_seconds, config.token) == ("default", 60.0, None)
    env = {"PREFLOOP_DB_URL": "sqlite:///y.sqlite", "PREFLOOP_RATER_TOKEN": "from-the-env"}
    assert parse_app_args([], environ=env).token == "from-the-env"
    with pytest.raises(AppConfigError, match="--db-url"):
        parse_app_args([], environ={})
    with pytest.raises(AppConfigError, match="at least 8"):
        parse_app_args(["--db-url", "x", "--token", "short"], environ={})
    assert clean_rater_name(" José  M. ") == "José M."
    with pytest.raises(ValueError, match="shorter"):
        clean_rater_name("x" * 41)
    assert [is_loopback_host(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.1.2.3")] == [True] * 5
    assert [is_loopback_host(h) for h in ("0.0.0.0", "::", "192.168.1.4", "example.org", "")] == [False] * 5


def test_rate_command_finds_the_store_of_a_run_folder(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_rate_parser(parser.add_subparsers())
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(RateCommandError, match="no prefs.sqlite"):
        resolve_store(parser.parse_args(["rate", "--run-dir", str(run_dir)]))
    PreferenceStore(sqlite_url(run_dir / "prefs.sqlite"), "my-run").close()
    (run_dir / "config.json").write_text(json.dumps({"run_name": "my-run"}))
    args = parser.parse_args(["rate", "--run-dir", str(run_dir), "--port", "8600"])
    assert resolve_store(args) == (sqlite_url(run_dir / "prefs.sqlite"), "my-run")
    with pytest.raises(SystemExit):
        parser.parse_args(["rate"])  # one of --run-dir / --db-url is required
    with pytest.raises(RateCommandError, match="--token"):
        args.func(parser.parse_args(["rate", "--run-dir", str(run_dir), "--host", "0.0.0.0"]))



def test_the_admin_downloads_the_runs_preferences_from_the_dashboard(
    rated_store: RatedStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io
    import zipfile

    from streamlit.runtime.media_file_manager import MediaFileManager

    from prefloop.datasets import load_dataset

    with PreferenceStore(rated_store.url, rated_store.run_name) as store:
        for pair_id, choice in zip(rated_store.pair_ids[:2], ("left", "right")):
            store.claim_next("ada")
            store.answer(pair_id, "ada", choice, 2.0)
    registered: list = []  # what a click on the button runs (Streamlit defers it to the click)
    original = MediaFileManager.add_deferred

    def record(self, data_callable, *args, **kwargs):
        registered.append((data_callable, kwargs.get("file_name", args[2] if len(args) > 2 else None)))
        return original(self, data_callable, *args, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add_deferred", record)

    tokens = ("--token", "rater-token-1", "--admin-token", "admin-token-1")
    rater = make_app(rated_store, *tokens, rater="ada", token="rater-token-1", admin_token="rater-token-1")
    open_page(rater, "dashboard")  # a rater's token does not open the dashboard
    assert "needs the admin token" in texts(rater.markdown)
    assert not rater.get("download_button") and registered == []

    at = make_app(rated_store, *tokens, rater="ada", token="rater-token-1", admin_token="admin-token-1",
                  out="/etc", path="../../etc/passwd")  # nothing is read from the request
    open_page(at, "dashboard")
    assert not at.exception
    (button,) = at.get("download_button")
    assert button.label == "Download preferences"
    (build, file_name), *_ = registered
    assert file_name == "rated-run-preferences.zip"
    with zipfile.ZipFile(io.BytesIO(build())) as archive:
        names = archive.namelist()
        assert all(n.startswith("rated-run-preferences/") and ".." not in n for n in names)
        archive.extractall(tmp_path / "unzipped")
    dataset = load_dataset(tmp_path / "unzipped" / "rated-run-preferences")
    assert dataset.run_name == rated_store.run_name and len(dataset.pairs) == len(rated_store.pair_ids)
    assert [(l.pair_id, l.rater_id, l.choice) for l in dataset.labels] == [
        (rated_store.pair_ids[0], "ada", Choice.LEFT), (rated_store.pair_ids[1], "ada", Choice.RIGHT)]


def test_a_forged_answer_for_another_raters_pair_changes_nothing(rated_store: RatedStore) -> None:
    ada = make_app(rated_store, rater="ada")
    bob = make_app(rated_store, rater="bob")
    adas, bobs = player(ada)["pair"]["id"], player(bob)["pair"]["id"]
    unclaimed = max(rated_store.pair_ids)
    for seq, pair_id in enumerate([bobs, unclaimed, 10_000, -1, 0], start=1):
        send(ada, answer(seq, pair_id, "left"))  # a hand-made trigger value naming another pair
        assert not ada.exception and player(ada)["ack"] == seq
        assert "not shown to you" in texts(ada.toast)
    assert labels(rated_store) == []
    assert player(ada)["pair"]["id"] == adas
    send(bob, answer(1, bobs, "right"))  # bob's lease was not disturbed
    assert [(l.pair_id, l.rater_id) for l in labels(rated_store)] == [(bobs, "bob")]
