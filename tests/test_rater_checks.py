"""Checks: pairs asked of a rater only to measure them -- gold pairs (probation, flagged raters)
and repeats of their own pairs (self-consistency).

A real SQLite store, real simulated raters; the reward-model part fits a real ensemble.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from prefloop.reward_models import RewardModelConfig, RewardTrainer, build_reward_model
from prefloop.store import PreferenceStore, StoreError, sqlite_url
from prefloop.teachers.crowd import make_crowd_teacher
from prefloop.teachers.labeling import answer_pending
from prefloop.cli.raters import rater_summary
from prefloop.training.rater_checks import RATER_RELIABILITY_META, CheckPolicy, RaterRouter, publish_policy, tally_checks
from prefloop.types import Choice, SegmentPair

from test_reliability import ACT, OBS, random_segments

torch.set_num_threads(1)


def gold_of(pair: SegmentPair) -> Choice:
    return Choice.RIGHT if pair.right.true_return > pair.left.true_return else Choice.LEFT


def store_with(tmp_path, n_pairs: int, n_gold: int, seed: int = 0, **store_kwargs) -> PreferenceStore:
    segments = random_segments(2 * (n_pairs + n_gold), np.random.default_rng(seed))
    store = PreferenceStore(sqlite_url(tmp_path / "prefs.sqlite"), run_name="checks", **store_kwargs)
    pairs = [SegmentPair(segments[2 * i], segments[2 * i + 1]) for i in range(n_pairs + n_gold)]
    store.add_pairs(pairs[:n_pairs])
    for pair in pairs[n_pairs:]:
        store.add_pairs([pair], gold_choice=gold_of(pair))
    return store


def put_clips(store: PreferenceStore) -> None:
    """A (stand-in) clip for every segment of every pair, so the rater app can show them."""
    for pair_id in range(1, store.counts()["pairs"] + 1):
        pair = store.get_pair(pair_id)
        for segment in (pair.left, pair.right):
            store.put_clip(segment.id, b"clip", "video/mp4")


def register(store: PreferenceStore, *names: str) -> None:
    """Raters the run knows before they answer (as `prefloop raters add` makes them)."""
    for name in names:
        store.add_rater(name, name, "0" * 64)


def test_a_check_is_not_a_label_and_leaves_the_queue_alone(tmp_path) -> None:
    store = store_with(tmp_path, n_pairs=2, n_gold=2)
    before = store.counts()
    check = store.claim_check("ann")
    assert check is not None and store.is_open_check(check.id, "ann")
    assert store.claim_check("ann").id == check.id  # the open check comes back first (a reload)
    answered = store.answer_check(check.id, "ann", gold_of(check), 2.5)
    assert answered.agrees and answered.response_time_s == 2.5
    assert store.answer_check(check.id, "ann", Choice.EQUAL, 1.0) == answered  # a double submit counts once
    assert store.counts() == before  # no label, no pair changed status, nothing leased
    # The gold pair is still in the queue for a label, for anyone (ann included: a check is not a label).
    assert check.id in {store.claim_next(name).id for name in ("bob", "cid", "dee")} | {store.claim_next("ann").id}
    # ann checks the other gold pair next, then has none left; bob still has both.
    second = store.claim_check("ann")
    assert second is not None and second.id != check.id
    store.answer_check(second.id, "ann", Choice.LEFT if gold_of(second) is Choice.RIGHT else Choice.RIGHT, 1.0)
    assert store.claim_check("ann") is None and store.claim_check("bob") is not None
    assert [c.agrees for c in store.rater_checks("ann")] == [True, False]
    assert tally_checks(store.rater_checks()) == {"ann": (2, 1)}
    with pytest.raises(StoreError, match="not served .* as a check"):
        store.answer_check(second.id, "eve", Choice.LEFT, 1.0)


def test_undo_reopens_a_check_and_a_labelled_pair_is_never_a_check(tmp_path) -> None:
    store = store_with(tmp_path, n_pairs=0, n_gold=2)
    first = store.claim_next("ann")  # ann labels the first gold pair from the queue
    store.answer(first.id, "ann", gold_of(first), 1.0)
    check = store.claim_check("ann")
    assert check.id != first.id
    store.answer_check(check.id, "ann", Choice.EQUAL, 1.0)
    assert store.undo_check(check.id, "ann").choice is Choice.EQUAL
    assert store.is_open_check(check.id, "ann") and store.rater_checks("ann") == []
    assert store.claim_check("ann").id == check.id  # served again first


def test_probation_then_labels_and_a_rater_failing_checks_gets_only_checks(tmp_path) -> None:
    store = store_with(tmp_path, n_pairs=20, n_gold=6)
    router = RaterRouter(store, CheckPolicy(probation_checks=3))
    assert router.mode("good") == "labels"  # one person alone is never slowed down by checks
    register(store, "good", "bad")
    for rater, honest in (("good", True), ("bad", False)):
        for _ in range(3):
            pair, is_check = router.claim(rater)
            assert is_check, f"{rater}'s first answers are checks"
            answer = gold_of(pair) if honest else (Choice.LEFT if gold_of(pair) is Choice.RIGHT else Choice.RIGHT)
            store.answer_check(pair.id, rater, answer, 1.0)
    pair, is_check = router.claim("good")
    assert not is_check  # probation passed: labels from the queue
    assert router.mode("bad") == "flagged"  # 3 of 3 wrong: checks only, before any fit judged them
    for _ in range(3):
        pair, is_check = router.claim("bad")
        assert is_check
        store.answer_check(pair.id, "bad", Choice.LEFT if gold_of(pair) is Choice.RIGHT else Choice.RIGHT, 1.0)
    assert router.claim("bad") is None  # every gold pair checked: nothing for a flagged rater
    assert store.counts()["labels"] == 0
    # The last fit's judgement wins over the checks: unflagged by the fit, "bad" gets labels again.
    store.set_meta(RATER_RELIABILITY_META, json.dumps({"raters": [{"rater_id": "bad", "flagged": False}]}))
    assert router.claim("bad")[1] is False
    store.set_meta(RATER_RELIABILITY_META, json.dumps({"raters": [{"rater_id": "good", "flagged": True}]}))
    assert router.mode("good") == "labels"  # "bad" is flagged by its checks: never everyone on checks only
    store.set_meta(RATER_RELIABILITY_META, json.dumps({"raters": [{"rater_id": "good", "flagged": True},
                                                                  {"rater_id": "bad", "flagged": False}]}))
    assert router.mode("good") == "flagged"
    assert RaterRouter(store, None).mode("good") == "labels"  # the plain loss routes nobody


def test_a_failing_rater_is_not_left_waiting_for_an_invited_rater_who_never_came(tmp_path) -> None:
    """Found in review: "bad" failing their checks got gold checks only because "absent" was
    registered, unflagged and silent; once the gold pairs ran out the run waited for labels."""
    store = store_with(tmp_path, n_pairs=10, n_gold=3)
    router = RaterRouter(store, CheckPolicy(probation_checks=3))
    register(store, "bad", "absent")
    for _ in range(3):
        pair, is_check = router.claim("bad")
        assert is_check  # probation applies: a second rater is expected
        store.answer_check(pair.id, "bad", Choice.LEFT if gold_of(pair) is Choice.RIGHT else Choice.RIGHT, 1.0)
    assert router.mode("bad") == "labels"  # nobody who answers could take the labels over
    pair, is_check = router.claim("bad")
    assert pair is not None and not is_check
    # A crowd member the run knows will answer can take over before answering anything.
    assert RaterRouter(store, CheckPolicy(probation_checks=3), known_raters=["sim-careful-1"]).mode("bad") == "flagged"
    # So can the invited person once they answer.
    store.answer(store.claim_next("absent").id, "absent", Choice.LEFT, 1.0)
    assert router.mode("bad") == "flagged"


def test_a_flagged_rater_takes_labels_once_the_others_have_left_the_queue_standing(tmp_path) -> None:
    """Found trying it: ann labels once and leaves; bob fails his gold checks and gets checks only;
    once the gold pairs ran out a run taught by people waited for ann forever."""
    now = [1_000_000.0]
    store = store_with(tmp_path, n_pairs=6, n_gold=3, clock=lambda: now[0])
    policy = CheckPolicy(probation_checks=3)
    router = RaterRouter(store, policy)
    store.answer(store.claim_next("ann").id, "ann", Choice.LEFT, 1.0)
    for _ in range(3):
        now[0] += 5.0
        pair, is_check = router.claim("bob")
        assert is_check
        store.answer_check(pair.id, "bob", Choice.LEFT if gold_of(pair) is Choice.RIGHT else Choice.RIGHT, 1.0)
    assert router.mode("bob") == "flagged"  # ann answered, and nothing flags her
    assert store.queue_stalled_for("bob") == 15.0  # since ann's label
    assert router.claim("bob") is None  # ann may still come back with the next answer
    now[0] += policy.stalled_after_s
    pair, is_check = router.claim("bob")
    assert pair is not None and not is_check  # a label (the fit down-weights it), not a run that waits
    store.answer(pair.id, "bob", Choice.LEFT, 1.0)
    assert router.claim("bob")[1] is False  # his own labels do not count as the queue moving
    store.answer(store.claim_next("ann").id, "ann", Choice.LEFT, 1.0)  # ann is back
    now[0] += policy.stalled_after_s - 1
    assert router.claim("bob") is None  # checks only again while she labels
    # Old policies published without the field read with the default.
    assert CheckPolicy.from_json(json.dumps({"probation_checks": 3})).stalled_after_s == policy.stalled_after_s


def test_with_checks_a_crowds_adversarial_rater_gives_no_labels_and_is_flagged_at_the_first_fit(tmp_path) -> None:
    """3 careful raters, one at random, one adversarial, 50 pairs and 5 gold pairs (a first round):
    the adversary fails all 5 probation checks, so the label budget goes to the others, and the
    first fit flags it from its checks alone."""
    store = store_with(tmp_path, n_pairs=50, n_gold=5, seed=3)
    router = RaterRouter(store, CheckPolicy(probation_checks=5))
    answered = answer_pending(store, make_crowd_teacher("crowd:3xcareful@0.05,random,adversarial", seed=3), router=router)
    assert answered == 55  # every pair of the queue labelled once; checks are not counted
    by_rater = {}
    for label in store.labels():
        by_rater[label.rater_id] = by_rater.get(label.rater_id, 0) + 1
    assert "sim-adversarial-1" not in by_rater
    tally = tally_checks(store.rater_checks())
    assert tally["sim-adversarial-1"] == (5, 5)
    assert all(tally[f"sim-careful-{i}"][1] <= 1 for i in (1, 2, 3))
    publish_policy(store, router.policy)  # as the trainer does: `raters list` shows who gets what
    rows = {row["name"]: row for row in rater_summary(store)}
    assert rows["sim-adversarial-1"]["gets"] == "checks only" and rows["sim-adversarial-1"]["labels"] == 0
    assert (rows["sim-adversarial-1"]["checks"], rows["sim-adversarial-1"]["checks_right"]) == (5, 0)
    assert rows["sim-careful-1"]["gets"] == "labels"
    config = RewardModelConfig(hidden_sizes=(32,), seed=0, epochs=40)
    trainer = RewardTrainer(build_reward_model(OBS, ACT, config), config)
    trainer.fit(store.labeled_pairs(), checks=tally)
    estimates = {e.rater_id: e for e in trainer.rater_estimates}
    assert estimates["sim-adversarial-1"].flagged and estimates["sim-adversarial-1"].labels == 0
    assert estimates["sim-adversarial-1"].gold_labels >= 5
    assert not any(estimates[f"sim-careful-{i}"].flagged for i in (1, 2, 3))


def test_the_rater_app_serves_probation_checks_first_and_undo_takes_a_check_back(tmp_path) -> None:
    """In the app a check looks like any pair: the first answers of a new rater are checks (no
    labels), Undo takes back the latest answer whether check or label, and the policy comes from
    the run's meta (as the trainer published it)."""
    from prefloop.apps.rating import RaterSession

    store = store_with(tmp_path, n_pairs=4, n_gold=2)
    put_clips(store)
    publish_policy(store, CheckPolicy(probation_checks=2))
    register(store, "ann", "bob")
    ann = RaterSession(store, "ann")
    ann.refresh()
    assert ann.current.is_check and ann.next.is_check  # both prepared pairs are checks
    first = ann.current.pair_id
    ann.answer(first, "left", 3.0)
    assert store.counts()["labels"] == 0 and len(store.rater_checks("ann")) == 1
    assert ann.labels_today() == 1  # "Your answers today" counts a check: the rater gave an answer
    ann.undo()
    assert store.rater_checks("ann") == [] and ann.current.pair_id == first  # shown again to answer anew
    assert ann.labels_today() == 0
    for _ in range(2):  # right answers (two wrong ones of two would flag ann: checks only)
        ann.answer(ann.current.pair_id, gold_of(store.get_pair(ann.current.pair_id)).value, 3.0)
    assert len(store.rater_checks("ann")) == 2
    assert not ann.current.is_check  # probation over: pairs from the queue
    ann.answer(ann.current.pair_id, "left", 3.0)
    assert store.counts()["labels"] == 1
    ann.undo()  # the label, the latest answer
    assert store.counts()["labels"] == 0 and len(store.rater_checks("ann")) == 2
    publish_policy(store, None)
    assert not RaterSession(store, "bob").router.policy  # a run without the policy: no checks


