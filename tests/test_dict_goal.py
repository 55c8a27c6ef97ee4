"""Dict and Tuple observations end to end, on a small goal env (tests/goal_env.py): segments hold
the flat vector, the reward model learns from it, the policy is SB3's MultiInputPolicy."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from prefloop.envs import EnvSpec, SegmentBuffer, SegmentRenderer, VecSegmentRecorder
from prefloop.reward_models import RewardModelConfig, load_reward_model
from scipy import stats
from stable_baselines3 import PPO
from stable_baselines3.common.policies import MultiInputActorCriticPolicy

import goal_env
from prefloop.cli.main import main
from prefloop.datasets import export_dataset, import_dataset, load_dataset
from prefloop.store import PreferenceStore, sqlite_url
from prefloop.training.config import TrainConfig
from prefloop.training.loop import build_vec_env, collect_random, train
from prefloop.training.rundir import RunDir

SEGMENT_LENGTH = 10
DICT_DIM = 2 + 2 + 4  # achieved_goal, desired_goal, observation (sorted keys)
TUPLE_DIM = 4 + 2 + 2 + 5  # observation, (achieved, desired), last action one-hot


@pytest.fixture(autouse=True)
def setup() -> None:
    torch.set_num_threads(1)
    goal_env.register()


def goal_config(run_dir: Path, **changes) -> TrainConfig:
    base = dict(
        env_id=goal_env.ENV_ID, run_dir=run_dir, labels=200, steps=10_000, seed=0, progress_bar=False,
        eval_episodes=10, segment_length=SEGMENT_LENGTH, algo="ppo", n_envs=4,
        algo_kwargs={"n_steps": 128, "batch_size": 64}, reward_model=RewardModelConfig(epochs=30),
    )
    base.update(changes)
    return TrainConfig(**base)


def held_out_segments(env_id: str, seed: int) -> list:
    """Random-play segments from env seeds the run never saw."""
    buffer = SegmentBuffer(400)
    recorder = VecSegmentRecorder(build_vec_env(EnvSpec(env_id), 4, seed=seed), buffer, SEGMENT_LENGTH, seed=seed)
    collect_random(recorder, 2_000, seed)
    return buffer.recent()


def exported_segments(run: RunDir, out: Path) -> list:
    export_dataset(sqlite_url(run.store_path), run.path.name, out)
    return load_dataset(out).segments


@pytest.mark.slow
def test_dict_goal_env_learns_a_reward_and_a_multi_input_policy(tmp_path: Path) -> None:
    result = train(goal_config(tmp_path / "run"))
    run = RunDir(tmp_path / "run")
    assert result.labels_used == 200
    checkpoint = run.latest_checkpoint()
    assert isinstance(PPO.load(checkpoint / "policy.zip").policy, MultiInputActorCriticPolicy)

    # the learned reward ranks held-out segments like the true (dense goal-distance) return
    model = load_reward_model(checkpoint / "reward_model")
    assert model.observation_space == gym.make(goal_env.ENV_ID).observation_space
    segments = held_out_segments(goal_env.ENV_ID, seed=4242)
    true_returns = [s.true_return for s in segments]
    rho = stats.spearmanr(model.predict_segment_returns(segments), true_returns).statistic
    # measured 0.96 (seed 0; 0.95 and 0.97 with seeds 1 and 2); 0.68-0.89 with 100 labels, 6k steps
    assert rho > 0.85, f"learned reward ranks held-out segments badly: Spearman {rho:.2f} (chance: 0)"
    # the policy moves towards the goal: random play scores -23.2, PPO on the true reward -7.8,
    # this run -9.9 (seed 1 gives -28.5 with a good reward: docs/observations.md)
    assert result.eval_return_mean > -16, result.eval_return_mean

    # stored segments hold the flat vector; they export, re-render and import unchanged
    stored = exported_segments(run, tmp_path / "dataset")
    assert stored and all(s.obs.shape == (SEGMENT_LENGTH, DICT_DIM) and s.obs.dtype == np.float32 for s in stored)
    with SegmentRenderer(EnvSpec(goal_env.ENV_ID)) as renderer:
        frames = renderer.render(stored[-1], verify=True)  # replayed observations == stored vectors
    assert frames.shape == (SEGMENT_LENGTH + 1, 48, 48, 3)
    summary = import_dataset(tmp_path / "dataset", sqlite_url(tmp_path / "copy.db"), "copy")
    with PreferenceStore(sqlite_url(tmp_path / "copy.db"), run_name="copy") as store:
        copies = store.get_segments([summary.segment_ids[s.id] for s in stored])
    for original, copy in zip(stored, copies):
        np.testing.assert_array_equal(copy.obs, original.obs)
    assert summary.labels == 200


@pytest.mark.slow
def test_tuple_observations_train_through_a_leaf_dict(tmp_path: Path) -> None:
    train(goal_config(tmp_path / "run", env_id=goal_env.TUPLE_ENV_ID, labels=100, steps=6_000))
    run = RunDir(tmp_path / "run")
    model = load_reward_model(run.latest_checkpoint() / "reward_model")
    # SB3 reads no Tuple: the policy (and so the reward model) sees one Dict entry per leaf
    assert list(model.observation_space.spaces) == ["0", "1/0", "1/1", "2"]
    assert isinstance(PPO.load(run.latest_checkpoint() / "policy.zip").policy, MultiInputActorCriticPolicy)

    # the stored vector is gymnasium.spaces.flatten of the env's own Tuple observation
    segment = exported_segments(run, tmp_path / "dataset")[-1]
    assert segment.obs.shape == (SEGMENT_LENGTH, TUPLE_DIM)
    env = gym.make(goal_env.TUPLE_ENV_ID)
    obs, _ = env.reset(seed=segment.episode_seed)
    replayed = []
    for action in segment.episode_actions:
        replayed.append(gym.spaces.flatten(env.observation_space, obs))
        obs, *_ = env.step(int(action))
    np.testing.assert_allclose(segment.obs, np.stack(replayed[segment.start_step :]), atol=1e-6)

    segments = held_out_segments(goal_env.TUPLE_ENV_ID, seed=77)
    rho = stats.spearmanr(model.predict_segment_returns(segments), [s.true_return for s in segments]).statistic
    # measured 0.69 (seed 0; 0.82 with seed 1); 0.36 with 60 labels and 3k steps
    assert rho > 0.5, f"learned reward ranks held-out segments badly: Spearman {rho:.2f} (chance: 0)"


@pytest.mark.slow
def test_cli_trains_a_registered_dict_env(tmp_path: Path) -> None:
    code = main([
        "train", "--env", goal_env.ENV_ID, "--labels", "20", "--steps", "1500", "--segment-length",
        str(SEGMENT_LENGTH), "--algo", "ppo", "--eval-episodes", "2", "--run-dir", str(tmp_path / "cli"),
        "--no-progress",
    ])
    assert code == 0
    run = RunDir(tmp_path / "cli")
    assert load_reward_model(run.latest_checkpoint() / "reward_model").obs_encoder.dim == DICT_DIM
    with PreferenceStore(sqlite_url(run.store_path), run_name="cli") as store:
        assert store.counts()["labels"] == 20


def test_dict_replay_buffer_is_relabelled_with_flat_vectors() -> None:
    from stable_baselines3 import DQN

    from prefloop.reward_models import RewardEnsemble
    from prefloop.training.algos import make_algorithm, relabel_replay_buffer

    venv = build_vec_env(EnvSpec(goal_env.ENV_ID), 2, seed=0)
    model = make_algorithm("dqn", venv, {"learning_starts": 0, "buffer_size": 1_000}, seed=0, tensorboard_dir=None)
    assert isinstance(model, DQN) and type(model.policy).__name__ == "MultiInputPolicy"
    model.learn(100)
    reward_model = RewardEnsemble(venv.observation_space, venv.action_space, n_members=2, hidden_sizes=(8,))
    assert relabel_replay_buffer(model, reward_model) == model.replay_buffer.pos * 2
    buffer, rows = model.replay_buffer, model.replay_buffer.pos
    obs = {key: value[:rows].reshape(rows * 2, *buffer.obs_shape[key]) for key, value in buffer.observations.items()}
    expected = reward_model.predict(obs, buffer.actions[:rows].reshape(-1).astype(np.int64))
    np.testing.assert_allclose(buffer.rewards[:rows].reshape(-1), expected, rtol=1e-6)
