"""Queries that help at small budgets, each on a tiny ensemble: uniform before the first fit,
policy-aligned (QPA), semi-supervised (SURF), k-center coverage, and a user's own rule."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from prefloop.envs import SegmentBuffer
from prefloop.reward_models import RewardModelConfig, RewardTrainer, build_reward_model

from prefloop.store import PreferenceStore, sqlite_url
from prefloop.teachers import make_teacher
from prefloop.training.config import TrainConfig
from prefloop.training.learner import PreferenceLearner
from prefloop.training.query import NotEnoughSegmentsError, QueryConfig, QueryConfigError, query_rule, select_pairs
from prefloop.training.semi_supervised import pseudo_labels
from prefloop.types import LabeledPair, Segment, SegmentPair

OBS = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
LENGTH = 5


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def segment(level: float, index: int, rng: np.random.Generator | None = None) -> Segment:
    """True reward per step = obs[0] = ``level`` (+ a little noise); ``env_step`` tags the segment."""
    noise = rng.normal(0, 0.01, (LENGTH, 2)) if rng is not None else np.zeros((LENGTH, 2))
    obs = (np.array([[level, 0.0]] * LENGTH) + noise).astype(np.float32)
    actions = np.zeros((LENGTH, 1), dtype=np.float32)
    return Segment(obs, actions, obs[:, 0].copy(), LENGTH, False, index, 0, np.zeros((LENGTH, 1), np.float32), env_step=index)


def tiny_trained_ensemble(rng: np.random.Generator):
    """A 3-member ensemble that has learned reward = obs[0] on levels in [-1, 1]."""
    config = RewardModelConfig(n_members=3, hidden_sizes=(16,), seed=0, val_fraction=0.0, stop_accuracy=2.0, min_steps_per_fit=400, lr=0.01)
    model = build_reward_model(OBS, ACT, config)
    segs = [segment(float(v), i, rng) for i, v in enumerate(rng.uniform(-1, 1, 120))]
    pairs = [LabeledPair(a, b, float(b.true_return > a.true_return), pair_id=i) for i, (a, b) in enumerate(zip(segs[::2], segs[1::2]))]
    RewardTrainer(model, config).fit(pairs)
    return model


def test_policy_aligned_queries_come_from_the_newest_segments() -> None:
    pool = [segment(0.001 * i, i) for i in range(300)]  # oldest first, as the segment buffer gives them
    config = QueryConfig(method="uniform", policy_aligned=True, policy_window=30)
    pairs = select_pairs(pool, 20, config, np.random.default_rng(0))
    assert len(pairs) == 20
    assert min(min(p.left.env_step, p.right.env_step) for p in pairs) >= 270
    # without QPA the same draw spreads over the whole buffer
    spread = select_pairs(pool, 20, QueryConfig(method="uniform"), np.random.default_rng(0))
    assert min(min(p.left.env_step, p.right.env_step) for p in spread) < 270


def test_policy_window_widens_to_what_the_pairs_need() -> None:
    pool = [segment(0.001 * i, i) for i in range(100)]
    pairs = select_pairs(pool, 45, QueryConfig(method="uniform", policy_aligned=True, policy_window=2), np.random.default_rng(0))
    assert len({frozenset((p.left.env_step, p.right.env_step)) for p in pairs}) == 45  # 10 segments give 45 pairs


def test_semi_supervised_asks_only_pairs_the_ensemble_is_unsure_of() -> None:
    rng = np.random.default_rng(1)
    model = tiny_trained_ensemble(rng)
    # Half the pool far apart (obvious pairs), half close together (hard pairs).
    pool = [segment(-1.0 + 2.0 * (i % 2), i, rng) for i in range(20)] + [segment(0.01 * i, 100 + i, rng) for i in range(20)]
    config = QueryConfig(method="uniform", semi_supervised=True, confidence=0.95, oversampling=20)
    pairs = select_pairs(pool, 10, config, np.random.default_rng(0), preference_probs=model.preference_probs)
    p_right = model.preference_probs([p.left for p in pairs], [p.right for p in pairs]).mean(0)
    assert np.all(np.maximum(p_right, 1 - p_right) < 0.95), p_right

    labels = pseudo_labels(model, pool, n_labels=100, confidence=0.95, rng=np.random.default_rng(0))
    assert labels, "obvious pairs exist, so some get a pseudo-label"
    p_right = model.preference_probs([p.left for p in labels], [p.right for p in labels]).mean(0)
    assert np.all(np.maximum(p_right, 1 - p_right) >= 0.95)
    assert all(p.extra["pseudo"] and p.pair_id is None for p in labels)
    # and nearly all are right: the side with the higher true return
    right = np.mean([p.target == float(p.right.true_return > p.left.true_return) for p in labels])
    assert right >= 0.9, right


def test_pseudo_labels_train_but_are_never_validated_on_or_budgeted() -> None:
    rng = np.random.default_rng(2)
    model = tiny_trained_ensemble(rng)
    config = RewardModelConfig(n_members=3, hidden_sizes=(16,), seed=0, steps_per_label=2, min_steps_per_fit=1)
    trainer = RewardTrainer(model, config)
    real = [LabeledPair(segment(0.1 * i, i), segment(0.1 * i + 0.5, 50 + i), 1.0, pair_id=i) for i in range(20)]
    pseudo = pseudo_labels(model, [segment(float(v), 200 + i, rng) for i, v in enumerate(np.linspace(-1, 1, 40))], 50, 0.9, rng)
    assert pseudo
    stats = trainer.fit(real, pseudo)
    assert stats.n_val + stats.n_train == len(real) + len(pseudo)
    assert stats.n_val <= len(real) * 0.5 and stats.steps <= 2 * len(real)


def test_k_center_covers_the_outliers_uniform_misses() -> None:
    rng = np.random.default_rng(4)
    pool = [segment(0.0, i, rng) for i in range(40)] + [segment(50.0, 100), segment(-50.0, 101)]
    config = QueryConfig(method="kcenter", oversampling=1000)
    pairs = select_pairs(pool, 3, config, np.random.default_rng(0))
    with_outlier = [p for p in pairs if {p.left.env_step, p.right.env_step} & {100, 101}]
    assert len(with_outlier) >= 2
    assert len({frozenset((p.left.env_step, p.right.env_step)) for p in pairs}) == 3
    assert all(np.isfinite(p.score) for p in pairs), "the store refuses a non-finite score"


def test_cover_first_round_covers_before_the_first_fit_and_scores_after() -> None:
    rng = np.random.default_rng(4)
    pool = [segment(0.0, i, rng) for i in range(40)] + [segment(50.0, 100), segment(-50.0, 101)]
    config = QueryConfig.from_spec("disagreement+cover", oversampling=1000)
    assert config.cover_first_round and config.spec == "disagreement+cover"
    # no model yet: k-center coverage, so the two outliers are asked about
    first = select_pairs(pool, 3, config, np.random.default_rng(0))
    assert len([p for p in first if {p.left.env_step, p.right.env_step} & {100, 101}]) >= 2
    uniform = select_pairs(pool, 3, QueryConfig.from_spec("disagreement", oversampling=1000), np.random.default_rng(0))
    assert not [p for p in uniform if {p.left.env_step, p.right.env_step} & {100, 101}], "uniform rarely finds 2 of 42"

    # once a model exists the method's own score decides: the most disputed pairs, whatever their coverage
    def probs(lefts, rights):
        disputed = np.array([float({a.env_step, b.env_step} == {3, 4}) for a, b in zip(lefts, rights)])
        return np.stack([0.5 + 0.4 * disputed, 0.5 - 0.4 * disputed])

    later = select_pairs(pool, 1, config, np.random.default_rng(0), preference_probs=probs)
    assert {later[0].left.env_step, later[0].right.env_step} == {3, 4}


def test_k_center_on_images_finds_the_odd_clips() -> None:
    """Image segments are projected before k-center: it still covers, without 2 x 3,072 features a pair."""
    rng = np.random.default_rng(5)

    def clip(brightness: float, index: int) -> Segment:
        frames = np.clip(rng.normal(brightness, 5.0, (LENGTH, 3, 32, 32)), 0, 255).astype(np.uint8)
        actions = np.zeros((LENGTH, 1), dtype=np.float32)
        return Segment(frames, actions, np.zeros(LENGTH, np.float32), LENGTH, False, index, 0, actions, env_step=index)

    pool = [clip(100.0, i) for i in range(40)] + [clip(250.0, 100), clip(5.0, 101)]
    pairs = select_pairs(pool, 3, QueryConfig(method="kcenter", oversampling=1000), np.random.default_rng(0))
    assert len([p for p in pairs if {p.left.env_step, p.right.env_step} & {100, 101}]) >= 2


def test_query_specs_parse_and_bad_ones_are_refused() -> None:
    config = QueryConfig.from_spec("disagreement+qpa+surf")
    assert config.method == "disagreement" and config.policy_aligned and config.semi_supervised
    assert config.spec == "disagreement+qpa+surf"
    assert QueryConfig().spec == "disagreement"
    assert not QueryConfig.from_spec("disagreement").policy_aligned
    with pytest.raises(QueryConfigError, match="unknown query modifier 'foo'"):
        QueryConfig.from_spec("uniform+foo")
    with pytest.raises(QueryConfigError, match="confidence"):
        QueryConfig(confidence=0.4)


class NewestPairsRule:
    """A user's rule: always pair the newest segments, and note what it was given."""

    def __init__(self) -> None:
        self.calls: list[bool] = []

    def __call__(self, candidates: Sequence[Segment], n_pairs: int, rng: np.random.Generator, preference_probs) -> list[SegmentPair]:
        self.calls.append(preference_probs is not None)
        newest = list(candidates)[-2 * n_pairs:]
        return [SegmentPair(newest[2 * k], newest[2 * k + 1]) for k in range(n_pairs)]