def test_a_repeat_shows_the_raters_own_pair_swapped_and_stores_the_answer_unswapped(tmp_path) -> None:
    """After every `repeat_every` labels a rater gets one of their own earlier pairs again, with
    left and right swapped (not one of their newest); answering the same clip again agrees."""
    store = store_with(tmp_path, n_pairs=12, n_gold=0)
    router = RaterRouter(store, CheckPolicy(probation_checks=1, repeat_every=3))
    register(store, "ann", "bob")
    assert router.mode("ann") == "probation" and router.claim("ann")[1] is False  # no gold pair: labels
    given = {}
    for _ in range(3):
        pair, is_check = router.claim("ann")
        assert not is_check
        store.answer(pair.id, "ann", Choice.LEFT, 2.0)
        given[pair.id] = pair
    assert router.mode("ann") == "repeat"
    assert store.claim_check("ann", "repeat", not_latest=3) is None  # all three are among the newest
    repeat, is_check = router.claim("ann")  # (the router keeps only the newest 5 back; 3 labels: none)
    assert repeat is None or is_check is False
    store.release(repeat.id, "ann")
    shown = store.claim_check("ann", "repeat", not_latest=0)
    original = given[shown.id]
    assert (shown.left.id, shown.right.id) == (original.right.id, original.left.id)  # swapped
    check = store.answer_check(shown.id, "ann", Choice.RIGHT, 2.0)  # the same clip as before: now on the right
    assert check.kind == "repeat" and check.choice is Choice.LEFT and check.agrees
    assert tally_checks(store.rater_checks()) == {}  # repeats are no gold evidence
    assert store.counts()["labels"] == 3
    with pytest.raises(StoreError, match="check kind"):
        store.claim_check("ann", "bogus")


