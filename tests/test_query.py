"""Query selection: uniform pairs, ensemble disagreement and entropy, and its error messages."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from prefloop.training.query import (
    QUERY_METHODS,
    NotEnoughSegmentsError,
    QueryConfig,
    QueryConfigError,
    select_pairs,
)
from prefloop.types import Segment, SegmentPair


def seg(index: int, length: int = 4) -> Segment:
    """A segment tagged with ``index`` (in ``env_step``) so tests can tell segments apart."""
    return Segment(
        obs=np.full((length, 2), index, dtype=np.float32),  # distinct clips: identical ones are never asked
        actions=np.zeros(length, dtype=np.int64),
        true_rewards=np.zeros(length, dtype=np.float32),
        n_valid=length,
        terminated=False,
        episode_seed=index,
        start_step=0,
        episode_actions=np.zeros(length, dtype=np.int64),
        env_step=index,
    )


def segments(n: int) -> list[Segment]:
    return [seg(i) for i in range(n)]


def key(pair: SegmentPair) -> frozenset[int]:
    return frozenset((pair.left.env_step, pair.right.env_step))


def ordered(pairs: list[SegmentPair]) -> list[tuple[int, int]]:
    return [(p.left.env_step, p.right.env_step) for p in pairs]


def check_distinct(pairs: list[SegmentPair]) -> None:
    assert all(p.left is not p.right for p in pairs)
    assert len({key(p) for p in pairs}) == len(pairs)


def test_uniform_returns_n_distinct_pairs_deterministically() -> None:
    config = QueryConfig(method="uniform")
    pool = segments(20)
    pairs = select_pairs(pool, 15, config, np.random.default_rng(0))
    assert len(pairs) == 15
    check_distinct(pairs)
    assert all(p.score == 0.0 for p in pairs)
    assert all(p.left in pool and p.right in pool for p in pairs)
    again = select_pairs(pool, 15, config, np.random.default_rng(0))
    assert ordered(again) == ordered(pairs)
    other = select_pairs(pool, 15, config, np.random.default_rng(1))
    assert ordered(other) != ordered(pairs)


def test_uniform_can_use_every_distinct_pair_once() -> None:
    pairs = select_pairs(segments(6), 15, QueryConfig(method="uniform"), np.random.default_rng(0))
    check_distinct(pairs)
    assert {key(p) for p in pairs} == {frozenset((i, j)) for i in range(6) for j in range(i)}


def test_uniform_puts_each_segment_on_both_sides() -> None:
    pairs = select_pairs(segments(30), 200, QueryConfig(method="uniform"), np.random.default_rng(0))
    # Without the random orientation the older segment would always be on the same side.
    later_on_right = sum(p.right.env_step > p.left.env_step for p in pairs)
    assert 60 < later_on_right < 140


def test_segment_listed_twice_is_never_paired_with_itself() -> None:
    a, b = seg(0), seg(1)
    pairs = select_pairs([a, a, b, b], 1, QueryConfig(method="uniform"), np.random.default_rng(0))
    assert key(pairs[0]) == frozenset((0, 1))
    with pytest.raises(NotEnoughSegmentsError):
        select_pairs([a, a, b, b], 2, QueryConfig(method="uniform"), np.random.default_rng(0))


class FakeEnsemble:
    """Members' P(right) = mean(pair) -/+ spread(pair), from the segments' indices."""

    def __init__(self, mean, spread) -> None:
        self.mean, self.spread, self.calls = mean, spread, []

    def __call__(self, lefts: Sequence[Segment], rights: Sequence[Segment]) -> np.ndarray:
        self.calls.append(len(lefts))
        pairs = [(a.env_step, b.env_step) for a, b in zip(lefts, rights)]
        mean = np.array([self.mean(i, j) for i, j in pairs])
        spread = np.array([self.spread(i, j) for i, j in pairs])
        return np.stack([mean - spread, mean, mean + spread])


def test_disagreement_picks_the_pairs_members_disagree_on_most() -> None:
    # 8 segments: 28 pairs, all scored (oversampling 10 * 3 is capped at 28).
    ensemble = FakeEnsemble(
        mean=lambda i, j: 0.5, spread=lambda i, j: (i + j) / 40 + abs(i - j) / 1000
    )
    config = QueryConfig("disagreement")
    pairs = select_pairs(segments(8), 3, config, np.random.default_rng(0), ensemble)
    assert ensemble.calls == [28]
    assert [key(p) for p in pairs] == [frozenset(s) for s in [(6, 7), (5, 7), (4, 7)]]
    expected_std = [np.std([-s, 0.0, s]) for s in (13 / 40 + 1e-3, 12 / 40 + 2e-3, 11 / 40 + 3e-3)]
    np.testing.assert_allclose([p.score for p in pairs], expected_std, rtol=1e-9)


def test_entropy_picks_mean_probabilities_nearest_one_half() -> None:
    # Disagreement is largest where the mean is far from 0.5, so the two methods must differ.
    ensemble = FakeEnsemble(
        mean=lambda i, j: 0.5 + (i + j) / 60 + abs(i - j) / 2000,
        spread=lambda i, j: (i + j) / 100,
    )
    rng_seed = 0
    config = QueryConfig("entropy")
    entropy = select_pairs(segments(8), 2, config, np.random.default_rng(rng_seed), ensemble)
    # Smallest |mean - 0.5| = (i + j) / 60 + |i - j| / 2000: pairs {0, 1} then {0, 2}.
    assert [key(p) for p in entropy] == [frozenset((0, 1)), frozenset((0, 2))]
    assert entropy[0].score > entropy[1].score
    assert entropy[0].score <= np.log(2)
    disagreement = select_pairs(
        segments(8), 2, QueryConfig("disagreement"), np.random.default_rng(rng_seed), ensemble
    )
    assert {key(p) for p in disagreement}.isdisjoint({key(p) for p in entropy})


def test_oversampling_sets_how_many_candidates_are_scored() -> None:
    ensemble = FakeEnsemble(mean=lambda i, j: 0.5, spread=lambda i, j: 0.1)
    pool = segments(40)  # 780 pairs
    rng = np.random.default_rng(0)
    select_pairs(pool, 5, QueryConfig("disagreement", oversampling=4), rng, ensemble)
    select_pairs(pool, 5, QueryConfig("entropy", oversampling=1), rng, ensemble)
    assert ensemble.calls == [20, 5]


def test_active_selection_is_deterministic_for_a_seed() -> None:
    ensemble = FakeEnsemble(
        mean=lambda i, j: 0.5, spread=lambda i, j: ((i * 31 + j * 17) % 23) / 100
    )
    pool = segments(50)

    def run(seed: int) -> list[tuple[int, int]]:
        return ordered(select_pairs(pool, 10, QueryConfig(), np.random.default_rng(seed), ensemble))

    assert run(3) == run(3)
    assert run(3) != run(4)


@pytest.mark.parametrize("method", ["disagreement", "entropy"])
def test_without_a_model_active_methods_fall_back_to_uniform(method: str) -> None:
    pool = segments(12)
    active = select_pairs(pool, 6, QueryConfig(method), np.random.default_rng(5))
    uniform = select_pairs(pool, 6, QueryConfig("uniform"), np.random.default_rng(5))
    assert ordered(active) == ordered(uniform)
    check_distinct(active)


def test_bad_preference_probs_are_reported() -> None:
    pool = segments(10)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"shape \(n_members, 20\)"):
        select_pairs(pool, 2, QueryConfig(), rng, lambda a, b: np.full(len(a), 0.5))
    with pytest.raises(ValueError, match=r"\[0, 1\], got values in \[1.5, 1.5\]"):
        select_pairs(pool, 2, QueryConfig(), rng, lambda a, b: np.full((3, len(a)), 1.5))
    with pytest.raises(ValueError, match="nan/inf"):
        select_pairs(pool, 2, QueryConfig(), rng, lambda a, b: np.full((3, len(a)), np.nan))


def test_not_enough_segments_message_says_what_and_how_to_fix() -> None:
    with pytest.raises(NotEnoughSegmentsError) as info:
        select_pairs(segments(1), 1, QueryConfig(), np.random.default_rng(0))
    message = str(info.value)
    assert "at least 2 distinct segments" in message and "only 1 exist" in message
    assert "environment steps" in message and "fewer labels" in message

    with pytest.raises(NotEnoughSegmentsError) as info:
        select_pairs(segments(4), 7, QueryConfig("uniform"), np.random.default_rng(0))
    message = str(info.value)  # 4 segments make 6 pairs; 7 pairs need 5 segments
    assert "7 distinct pairs" in message and "at least 5" in message
    assert "only 4 exist (6 distinct pairs)" in message


def test_zero_pairs_is_empty_and_negative_is_an_error() -> None:
    assert select_pairs(segments(1), 0, QueryConfig(), np.random.default_rng(0)) == []
    with pytest.raises(ValueError, match="n_pairs"):
        select_pairs(segments(5), -1, QueryConfig(), np.random.default_rng(0))


def test_config_validation_names_the_problem() -> None:
    with pytest.raises(QueryConfigError) as info:
        QueryConfig(method="random")
    assert "'random'" in str(info.value)
    assert all(m in str(info.value) for m in QUERY_METHODS)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(QueryConfigError, match="oversampling"):
            QueryConfig(oversampling=bad)


@pytest.mark.parametrize(("settings", "fix"), [
    ({"n_envs": 10_000, "steps": 3_000}, "Each of the 10000 envs gets 0 of the 3000 steps, fewer than one segment"),
    ({"steps": 1}, "fewer than one segment"),
    ({"segment_length": 100_000, "steps": 3_000}, "fewer than one segment (100000 steps)"),
    ({"labels": 100_000_000, "steps": 3_000}, "With --labels 100000000 over 3000 steps, use fewer --labels"),
])
def test_too_few_segments_names_the_setting_that_causes_it(tmp_path, settings: dict, fix: str) -> None:
    from prefloop.training.config import TrainConfig
    from prefloop.training.learner import too_few_segments_fix

    config = TrainConfig(env_id="CartPole-v1", run_dir=tmp_path, **{"labels": 10, **settings}).resolve()
    assert fix in too_few_segments_fix(config)


def test_too_few_segments_from_episodes_shorter_than_a_segment_names_the_segment_length(tmp_path) -> None:
    from prefloop.training.config import TrainConfig
    from prefloop.training.learner import too_few_segments_fix

    config = TrainConfig(env_id="CartPole-v1", run_dir=tmp_path, labels=30, steps=6_000, segment_length=50).resolve()
    fix = too_few_segments_fix(config, longest_uncut_episode=40)
    assert "cut off (truncated) after at most 40 steps, fewer than one segment (50 steps)" in fix
    assert "--segment-length 20 or less" in fix and "fewer --labels" not in fix