def test_a_users_rule_is_asked_and_the_first_round_gets_no_untrained_ensemble(tmp_path: Path) -> None:
    config = TrainConfig(env_id="Pendulum-v1", run_dir=tmp_path, labels=20, steps=10_000).resolve()
    store = PreferenceStore(sqlite_url(tmp_path / "prefs.sqlite"), run_name="r")
    buffer = SegmentBuffer(100)
    rng = np.random.default_rng(3)
    buffer.extend(segment(float(v), i, rng) for i, v in enumerate(rng.uniform(-1, 1, 60)))
    rule = NewestPairsRule()
    model = build_reward_model(OBS, ACT, config.reward_model)
    learner = PreferenceLearner(config, store, model, buffer, None, query_rule=rule)
    learner._asks_gold = False
    assert learner.ask(5, env_step=0) == 5
    assert rule.calls == [False], "before the first fit the rule gets no preference_probs"
    learner.fit_history.append({})  # as after a fit
    learner.ask(8, env_step=100)
    assert rule.calls == [False, True]
    assert store.counts()["pairs"] == 8
    store.close()


def ending(level: float, index: int) -> Segment:
    """A segment whose episode ends (terminates) at its 4th of 5 steps."""
    seg = segment(level, index)
    seg.obs[4:] = 0
    seg.true_rewards[4:] = 0
    return Segment(seg.obs, seg.actions, seg.true_rewards, 4, True, index, 0, seg.episode_actions[:4], env_step=index)