def test_self_consistency_counts_repeat_checks_beside_repeated_pairs(tmp_path) -> None:
    from prefloop.apps.rater_quality import Consistency, with_repeat_checks

    store = store_with(tmp_path, n_pairs=8, n_gold=0)
    for _ in range(8):
        pair = store.claim_next("ann")
        store.answer(pair.id, "ann", Choice.LEFT, 1.0)
    for answer in (Choice.RIGHT, Choice.LEFT):  # swapped: RIGHT is the same clip as before, LEFT is not
        shown = store.claim_check("ann", "repeat")
        store.answer_check(shown.id, "ann", answer, 1.0)
    merged = with_repeat_checks([Consistency("ann", 2, 2), Consistency("bob", 1, 0)], store.rater_checks())
    assert merged["ann"] == Consistency("ann", 4, 3) and merged["bob"] == Consistency("bob", 1, 0)


@pytest.mark.parametrize("answer_seconds", [0.0, 0.01])
def test_a_training_run_with_a_crowd_checks_its_raters_and_gives_the_adversary_no_labels(tmp_path, answer_seconds) -> None:
    """The whole loop, instantly and on the raters' own clocks: the first round asks enough gold
    pairs for probation, the adversarial rater fails its checks and gets no labels (a crowd's
    members are known from the start), and `raters list` says it gets checks only."""
    from prefloop.training.config import TrainConfig
    from prefloop.training.loop import train

    config = TrainConfig(env_id="CartPole-v1", run_dir=tmp_path / "run", teacher="crowd:2xcareful,adversarial",
                         labels=30, steps=2_000, progress_bar=False, eval_episodes=1, answer_seconds=answer_seconds)
    train(config)
    run_name = json.loads((tmp_path / "run" / "config.json").read_text())["run_name"]
    with PreferenceStore(sqlite_url(tmp_path / "run" / "prefs.sqlite"), run_name=run_name) as store:
        assert json.loads(store.get_meta("check_policy"))["probation_checks"] == 5
        gold_pairs = store.count_gold_pairs()
        assert gold_pairs >= 5
        labels = [label.rater_id for label in store.labels()]
        tally = tally_checks(store.rater_checks())
        rows = {row["name"]: row for row in rater_summary(store)}
    assert labels.count("sim-adversarial-1") == 0 and len(labels) >= 30
    assert tally["sim-adversarial-1"][1] == tally["sim-adversarial-1"][0] >= 3  # every decided check wrong
    # While it is on checks only, every later round brings it a gold pair (5 % of a small round is 0).
    assert gold_pairs >= 8 and tally["sim-adversarial-1"][0] >= 6
    assert rows["sim-adversarial-1"]["gets"] == "checks only"


