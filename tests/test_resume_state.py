"""An off-policy run resumes with its replay buffer, and the reward model with its optimiser."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from prefloop.reward_models import (
    RewardModelConfig,
    RewardTrainer,
    load_reward_model,
    save_reward_model,
)
from stable_baselines3 import SAC

from prefloop.training.config import TrainConfig
from prefloop.training.loop import train
from prefloop.training.resume_state import (
    REPLAY_BUFFER_FILE,
    restore_resume_state,
    save_resume_state,
)
from prefloop.training.rundir import RunDir


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def test_checkpointed_replay_buffer_and_reward_optimiser_come_back(tmp_path: Path) -> None:
    import gymnasium as gym

    model = SAC("MlpPolicy", gym.make("Pendulum-v1"), learning_starts=50, buffer_size=1_000, seed=0, verbose=0)
    model.learn(300)
    from prefloop.reward_models import build_reward_model

    from prefloop.types import LabeledPair, Segment

    config = RewardModelConfig(n_members=2, hidden_sizes=(8,), min_steps_per_fit=5)
    reward = build_reward_model(model.observation_space, model.action_space, config)
    trainer = RewardTrainer(reward, config)
    rng = np.random.default_rng(0)

    def segment() -> Segment:
        obs = rng.uniform(-1, 1, size=(10, 3)).astype(np.float32)
        actions = rng.uniform(-2, 2, size=(10, 1)).astype(np.float32)
        return Segment(obs, actions, obs[:, 0].copy(), 10, False, 0, 0, actions)

    trainer.fit([LabeledPair(segment(), segment(), float(i % 2), pair_id=i) for i in range(12)])
    save_resume_state(tmp_path, model, trainer)
    save_reward_model(reward, tmp_path / "reward_model")

    fresh = SAC("MlpPolicy", gym.make("Pendulum-v1"), learning_starts=50, buffer_size=1_000, seed=1, verbose=0)
    fresh_trainer = RewardTrainer(load_reward_model(tmp_path / "reward_model"), config)
    assert fresh.replay_buffer.size() == 0
    restore_resume_state(tmp_path, fresh, fresh_trainer)

    assert fresh.replay_buffer.size() == model.replay_buffer.size() == 300
    np.testing.assert_array_equal(fresh.replay_buffer.observations, model.replay_buffer.observations)
    np.testing.assert_array_equal(fresh.replay_buffer.actions, model.replay_buffer.actions)
    assert fresh_trainer.counters() == trainer.counters() == {"n_fits": 1, "pairs_fitted": 12}
    saved_state = trainer.optimizer.state_dict()["state"]
    restored_state = fresh_trainer.optimizer.state_dict()["state"]
    assert saved_state.keys() == restored_state.keys() and saved_state
    for key in saved_state:
        torch.testing.assert_close(restored_state[key]["exp_avg_sq"], saved_state[key]["exp_avg_sq"])


def test_reward_fit_resumed_from_an_older_checkpoint_continues_bit_for_bit(tmp_path: Path) -> None:
    """A checkpoint written before the trainer's multi-tensor Adam (its ``foreach`` is None) resumes
    on the multi-tensor path, and the next fit gives exactly the weights of a run that never stopped."""
    import gymnasium as gym

    from prefloop.reward_models import build_reward_model
    from prefloop.types import LabeledPair, Segment

    rng = np.random.default_rng(0)

    def segment() -> Segment:
        obs = rng.uniform(-1, 1, size=(10, 3)).astype(np.float32)
        actions = rng.uniform(-2, 2, size=(10, 1)).astype(np.float32)
        return Segment(obs, actions, obs[:, 0].copy(), 10, False, 0, 0, actions)

    pairs = [LabeledPair(segment(), segment(), float(i % 3 == 0), pair_id=i) for i in range(30)]
    obs_space = gym.spaces.Box(-1, 1, (3,), np.float32)
    act_space = gym.spaces.Box(-2, 2, (1,), np.float32)
    config = RewardModelConfig(n_members=2, hidden_sizes=(16, 16), min_steps_per_fit=20)
    uninterrupted = RewardTrainer(build_reward_model(obs_space, act_space, config), config)
    uninterrupted.fit(pairs[:18])
    save_reward_model(uninterrupted.model, tmp_path / "reward_model")
    torch.save(uninterrupted.optimizer.state_dict(), tmp_path / "optimizer.pt")
    old_state = torch.load(tmp_path / "optimizer.pt", weights_only=True)
    for group in old_state["param_groups"]:
        group["foreach"] = None  # as torch.optim.Adam's default wrote it

    resumed = RewardTrainer(load_reward_model(tmp_path / "reward_model"), config)
    resumed.load_optimizer_state(old_state)
    resumed.restore_counters(uninterrupted.counters())
    uninterrupted.fit(pairs)
    resumed.fit(pairs)

    assert all(group["foreach"] is True for group in resumed.optimizer.param_groups)
    for before, after in zip(uninterrupted.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(before, after)


@pytest.mark.slow
def test_off_policy_resume_restores_the_replay_buffer(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "run"
    config = TrainConfig(
        env_id="Pendulum-v1", run_dir=run, algo="sac", steps=1_000, labels=10, seed=0, progress_bar=False,
        eval_episodes=1, algo_kwargs={"learning_starts": 100, "train_freq": 8, "gradient_steps": 1},
        reward_model=RewardModelConfig(epochs=5),
    )
    train(config)
    checkpoint = RunDir(run).latest_checkpoint()
    assert checkpoint is not None and (checkpoint / REPLAY_BUFFER_FILE).is_file()
    # As if killed after its last checkpoint, before the summary: a finished run is not resumed.
    (run / "summary.json").unlink()
    with caplog.at_level(logging.INFO, logger="prefloop"):
        train(TrainConfig(env_id="Pendulum-v1", run_dir=run), resume=True)
    restored = [r.getMessage() for r in caplog.records if "replay buffer restored" in r.getMessage()]
    # the policy stepped 1000 env steps minus the random-play steps that made the first segments
    assert restored and int(restored[0].split(": ")[1].split()[0]) >= 800, restored


def test_rater_reliability_is_checkpointed_and_restored(tmp_path: Path) -> None:
    """A crowd run's checkpoint keeps each rater's estimate; a resumed trainer starts from them (the
    flagged adversarial rater stays at weight 0), and a damaged estimate makes the checkpoint unusable."""
    import gymnasium as gym
    import json

    from prefloop.reward_models import build_reward_model
    from prefloop.store import PreferenceStore, sqlite_url
    from prefloop.teachers.crowd import make_crowd_teacher
    from prefloop.teachers.labeling import answer_pending
    from prefloop.training.checkpoints import checkpoint_problems
    from prefloop.training.resume_state import TRAINER_FILE
    from prefloop.types import Segment, SegmentPair
    from stable_baselines3 import PPO

    rng = np.random.default_rng(0)
    segments = []
    for i in range(160):
        obs = (rng.normal(size=(10, 3)) + rng.normal()).astype(np.float32)
        actions = rng.uniform(-2, 2, size=(10, 1)).astype(np.float32)
        segments.append(Segment(obs, actions, obs[:, 0].copy(), 10, False, i, 0, actions))
    store = PreferenceStore(sqlite_url(tmp_path / "prefs.sqlite"), run_name="crowd")
    store.add_pairs([SegmentPair(segments[2 * i], segments[2 * i + 1]) for i in range(80)])
    answer_pending(store, make_crowd_teacher("crowd:3xcareful@0.05,adversarial", seed=0))
    env = gym.make("Pendulum-v1")
    config = RewardModelConfig(hidden_sizes=(16,), epochs=40)
    trainer = RewardTrainer(build_reward_model(env.observation_space, env.action_space, config), config)
    for _ in range(2):
        trainer.fit(store.labeled_pairs())
    assert trainer.rater_estimates is not None
    assert {e.rater_id for e in trainer.rater_estimates if e.flagged} == {"sim-adversarial-1"}

    policy = PPO("MlpPolicy", env, n_steps=16, batch_size=16, seed=0)
    checkpoint = tmp_path / "step-16"
    checkpoint.mkdir()
    policy.save(checkpoint / "policy.zip")
    (checkpoint / "state.json").write_text(json.dumps({"env_step": 16}))
    save_reward_model(trainer.model, checkpoint / "reward_model")
    save_resume_state(checkpoint, policy, trainer)

    fresh = RewardTrainer(load_reward_model(checkpoint / "reward_model"), config)
    assert fresh.rater_estimates is None
    restore_resume_state(checkpoint, policy, fresh)
    assert fresh.rater_estimates == trainer.rater_estimates
    assert checkpoint_problems(checkpoint, reward_model=True) == []

    state = json.loads((checkpoint / TRAINER_FILE).read_text())
    state["rater_estimates"][0]["error_rate"] = "high"
    (checkpoint / TRAINER_FILE).write_text(json.dumps(state))
    (problem,) = checkpoint_problems(checkpoint, reward_model=True)
    assert TRAINER_FILE in problem and "error_rate" in problem
