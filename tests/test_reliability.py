"""Per-rater reliability in the reward loss: a crowd answers through a real SQLite store, the
trainer estimates each rater's error rate jointly with the reward model, and flags the unreliable."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from prefloop.reward_models import (
    RewardModelConfig,
    RewardTrainer,
    bradley_terry_loss,
    build_reward_model,
    rater_bradley_terry_loss,
)

from prefloop.store import PreferenceStore, sqlite_url
from prefloop.teachers import SimulatedTeacher, TeacherConfig, TeacherConfigError
from prefloop.teachers.crowd import CrowdTeacher, make_crowd_teacher, parse_crowd_spec
from prefloop.teachers.labeling import answer_pending
from prefloop.types import Choice, Segment, SegmentPair

torch.set_num_threads(1)

L = 10
OBS = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
ACT = gym.spaces.Discrete(2)
CROWD = "crowd:3xcareful@0.05,random,adversarial"


def random_segments(n: int, rng: np.random.Generator) -> list[Segment]:
    """Segments whose true reward per step is the first observation coordinate."""
    out = []
    for i in range(n):
        obs = rng.normal(size=(L, 2)).astype(np.float32) + np.float32(rng.normal())
        actions = rng.integers(0, 2, size=L)
        out.append(Segment(obs=obs, actions=actions, true_rewards=obs[:, 0].copy(), n_valid=L, terminated=False,
                           episode_seed=i, start_step=0, episode_actions=actions))
    return out


def crowd_store(tmp_path, n_pairs: int, spec: str = CROWD, seed: int = 0, gold_pairs: int = 0) -> PreferenceStore:
    rng = np.random.default_rng(seed)
    segments = random_segments(2 * n_pairs + 2 * gold_pairs, rng)
    store = PreferenceStore(sqlite_url(tmp_path / "prefs.sqlite"), run_name="crowd")
    store.add_pairs([SegmentPair(segments[2 * i], segments[2 * i + 1]) for i in range(n_pairs)])
    for i in range(n_pairs, n_pairs + gold_pairs):
        left, right = segments[2 * i], segments[2 * i + 1]
        gold = Choice.RIGHT if right.true_return > left.true_return else Choice.LEFT
        store.add_pairs([SegmentPair(left, right)], gold_choice=gold)
    answer_pending(store, make_crowd_teacher(spec, seed=seed))
    return store


def fit(store: PreferenceStore, rater_model: str = "reliability", fits: int = 2) -> RewardTrainer:
    config = RewardModelConfig(hidden_sizes=(32,), seed=0, rater_model=rater_model, epochs=40)
    trainer = RewardTrainer(build_reward_model(OBS, ACT, config), config)
    pairs = store.labeled_pairs()
    for _ in range(fits):  # as the loop refits every round
        trainer.fit(pairs)
    return trainer


def test_crowd_spec_parses_and_refuses_clearly() -> None:
    members = parse_crowd_spec(CROWD)
    assert [(m.kind, m.count, m.epsilon) for m in members] == [("careful", 3, 0.05), ("random", 1, None), ("adversarial", 1, None)]
    assert [m.config().epsilon for m in members] == [0.05, 0.5, 1.0]
    crowd = make_crowd_teacher(CROWD, seed=3)
    assert [m.rater_id for m in crowd.members] == [
        "sim-careful-1", "sim-careful-2", "sim-careful-3", "sim-random-1", "sim-adversarial-1"
    ]
    for bad, words in [
        ("crowd:3xcarefull", "unknown kind"),
        ("crowd:careful@x", "not a number"),
        ("crowd:careful@1.5", "epsilon"),
        ("crowd:random@0.1", "drop the @"),
        ("crowd:0xcareful", "count"),
        ("crowd:", r"is not \[COUNTx\]KIND"),
    ]:
        with pytest.raises(TeacherConfigError, match=words):
            parse_crowd_spec(bad)


def test_each_crowd_member_answers_under_their_own_id_and_they_share_the_queue(tmp_path) -> None:
    store = crowd_store(tmp_path, 100)
    labels = store.labels()
    assert len(labels) == 100
    counts = {r: sum(1 for x in labels if x.rater_id == r) for r in {x.rater_id for x in labels}}
    assert set(counts) == {"sim-careful-1", "sim-careful-2", "sim-careful-3", "sim-random-1", "sim-adversarial-1"}
    assert min(counts.values()) >= 8  # ~20 each, drawn at random
    pairs = {p.pair_id: p for p in store.labeled_pairs()}
    adversarial = [x for x in labels if x.rater_id == "sim-adversarial-1"]
    for label in adversarial:  # always the worse clip
        pair = pairs[label.pair_id]
        worse = Choice.LEFT if pair.right.true_return > pair.left.true_return else Choice.RIGHT
        assert label.choice is worse


def test_reliability_ranks_random_and_adversarial_raters_below_careful_ones(tmp_path) -> None:
    store = crowd_store(tmp_path, 150, gold_pairs=10)
    trainer = fit(store)
    estimates = {e.rater_id: e for e in trainer.rater_estimates}
    careful = [estimates[f"sim-careful-{i}"] for i in (1, 2, 3)]
    random_rater, adversarial = estimates["sim-random-1"], estimates["sim-adversarial-1"]
    # Ranked by the effective error rate: a random rater fits eps = 0.5 or a small temperature alike.
    worst_careful = max(e.effective_error_rate for e in careful)
    assert worst_careful < 0.2
    assert random_rater.effective_error_rate > worst_careful + 0.15
    assert adversarial.error_rate > random_rater.error_rate
    assert random_rater.flagged and adversarial.flagged
    assert not any(e.flagged for e in careful)
    assert random_rater.weight == adversarial.weight == 0.0
    assert all(e.weight > 0.6 for e in careful)
    for e in estimates.values():
        assert e.error_rate_low <= e.error_rate <= e.error_rate_high
    # Flagging never deletes a label.
    assert store.counts()["labels"] == 160
    # The gold pairs are anchors: the adversarial rater's gold answers are all wrong, the careful ones' mostly right.
    if adversarial.gold_labels:
        assert adversarial.gold_correct == 0


def test_the_reliability_loss_learns_the_true_reward_better_than_the_plain_loss(tmp_path) -> None:
    # Two adversarial raters out of five: the plain loss is pulled towards the wrong sign.
    store = crowd_store(tmp_path, 200, spec="crowd:3xcareful@0.05,2xadversarial", seed=1, gold_pairs=10)
    test_segments = random_segments(300, np.random.default_rng(99))
    truth = np.array([s.true_return for s in test_segments])

    def correlation(rater_model: str) -> float:
        trainer = fit(store, rater_model, fits=3)
        return float(np.corrcoef(trainer.model.predict_segment_returns(test_segments), truth)[0, 1])

    reliable, plain = correlation("reliability"), correlation("plain")
    assert reliable > 0.9
    assert reliable > plain + 0.05


def test_the_e_step_recovers_each_raters_temperature_and_keeps_it_at_1_for_a_rater_with_few_labels() -> None:
    """Synthetic labels on known return differences ``D`` from raters with different ``beta``:
    the joint posterior over ``(eps, beta)`` separates a sharp rater, a soft one and an
    adversarial one, and the prior holds a rater with 12 labels near ``beta = 1``."""
    from scipy import special

    from prefloop.reward_models.reliability import RaterLabels, estimate_error_rates

    rng = np.random.default_rng(0)
    raters = {"sharp": (3.0, 0.0, 400), "soft": (0.33, 0.0, 400), "unit": (1.0, 0.05, 400),
              "adversarial": (1.0, 1.0, 400), "few": (3.0, 0.0, 12)}
    index, target, diff = [], [], []
    for r, (beta, eps, n) in enumerate(raters.values()):
        d = rng.normal(0, 2, n)
        right = (rng.random(n) < special.expit(beta * d)) ^ (rng.random(n) < eps)
        index += [r] * n
        target += list(right.astype(float))
        diff += list(d)
    labels = RaterLabels(np.array(index), np.array(target), np.full(len(index), np.nan), np.ones(len(index)), tuple(raters))
    found = {e.rater_id: e for e in estimate_error_rates(
        labels, special.expit(np.array(diff)), prior_error_rate=0.05, prior_labels=5, flag_error_rate=0.3)}
    assert found["sharp"].temperature > 2.0 and found["sharp"].error_rate < 0.05
    assert found["soft"].temperature < 0.7
    assert 0.6 < found["unit"].temperature < 1.6 and found["unit"].error_rate < 0.1
    assert found["adversarial"].error_rate > 0.8 and found["adversarial"].flagged
    assert found["few"].temperature_low < 1.0 < found["few"].temperature_high  # the prior holds it
    assert found["few"].temperature < found["sharp"].temperature
    for e in found.values():
        assert e.temperature_low <= e.temperature <= e.temperature_high
        assert e.error_rate_low <= e.error_rate <= e.error_rate_high
    # The loss uses each rater's temperature: a sharper rater's label moves the model more.
    from prefloop.reward_models.reliability import loss_error_rates

    eps, beta, weight = loss_error_rates(labels, list(found.values()), 0.05)
    assert beta[labels.rater_index == 0][0] == found["sharp"].temperature
    assert (weight[labels.rater_index == 3] == 0).all()


def test_the_first_fit_of_a_crowd_flags_the_adversarial_rater(tmp_path) -> None:
    """EM alternates within one fit: a single fit on 50 labels (~10 per rater, as a run's first
    round) already flags the adversarial rater and keeps the careful ones."""
    store = crowd_store(tmp_path, 50, seed=1)
    trainer = fit(store, fits=1)
    estimates = {e.rater_id: e for e in trainer.rater_estimates}
    assert estimates["sim-adversarial-1"].flagged
    assert not any(estimates[f"sim-careful-{i}"].flagged for i in (1, 2, 3))


def test_one_rater_or_the_plain_model_keeps_the_global_random_response(tmp_path) -> None:
    store = PreferenceStore(sqlite_url(tmp_path / "prefs.sqlite"), run_name="solo")
    segments = random_segments(40, np.random.default_rng(0))
    store.add_pairs([SegmentPair(segments[2 * i], segments[2 * i + 1]) for i in range(20)])
    answer_pending(store, SimulatedTeacher(TeacherConfig(), rater_id="alice"))
    assert fit(store, fits=1).rater_estimates is None
    many = crowd_store(tmp_path / "many", 30) if (tmp_path / "many").mkdir() is None else None
    assert fit(many, "plain", fits=1).rater_estimates is None


def test_the_rater_loss_is_the_plain_loss_at_eps_rr_over_2_and_ignores_coins() -> None:
    g = torch.Generator().manual_seed(0)
    left, right = torch.randn(3, 50, generator=g), torch.randn(3, 50, generator=g)
    target = (torch.rand(50, generator=g) > 0.5).float()
    ones = torch.ones(50)
    plain = bradley_terry_loss(left, right, target, 0.1)
    assert torch.allclose(rater_bradley_terry_loss(left, right, target, ones * 0.05, ones), plain, atol=1e-6)
    # A label whose rater errs half the time (a coin) moves nothing.
    right.requires_grad_(True)
    rater_bradley_terry_loss(left, right, target, ones * 0.5, ones).backward()
    assert float(right.grad.abs().max()) < 1e-8  # zero up to float rounding
    # Weight 0 removes a label from the loss; finite even for enormous return differences and eps = 0.
    weights = ones.clone()
    weights[:25] = 0
    loss = rater_bradley_terry_loss(left * 1e6, right.detach(), target, ones * 0.0, weights)
    assert math.isfinite(float(loss))


def test_config_refuses_unknown_rater_models() -> None:
    with pytest.raises(ValueError, match="rater_model"):
        RewardModelConfig(rater_model="majority")
    with pytest.raises(ValueError, match="flag_error_rate"):
        RewardModelConfig(flag_error_rate=0)


def test_a_crowd_needs_distinct_rater_ids() -> None:
    with pytest.raises(TeacherConfigError, match="distinct"):
        CrowdTeacher([SimulatedTeacher(TeacherConfig(), rater_id="a"), SimulatedTeacher(TeacherConfig(), rater_id="a")])


def _reliability_page(raw: str | None) -> None:
    from prefloop.apps.dashboard import render_rater_reliability

    render_rater_reliability(raw)


def test_the_dashboard_shows_each_raters_estimate_and_names_the_flagged_ones_as_plain_text(tmp_path) -> None:
    import json

    from conftest import app_served_on_loopback
    from prefloop.apps.dashboard import parse_rater_reliability
    from streamlit.testing.v1 import AppTest

    store = crowd_store(tmp_path, 150, gold_pairs=10)
    trainer = fit(store)
    raw = json.dumps({"flag_error_rate": 0.3, "raters": [e.to_json() for e in trainer.rater_estimates]
                      + [{**trainer.rater_estimates[0].to_json(), "rater_id": "__bold__", "flagged": True, "error_rate": 0.9}]})
    rows, threshold = parse_rater_reliability(raw)
    assert threshold == 0.3 and rows[0].rater_id == "__bold__"  # worst first
    assert parse_rater_reliability("not json") == ([], None) and parse_rater_reliability(None) == ([], None)
    with app_served_on_loopback():
        at = AppTest.from_function(_reliability_page, args=(raw,), default_timeout=30).run()
        assert not at.exception
        (frame,) = at.dataframe
        table = frame.value
        assert list(table["rater"]) == [r.rater_id for r in rows]
        assert set(table.loc[table["flagged"] == "yes", "rater"]) == {"__bold__", "sim-random-1", "sim-adversarial-1"}
        (warning,) = at.warning
        assert "weight 0" in warning.value
        assert "__bold__" in "\n".join(t.value for t in at.text)  # st.text: shown as typed, never bold
        empty = AppTest.from_function(_reliability_page, args=(None,), default_timeout=30).run()
        assert "No per-rater estimate yet" in empty.info[0].value


def test_answers_the_server_flagged_count_less_and_are_kept(tmp_path) -> None:
    """One rater whose careful answers are mixed with a burst of wrong ones the server flagged as
    too fast: flagged answers get ``flagged_answer_weight`` in the fit, and stay in the store."""
    store = PreferenceStore(sqlite_url(tmp_path / "prefs.sqlite"), run_name="flags")
    segments = random_segments(240, np.random.default_rng(5))
    pair_ids = store.add_pairs([SegmentPair(segments[2 * i], segments[2 * i + 1]) for i in range(120)])
    oracle = SimulatedTeacher(TeacherConfig(), rater_id="alice")
    for n, pair_id in enumerate(pair_ids):
        pair = store.claim_next("alice")
        choice = oracle.compare(pair.left, pair.right)
        if n % 5 < 2:  # two answers in five: the worse clip, in a second
            choice = Choice.LEFT if choice is Choice.RIGHT else Choice.RIGHT
        store.answer(pair.id, "alice", choice, 1.0)
        if n % 5 < 2:
            (label,) = [x for x in store.labels("alice") if x.pair_id == pair.id]
            store.flag_label(label.id, "too_fast", 1.0)
    test_segments = random_segments(300, np.random.default_rng(98))
    truth = np.array([s.true_return for s in test_segments])

    def correlation(weight: float) -> float:
        config = RewardModelConfig(hidden_sizes=(32,), seed=0, epochs=40, flagged_answer_weight=weight)
        trainer = RewardTrainer(build_reward_model(OBS, ACT, config), config)
        for _ in range(2):
            trainer.fit(store.labeled_pairs())
        assert trainer.rater_estimates is not None  # flags switch the per-label model on, even for one rater
        return float(np.corrcoef(trainer.model.predict_segment_returns(test_segments), truth)[0, 1])

    assert correlation(0.0) > correlation(1.0) + 0.05
    assert store.counts()["labels"] == 120 and len(store.label_flags()) == 48


@pytest.mark.slow
def test_a_crowd_at_human_pace_answers_under_each_members_id(tmp_path) -> None:
    import json

    from prefloop.training.config import TrainConfig
    from prefloop.training.loop import train

    config = TrainConfig(env_id="CartPole-v1", run_dir=tmp_path / "run", teacher="crowd:2xcareful,adversarial",
                         labels=12, steps=2_000, progress_bar=False, eval_episodes=1, answer_seconds=0.02)
    result = train(config)
    assert result.labels_used >= 12
    run_name = json.loads((tmp_path / "run" / "config.json").read_text())["run_name"]
    with PreferenceStore(sqlite_url(tmp_path / "run" / "prefs.sqlite"), run_name=run_name) as store:
        raters = {label.rater_id for label in store.labels()}
    assert raters <= {"sim-careful-1", "sim-careful-2", "sim-adversarial-1"} and len(raters) >= 2