def test_a_gold_pair_checked_then_served_from_the_queue_is_answered_as_a_label(tmp_path) -> None:
    """Found trying the app with two raters: when probation ends, the gold pair the rater just
    checked (or the one prepared next as a check) can come from the queue as a label. The session
    used to keep the pair's old check view, so every answer went to the answered check (a no-op)
    and the same pair came back forever: answers lost, the rater stuck."""
    from prefloop.apps.rating import RaterSession

    store = store_with(tmp_path, n_pairs=0, n_gold=2)  # a queue of gold pairs only
    put_clips(store)
    publish_policy(store, CheckPolicy(probation_checks=1))
    register(store, "ann", "bob")
    ann = RaterSession(store, "ann")
    ann.refresh()
    assert ann.current.is_check and ann.next.is_check
    checked = ann.current.pair_id
    ann.answer(checked, gold_of(store.get_pair(checked)).value, 3.0)  # probation over
    assert not ann.current.is_check and not ann.next.is_check  # queue pairs now, the same gold pairs
    for expected_labels in (1, 2):
        ann.answer(ann.current.pair_id, "left", 3.0)
        assert store.counts()["labels"] == expected_labels and ann.take_notices() == []
    assert len(store.rater_checks("ann")) == 1 and ann.current is None  # nothing left: not stuck


