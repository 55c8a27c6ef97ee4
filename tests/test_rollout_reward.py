"""Deferred learned rewards: an on-policy learner gets a rollout's rewards in one predict at its
end, and learns exactly what it would have learned from per-step rewards."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from prefloop.envs import VecLearnedReward
from prefloop.reward_models import RewardModelConfig, build_reward_model
from prefloop.training.algos import rewards_wait_for_rollout_end
from prefloop.training.callbacks import RolloutRewardCallback
from prefloop.training.config import TrainConfig
from prefloop.training.loop import train
from sb3_contrib import RecurrentPPO
from stable_baselines3 import A2C, PPO, SAC
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv
from threadpoolctl import threadpool_info


def short_episodes_vec(env_id: str, n_envs: int, max_steps: int) -> DummyVecEnv:
    """Episodes cut by a time limit, so SB3's time-limit bootstrap lands in the rollout's rewards."""
    return DummyVecEnv([lambda: Monitor(gym.make(env_id, max_episode_steps=max_steps)) for _ in range(n_envs)])


def learned_reward_env(env_id: str, n_envs: int = 3, max_steps: int = 15) -> VecLearnedReward:
    venv = short_episodes_vec(env_id, n_envs, max_steps)
    model = build_reward_model(venv.observation_space, venv.action_space, RewardModelConfig(n_members=2), seed=0)
    return VecLearnedReward(venv, model)


def trained_parameters(algo: type, env_id: str, deferred: bool) -> list[torch.Tensor]:
    env = learned_reward_env(env_id)
    model = algo("MlpPolicy", env, n_steps=32, seed=3, device="cpu")
    callback = [RolloutRewardCallback(env)] if deferred else []
    model.learn(32 * 3 * 3, callback=callback)  # three rollouts
    assert not env.deferred, "rewards are per step again once training is over"
    return [p.detach().clone() for p in model.policy.parameters()]


@pytest.mark.parametrize(("algo", "env_id"), [(PPO, "CartPole-v1"), (PPO, "Pendulum-v1"), (A2C, "CartPole-v1")])
def test_deferred_rewards_train_the_same_policy_as_per_step_rewards(algo: type, env_id: str) -> None:
    per_step = trained_parameters(algo, env_id, deferred=False)
    deferred = trained_parameters(algo, env_id, deferred=True)
    # The same up to float32 rounding: one predict of 96 rows may round differently from 32 of 3 (BLAS
    # kernels differ by batch size), 1e-7 apart; rewards or advantages that were wrong would be far apart.
    for a, b in zip(per_step, deferred):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg="the deferred rollout trained a different policy")


def test_deferred_rewards_equal_per_step_rewards_and_book_the_same_returns() -> None:
    per_step_env, deferred_env = learned_reward_env("Pendulum-v1"), learned_reward_env("Pendulum-v1")
    rng = np.random.default_rng(0)
    actions = rng.uniform(-2, 2, size=(40, 3, 1)).astype(np.float32)
    for env in (per_step_env, deferred_env):
        env.seed(0)
        env.reset()
    deferred_env.defer(True)
    expected = []
    for step_actions in actions:
        _, rewards, _, infos = per_step_env.step(step_actions)
        expected.append(rewards)
        _, zeros, _, deferred_infos = deferred_env.step(step_actions)
        assert not zeros.any(), "a deferred step's reward is 0 until the rollout's end"
        assert [i["true_reward"] for i in deferred_infos] == [i["true_reward"] for i in infos]
    rewards = deferred_env.take_deferred_rewards()
    assert rewards.dtype == np.float32 and rewards.shape == (40, 3)
    np.testing.assert_allclose(rewards, np.stack(expected), rtol=1e-5, atol=1e-6)
    assert len(per_step_env.finished_returns) == 6, "40 steps of 15-step episodes in 3 envs end 6 of them"
    np.testing.assert_allclose(list(deferred_env.finished_returns), list(per_step_env.finished_returns), rtol=1e-5)
    assert deferred_env.take_deferred_rewards().shape == (0, 3), "taken rewards are not given twice"


def test_a_rollout_cut_short_is_not_given_to_the_next() -> None:
    env = learned_reward_env("CartPole-v1", n_envs=2)
    env.reset()
    env.defer(True)
    for _ in range(5):
        env.step(np.array([0, 1]))
    env.defer(True)  # a new rollout starts
    env.step(np.array([1, 1]))
    assert env.take_deferred_rewards().shape == (1, 2)


def test_only_learners_that_read_rewards_at_the_rollout_end_defer_them() -> None:
    cartpole, pendulum = short_episodes_vec("CartPole-v1", 1, 10), short_episodes_vec("Pendulum-v1", 1, 10)
    assert rewards_wait_for_rollout_end(PPO("MlpPolicy", cartpole, n_steps=16, device="cpu"))
    assert rewards_wait_for_rollout_end(A2C("MlpPolicy", cartpole, device="cpu"))
    assert not rewards_wait_for_rollout_end(SAC("MlpPolicy", pendulum, device="cpu", buffer_size=100))
    # collects its own rollouts (LSTM states), so it keeps per-step rewards
    assert not rewards_wait_for_rollout_end(RecurrentPPO("MlpLstmPolicy", cartpole, n_steps=16, device="cpu"))


class BlasThreadsWatcher:
    """An oracle that also notes how many BLAS threads numpy has while the run asks it."""

    rater_id = "oracle-watching-threads"

    def __init__(self) -> None:
        self.blas_threads: set[int] = set()

    def compare(self, left, right):
        from prefloop.types import Choice

        self.blas_threads |= {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}
        return Choice.LEFT if left.true_rewards.sum() >= right.true_rewards.sum() else Choice.RIGHT


def test_a_ppo_run_defers_its_rewards_with_numpy_on_one_blas_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A second BLAS thread spins after each batched predict: 4x the CPU time of one thread.
    relabelled = []
    take = VecLearnedReward.take_deferred_rewards

    def counting(self: VecLearnedReward) -> np.ndarray:
        rewards = take(self)
        relabelled.append(rewards.shape)
        return rewards

    monkeypatch.setattr(VecLearnedReward, "take_deferred_rewards", counting)
    teacher = BlasThreadsWatcher()
    before = {pool["filepath"]: pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}
    config = TrainConfig(env_id="CartPole-v1", run_dir=tmp_path / "run", labels=20, steps=4_000, seed=0,
                         progress_bar=False, eval_episodes=2, teacher=teacher, algo_kwargs={"n_steps": 128})
    result = train(config)
    assert teacher.blas_threads == {1}
    assert relabelled and all(shape == (128, result.config.n_envs) for shape in relabelled), "every rollout relabelled whole"
    assert len(result.curve) > 0 and all("learned_return" in point for point in result.curve[1:])
    after = {pool["filepath"]: pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}
    assert after == before, "the caller's BLAS threads are given back when the run ends"
