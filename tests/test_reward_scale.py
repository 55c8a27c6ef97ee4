"""The learned reward keeps its unit while labels accumulate and the policy improves."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from prefloop.reward_models import RewardModelConfig, RewardTrainer, build_reward_model

from prefloop.training.reward_scale import normalize_on_reference, reference_segments
from prefloop.types import LabeledPair, Segment

OBS = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
LENGTH = 10


def true_reward(obs: np.ndarray) -> np.ndarray:
    return obs[:, 0] + 0.5


def policy_segments(n: int, skill: float, rng: np.random.Generator) -> list[Segment]:
    """Segments of a policy whose states (and so true rewards) move up with ``skill``."""
    out = []
    for _ in range(n):
        obs = np.stack([rng.normal(skill, 0.5, LENGTH), rng.normal(0, 1, LENGTH)], axis=1).astype(np.float32)
        actions = rng.uniform(-1, 1, size=(LENGTH, 1)).astype(np.float32)
        out.append(Segment(obs, actions, true_reward(obs).astype(np.float32), LENGTH, False, 0, 0, actions))
    return out


def label(segments: list[Segment], start_id: int) -> list[LabeledPair]:
    return [
        LabeledPair(a, b, 1.0 if b.true_return > a.true_return else 0.0, pair_id=start_id + i)
        for i, (a, b) in enumerate(zip(segments[::2], segments[1::2]))
    ]


def scale_per_round(normalise) -> dict[str, list[float]]:
    """Learned reward per unit of true reward (least-squares slope), after each of 8 rounds in
    which the policy improves and 10 more labels arrive: on probe states where the reference set
    lies (``"reference"``, obs[0] < 1) and where the round's policy is (``"current"``, within 1 of
    its skill)."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    config = RewardModelConfig(n_members=3, hidden_sizes=(32, 32), seed=0)
    model = build_reward_model(OBS, ACT, config)
    trainer = RewardTrainer(model, config)
    probe_obs = np.stack([rng.uniform(-1, 4.5, 2000), rng.normal(0, 1, 2000)], axis=1).astype(np.float32)
    probe_actions = rng.uniform(-1, 1, size=(2000, 1)).astype(np.float32)
    labeled = label(policy_segments(40, 0.0, rng), 0)  # first round: 20 pairs
    slopes: dict[str, list[float]] = {"reference": [], "current": []}
    for round_ in range(8):
        skill = 0.5 * round_
        if round_:
            recent = policy_segments(20, skill, rng)
            labeled += label(recent, len(labeled))
        else:
            recent = [p.left for p in labeled] + [p.right for p in labeled]
        trainer.fit(labeled)
        normalise(model, labeled, recent)
        learned, true = model.predict(probe_obs, probe_actions), true_reward(probe_obs)
        for name, where in (("reference", probe_obs[:, 0] < 1.0), ("current", np.abs(probe_obs[:, 0] - skill) < 1.0)):
            slopes[name].append(float(np.polyfit(true[where], learned[where], 1)[0]))
    return slopes


def test_reward_unit_stays_within_a_band_as_labels_grow() -> None:
    slopes = scale_per_round(lambda model, labeled, recent: normalize_on_reference(model, labeled, 20))
    reference, current = slopes["reference"], slopes["current"]
    assert min(reference + current) > 0, slopes
    assert max(reference) / min(reference) < 1.4, slopes  # the unit, where it is defined, holds within a band
    # Where the policy is, the reward neither shrinks (the failure below) nor runs away. A model
    # that stops learning also fails here: with one epoch per fit it fell to 0.38 of its first slope.
    assert 0.75 < current[-1] / current[0] < 2.0, slopes
    assert max(current) / min(current) < 2.0, slopes


def test_rescaling_on_the_newest_segments_would_shrink_it() -> None:
    """The failure the fixed reference set avoids (and evidence the band above can be missed)."""
    current = scale_per_round(lambda model, labeled, recent: model.update_normalization_from_segments(recent))["current"]
    assert current[-1] / current[0] < 0.6, current


def test_reference_set_is_the_earliest_pairs_segments_and_does_not_move() -> None:
    rng = np.random.default_rng(3)
    first = label(policy_segments(8, 0.0, rng), 0)
    later = label(policy_segments(8, 2.0, rng), 4)
    reference = reference_segments(first, 4)
    assert reference_segments(list(reversed(first + later)), 4) == reference
    assert len(reference) == 8
