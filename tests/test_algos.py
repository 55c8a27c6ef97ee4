"""Composing with SB3: algorithm choice and off-policy replay relabelling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from prefloop.envs import EnvSpec, VecLearnedReward
from prefloop.reward_models import RewardEnsemble
from stable_baselines3 import DQN, SAC

from prefloop.training.algos import (
    AlgorithmError,
    algorithm_class,
    check_algorithm_fits,
    relabel_replay_buffer,
    resolve_schedules,
)
from prefloop.training.loop import build_vec_env


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.mark.parametrize(("env_id", "algo_cls"), [("Pendulum-v1", SAC), ("CartPole-v1", DQN)])
def test_relabelling_rewrites_every_stored_reward_with_the_current_model(env_id: str, algo_cls) -> None:
    venv = build_vec_env(EnvSpec(env_id), n_envs=1, seed=0)
    reward_model = RewardEnsemble(venv.observation_space, venv.action_space, n_members=2, seed=0)
    env = VecLearnedReward(venv, reward_model)
    model = algo_cls("MlpPolicy", env, learning_starts=50, buffer_size=1000, seed=0, verbose=0)
    model.learn(200)
    buffer = model.replay_buffer
    filled = buffer.pos
    obs = buffer.observations[:filled, 0]
    stored_actions = buffer.actions[:filled, 0]
    env_actions = model.policy.unscale_action(stored_actions) if algo_cls is SAC else stored_actions[:, 0].astype(np.int64)
    # the rewards recorded during collection were the learned ones for the env action
    np.testing.assert_allclose(buffer.rewards[:filled, 0], reward_model.predict(obs, env_actions), rtol=1e-5, atol=1e-6)

    with torch.no_grad():  # the reward model changes (as after a training round) ...
        reward_model.weights[-1].mul_(-3.0)
    assert not np.allclose(buffer.rewards[:filled, 0], reward_model.predict(obs, env_actions))
    assert relabel_replay_buffer(model, reward_model) == filled
    # ... and every stored transition now carries the new reward
    np.testing.assert_allclose(buffer.rewards[:filled, 0], reward_model.predict(obs, env_actions), rtol=1e-5, atol=1e-6)


def test_algorithm_names_and_action_spaces_are_checked() -> None:
    with pytest.raises(AlgorithmError, match="Did you mean 'ppo'"):
        algorithm_class("ppo2")
    venv = build_vec_env(EnvSpec("CartPole-v1"), n_envs=1, seed=0)
    with pytest.raises(AlgorithmError, match="Box action space"):
        check_algorithm_fits("sac", venv.action_space, "CartPole-v1")


def test_zoo_linear_schedules_decay_to_zero() -> None:
    resolved = resolve_schedules({"learning_rate": "lin_0.001", "n_steps": 32})
    assert resolved["n_steps"] == 32
    assert resolved["learning_rate"](1.0) == pytest.approx(0.001)  # SB3 passes progress_remaining
    assert resolved["learning_rate"](0.0) == pytest.approx(0.0)


def test_building_an_algorithm_changes_neither_the_run_config_nor_the_preset(tmp_path) -> None:
    """SB3's SAC writes use_sde into policy_kwargs; a shared dict once carried that into every later
    run of a bench worker, so their config.json differed and their baselines could not be reused."""
    from prefloop.training.algos import make_algorithm
    from prefloop.training.config import TrainConfig

    first = TrainConfig(env_id="MountainCarContinuous-v0", run_dir=tmp_path / "a").resolve()
    assert first.algo_kwargs["use_sde"] and "use_sde" not in first.algo_kwargs["policy_kwargs"]
    before = first.to_json()
    make_algorithm(first.algo, build_vec_env(EnvSpec(first.env_id), 1, 0), first.algo_kwargs, seed=0, tensorboard_dir=None)
    assert first.to_json() == before
    second = TrainConfig(env_id="MountainCarContinuous-v0", run_dir=tmp_path / "a").resolve()
    assert second.to_json() == before
