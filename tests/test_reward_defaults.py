"""Defaults that work on an env without a preset: standardised inputs, a fit budget per label,
segments as long as a short clip of the env's own clock."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from prefloop.envs.presets import default_preset
from prefloop.envs.timing import segment_length_for
from prefloop.reward_models import (
    RewardModelConfig,
    RewardTrainer,
    build_reward_model,
    load_reward_model,
    save_reward_model,
)

from prefloop.types import LabeledPair, Segment

OBS = gym.spaces.Box(-np.inf, np.inf, shape=(3,), dtype=np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def mixed_scale_segments(n: int, rng: np.random.Generator, length: int = 10) -> list[Segment]:
    """Reward = the second observation, which varies ~1000x less than the first (pure noise)."""
    out = []
    for _ in range(n):
        obs = np.stack([rng.normal(0, 50, length), rng.normal(rng.normal(0, 0.02), 0.01, length),
                        rng.normal(0, 1, length)], axis=1).astype(np.float32)
        actions = rng.uniform(-1, 1, size=(length, 1)).astype(np.float32)
        out.append(Segment(obs, actions, obs[:, 1].copy(), length, False, 0, 0, actions))
    return out


def pairs_of(segments: list[Segment]) -> list[LabeledPair]:
    return [
        LabeledPair(a, b, 1.0 if b.true_return > a.true_return else 0.0, pair_id=i)
        for i, (a, b) in enumerate(zip(segments[::2], segments[1::2]))
    ]


def test_updating_input_statistics_does_not_change_the_reward(tmp_path: Path) -> None:
    model = build_reward_model(OBS, ACT, RewardModelConfig(n_members=3, hidden_sizes=(16, 16)))
    rng = np.random.default_rng(0)
    obs = rng.normal(0, 3, size=(64, 3)).astype(np.float32)
    actions = rng.uniform(-1, 1, size=(64, 1)).astype(np.float32)
    before_raw = model(torch.as_tensor(obs), torch.as_tensor(actions)).detach()
    before = model.predict(obs, actions)
    assert model.input_dim == 5  # 3 observation values, the action and its square
    model.set_input_normalization(np.array([1.0, -2.0, 0.5, 0.1, 0.3]), np.array([3.0, 4.0, 2.0, 0.6, 0.4]))
    torch.testing.assert_close(model(torch.as_tensor(obs), torch.as_tensor(actions)).detach(), before_raw, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.predict(obs, actions), before, rtol=1e-4, atol=1e-4)
    save_reward_model(model, tmp_path / "m")
    np.testing.assert_allclose(load_reward_model(tmp_path / "m").predict(obs, actions), before, rtol=1e-4, atol=1e-4)


def test_inputs_of_very_different_scales_are_learned_with_standardisation() -> None:
    rng = np.random.default_rng(1)
    # 100 training pairs: with 200, a fit that trains on all of them for long enough learns the
    # tiny feature even unstandardised (0.945); at small budgets standardisation is what finds it.
    train_pairs = pairs_of(mixed_scale_segments(200, rng))
    test_pairs = pairs_of(mixed_scale_segments(400, rng))
    accuracy = {}
    for normalize in (True, False):
        config = RewardModelConfig(n_members=3, hidden_sizes=(32, 32), normalize_inputs=normalize, seed=0)
        model = build_reward_model(OBS, ACT, config)
        RewardTrainer(model, config).fit(train_pairs)
        p_right = model.preference_probs([p.left for p in test_pairs], [p.right for p in test_pairs]).mean(0)
        accuracy[normalize] = float(np.mean((p_right > 0.5) == np.array([p.target > 0.5 for p in test_pairs])))
    assert accuracy[True] >= 0.85, accuracy
    assert accuracy[True] > accuracy[False] + 0.1, accuracy


def test_fit_cost_is_bounded_per_new_label() -> None:
    rng = np.random.default_rng(2)
    # Labels no model can explain (coin flips): early stopping never triggers, the budget must.
    segments = mixed_scale_segments(400, rng)
    pairs = [LabeledPair(a, b, float(rng.integers(0, 2)), pair_id=i) for i, (a, b) in enumerate(zip(segments[::2], segments[1::2]))]
    config = RewardModelConfig(n_members=2, hidden_sizes=(8,), steps_per_label=3, warm_steps_per_label=2,
                               min_steps_per_fit=5, batch_size=16)
    trainer = RewardTrainer(build_reward_model(OBS, ACT, config), config)
    assert trainer.fit(pairs[:100]).steps == 300  # 100 new labels x 3, from scratch
    assert trainer.fit(pairs[:110]).steps == 20  # 10 new labels x 2, warm
    assert trainer.fit(pairs[:112]).steps == 5  # the floor
    assert trainer.fit(pairs[:112]).steps == 5  # nothing new: the floor again, never a full cap


@pytest.mark.parametrize(
    ("seconds_per_step", "max_episode_steps", "expected"),
    [
        (0.02, 50, 25),  # Reacher: 1.5 s would be 75 steps, but half an episode is 25
        (0.04, 1000, 38),  # InvertedPendulum
        (1 / 30, 200, 45),  # MountainCar (render_fps 30)
        (0.25, 100, 6),  # toy text at 4 fps
        (0.001, None, 50),  # a fine clock: capped at 50 steps
        (10.0, None, 5),  # a coarse clock: at least 5 steps
        (None, None, 50),  # no clock known
    ],
)
def test_segment_length_is_a_short_clip_of_the_envs_clock(seconds_per_step, max_episode_steps, expected) -> None:
    assert segment_length_for(seconds_per_step, max_episode_steps) == expected


def test_an_env_without_a_preset_gets_its_segment_length_from_its_clock() -> None:
    assert default_preset("MountainCar-v0").segment_length == 45
    assert default_preset("CliffWalking-v1").segment_length == 6
    assert default_preset("Pendulum-v1").segment_length == 25  # a preset keeps its own


@pytest.mark.slow
def test_an_env_without_a_preset_learns_with_the_defaults(tmp_path: Path) -> None:
    """InvertedDoublePendulum has no preset: every choice below is a general default."""
    pytest.importorskip("mujoco")
    from prefloop.envs import EnvSpec, SegmentBuffer, VecSegmentRecorder

    from prefloop.training.config import TrainConfig
    from prefloop.training.loop import build_vec_env, collect_random, train
    from prefloop.training.rundir import RunDir

    env_id = "InvertedDoublePendulum-v5"
    result = train(TrainConfig(env_id=env_id, run_dir=tmp_path / "run", labels=40, steps=6_000, seed=0,
                               progress_bar=False, eval_episodes=1))
    assert result.config.segment_length == 30  # 1.5 s of its 0.05 s steps
    model = load_reward_model(reward_dir_of(RunDir(tmp_path / "run")))
    # Judged on segments the run never saw: random play from other seeds, oracle answers.
    buffer = SegmentBuffer(2_000)
    collect_random(VecSegmentRecorder(build_vec_env(EnvSpec(env_id), 2, seed=500), buffer, 30, seed=500), 6_000, seed=500)
    segments = buffer.recent()
    rng = np.random.default_rng(0)
    picks = [tuple(rng.choice(len(segments), 2, replace=False)) for _ in range(300)]
    left, right = [segments[i] for i, _ in picks], [segments[j] for _, j in picks]
    p_right = model.preference_probs(left, right).mean(0)
    truth = np.array([r.true_return - l.true_return for l, r in zip(left, right)])
    decided = truth != 0
    accuracy = float(np.mean((p_right > 0.5)[decided] == (truth > 0)[decided]))
    assert accuracy > 0.75, accuracy


def reward_dir_of(run: "RunDir") -> Path:
    checkpoint = run.latest_checkpoint()
    assert checkpoint is not None
    return checkpoint / "reward_model"


def test_accuracy_is_measured_on_each_label_before_the_model_learns_it() -> None:
    rng = np.random.default_rng(3)
    segments = mixed_scale_segments(600, rng)
    truthful = pairs_of(segments)  # 300 pairs labelled by the true return
    config = RewardModelConfig(n_members=2, hidden_sizes=(32, 32), seed=0)
    assert config.val_fraction == 0  # the default: every label is trained on
    trainer = RewardTrainer(build_reward_model(OBS, ACT, config), config)
    first = trainer.fit(truthful[:200])
    assert (first.n_train, first.n_val, first.val_accuracy) == (200, 0, None)  # nothing predicted before its fit yet
    # 20 new labels, every one the opposite of the truth: a model judged after learning them would
    # get some right; judged before, it gets (nearly) none right.
    flipped = [LabeledPair(p.left, p.right, 1.0 - p.target, pair_id=p.pair_id) for p in truthful[200:220]]
    second = trainer.fit(truthful[:200] + flipped)
    assert second.n_train == 220 and second.n_val == 20
    assert second.val_accuracy is not None and second.val_accuracy <= 0.2
    # The next 30 honest labels: the window holds the newest 50 predictions, 20 wrong-side flips first.
    third = trainer.fit(truthful[:200] + flipped + truthful[220:250])
    assert third.n_val == 50
    assert 0.3 <= third.val_accuracy <= 0.65
    # Nothing new: the estimate stays where it was.
    assert trainer.fit(truthful[:200] + flipped + truthful[220:250]).val_accuracy == third.val_accuracy


def test_a_fit_uses_half_its_budget_before_it_may_stop_early() -> None:
    rng = np.random.default_rng(4)
    segments = mixed_scale_segments(40, rng)
    for segment in segments:  # an easy reward: a level, the same at every step, seen in the third observation
        segment.obs[:, 2] = rng.uniform(-2, 2)
        segment.true_rewards[:] = segment.obs[:, 2]
    pairs = pairs_of(segments)  # 20 pairs: one epoch is one step
    config = RewardModelConfig(n_members=2, hidden_sizes=(16,), min_steps_per_fit=60, steps_per_label=50, epochs=2000, seed=0)
    trainer = RewardTrainer(build_reward_model(OBS, ACT, config), config)
    assert 500 <= trainer.fit(pairs).steps < 1000  # 20 new labels x 50 = a budget of 1000: half at least, then the stop
    assert trainer.fit(pairs).steps == 30  # warm, nothing new: a budget of 60 (the floor), half of it, then the stop


def test_members_trained_on_the_same_pairs_still_disagree_off_the_data() -> None:
    rng = np.random.default_rng(5)
    pairs = pairs_of(mixed_scale_segments(60, rng))
    config = RewardModelConfig(n_members=3, hidden_sizes=(32, 32), seed=0)
    assert config.bootstrap is False
    model = build_reward_model(OBS, ACT, config)
    RewardTrainer(model, config).fit(pairs)
    far = mixed_scale_segments(40, np.random.default_rng(6))
    for s in far:
        s.obs[:, 2] += 8.0  # a region no labelled segment visited
    probs = model.preference_probs(far[::2], far[1::2])
    assert probs.std(axis=0).mean() > 0.02  # query selection has a disagreement to use