def crossed(pair: SegmentPair) -> bool:
    return pair.left.terminated != pair.right.terminated


@pytest.mark.parametrize("method", ["uniform", "kcenter", "disagreement"])
def test_ends_put_an_ending_segment_next_to_one_that_goes_on_in_half_of_each_round(method: str) -> None:
    """Acrobot's failed seed: 178 of 200 answers "equal", two segments that never reached the goal.
    With +ends half of the pairs (rounded up) pit one that ends against one that does not."""
    rng = np.random.default_rng(0)
    pool = [segment(float(v), i) for i, v in enumerate(rng.uniform(-1, 1, 60))] + [ending(0.1 * i, 60 + i) for i in range(4)]
    probs = None
    if method == "disagreement":
        model = tiny_trained_ensemble(np.random.default_rng(1))
        probs = model.preference_probs
    config = QueryConfig.from_spec(f"{method}+ends")
    assert config.ends_first and config.spec == f"{method}+ends"
    pairs = select_pairs(pool, 9, config, np.random.default_rng(2), preference_probs=probs)
    assert len(pairs) == 9 and len({frozenset((id(p.left), id(p.right))) for p in pairs}) == 9
    assert sum(crossed(p) for p in pairs[:5]) == 5  # ceil(9 / 2) crossed pairs first
    # Without +ends such pairs are rare (4 ending segments of 64): the draw alone gives few or none.
    plain = select_pairs(pool, 9, QueryConfig(method=method), np.random.default_rng(2), preference_probs=probs)
    assert sum(crossed(p) for p in plain) < 5
    # No segment ends (a task without terminations): +ends asks exactly what the method alone asks.
    going_on = pool[:60]
    same = [select_pairs(going_on, 9, QueryConfig(method=method, ends_first=flag), np.random.default_rng(3), preference_probs=probs)
            for flag in (True, False)]
    assert [(id(p.left), id(p.right)) for p in same[0]] == [(id(p.left), id(p.right)) for p in same[1]]