def test_two_checks_prepared_at_once_keep_their_order_on_screen(tmp_path) -> None:
    """Found in Chromium: when a repeat falls due, the pair on screen and the one prepared next
    are both new checks; the store hands back the newest open check first, so the page's next
    refresh swapped them and the pair changed under the rater's eyes."""
    from prefloop.apps.rating import RaterSession

    store = store_with(tmp_path, n_pairs=20, n_gold=1)
    put_clips(store)
    publish_policy(store, CheckPolicy(probation_checks=1, repeat_every=4))
    register(store, "ann", "bob")
    now = [1000.0]
    ann = RaterSession(store, "ann", clock=lambda: now[0])
    ann.refresh()
    seen_two_checks = False
    for _ in range(16):
        now[0] += 3.0
        ann.answer(ann.current.pair_id, "left", 3.0)
        if ann.current is None:
            break
        shown = (ann.current.pair_id, ann.next and ann.next.pair_id)
        seen_two_checks |= ann.current.is_check and ann.next is not None and ann.next.is_check
        for _ in range(2):  # the page's heartbeats until the rater answers
            now[0] += 1.0
            ann.heartbeat()
            assert (ann.current.pair_id, ann.next and ann.next.pair_id) == shown
    assert seen_two_checks and len(store.rater_checks("ann", "repeat")) >= 2