def at_once(level: float, index: int) -> Segment:
    """A segment whose episode ends after its first step (a Blackjack hand the policy sticks on)."""
    seg = segment(level, index)
    return Segment(seg.obs, seg.actions, seg.true_rewards, 1, True, index, 0, seg.episode_actions[:1], env_step=index)


def test_a_later_round_whose_segments_all_end_at_once_is_asked_later_not_the_end_of_the_run(tmp_path: Path, caplog) -> None:
    # Blackjack-v1 with DQN: once the policy always sticks, every segment is a 1-step episode; the
    # round raised and the whole run ended, advising "fewer --labels or more --steps".
    config = TrainConfig(env_id="Pendulum-v1", run_dir=tmp_path, labels=20, steps=10_000).resolve()
    store = PreferenceStore(sqlite_url(tmp_path / "prefs.sqlite"), run_name="r")
    buffer = SegmentBuffer(100)
    rng = np.random.default_rng(3)
    buffer.extend(segment(float(v), i, rng) for i, v in enumerate(rng.uniform(-1, 1, 40)))
    learner = PreferenceLearner(config, store, build_reward_model(OBS, ACT, config.reward_model), buffer,
                                make_teacher("oracle", seed=0), query_rule=query_rule(QueryConfig("uniform")))
    assert learner.run_round(5, env_step=0, recent_returns=None) is not None
    buffer.extend(at_once(float(v), 100 + i) for i, v in enumerate(rng.uniform(-1, 1, 100)))
    with caplog.at_level("WARNING", logger="prefloop"):
        assert learner.run_round(9, env_step=200, recent_returns=None) is None  # no refit on nothing new
    assert "this round's 4 pairs are not asked" in caplog.text and "The next round asks them" in caplog.text
    assert "fewer labels" not in caplog.text  # more steps or fewer labels would not help
    assert learner.postponed_at == 200 and len(learner.fit_history) == 1
    assert learner.pairs_asked() == 5 == store.counts()["pairs"]
    buffer.extend(segment(float(v), 300 + i, rng) for i, v in enumerate(rng.uniform(-1, 1, 20)))
    assert learner.ask(9, env_step=300) == 4  # the postponed pairs, once segments differ again
    store.close()


@pytest.mark.parametrize("people", [False, True])
def test_a_round_whose_segments_all_end_at_once_is_an_error_first_and_for_people(tmp_path: Path, people: bool) -> None:
    # People's runs too: a paced policy would wait for ever for answers to pairs never asked.
    config = TrainConfig(env_id="Pendulum-v1", run_dir=tmp_path, labels=20, steps=10_000).resolve()
    store = PreferenceStore(sqlite_url(tmp_path / "prefs.sqlite"), run_name="r")
    buffer = SegmentBuffer(100)
    buffer.extend(segment(0.01 * i, i) for i in range(40))
    learner = PreferenceLearner(config, store, build_reward_model(OBS, ACT, config.reward_model), buffer,
                                None if people else make_teacher("oracle", seed=0), query_rule=query_rule(QueryConfig("uniform")))
    learner._asks_gold = False
    if people:
        assert learner.ask(5, env_step=0) == 5
    buffer.extend(at_once(0.01 * i, 100 + i) for i in range(100))
    with pytest.raises(NotEnoughSegmentsError, match=r"label round at env step 100: \d+ pairs .* show a difference"):
        learner.ask(9 if people else 5, env_step=100)
    assert store.counts()["pairs"] == (5 if people else 0)
    store.close()