def test_raters_list_says_who_the_last_fit_found_unreliable(tmp_path, capsys) -> None:
    """Found trying it: the trainer said "raters flagged as unreliable: bob" while `raters list`
    showed bob's "flags" as "-" (that column counts flagged labels, too_fast and time_cut)."""
    from prefloop.cli.main import main

    store = store_with(tmp_path, n_pairs=2, n_gold=0)
    register(store, "ann", "bob", "cid")
    publish_policy(store, CheckPolicy())
    store.set_meta(RATER_RELIABILITY_META, json.dumps({"raters": [
        {"rater_id": "ann", "error_rate": 0.02, "flagged": False},
        {"rater_id": "bob", "error_rate": 0.44, "flagged": True},
    ]}))
    url = store.url
    store.close()
    assert main(["raters", "list", "--db-url", url, "--run-name", "checks"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:4]}
    assert "est. error" in out.splitlines()[0] and "label flags" in out.splitlines()[0]
    assert "0.44 unreliable" in lines["bob"] and "checks only" in lines["bob"]
    assert "0.02" in lines["ann"] and "unreliable" not in lines["ann"]
    assert lines["cid"].split()[-2:] == ["-", "-"]  # not judged by a fit yet; no flagged labels
    assert "weight 0" in out
    assert main(["raters", "list", "--db-url", url, "--run-name", "checks", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert (rows["bob"]["error_rate"], rows["bob"]["unreliable"]) == (0.44, True)
    assert (rows["cid"]["error_rate"], rows["cid"]["unreliable"]) == (None, None)


def test_the_rate_limit_counts_answers_to_checks_too(tmp_path) -> None:
    from prefloop.apps.rating import RaterSession

    now = [1_800_000_000.0]
    store = store_with(tmp_path, n_pairs=4, n_gold=6, clock=lambda: now[0])  # the app and the store share a clock
    put_clips(store)
    publish_policy(store, CheckPolicy(probation_checks=5))
    register(store, "ann", "bob")
    ann = RaterSession(store, "ann", clock=lambda: now[0], max_answers_per_minute=3)
    ann.refresh()
    for _ in range(5):  # five checks in ten seconds: the fourth and fifth are refused, not stored
        now[0] += 2.0
        ann.answer(ann.current.pair_id, gold_of(store.get_pair(ann.current.pair_id)).value, 2.0)
    assert len(store.rater_checks("ann")) == 3
    assert "more than 3 answers in a minute" in ann.take_notices()[-1].text
