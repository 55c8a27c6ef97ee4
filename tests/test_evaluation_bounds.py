"""A run finishes on an env with no time limit of its own: evaluation episodes (the trained policy's
and the random policy's) are cut at ``UNLIMITED_EPISODE_CAP`` steps instead of running for ever."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from prefloop.envs import EnvSpec
from stable_baselines3 import PPO

from prefloop.training.config import TrainConfig
from prefloop.training.evaluation import (
    UNLIMITED_EPISODE_CAP,
    evaluate,
    random_policy_returns,
)
from prefloop.training.loop import train
from prefloop.training.report import run_summary_rows

ENV_ID = "prefloop-test/NeverEnds-v0"


class NeverEnds(gym.Env):
    """A corridor whose goal is never reached: reward 1 per step, no termination, no time limit.
    It refuses to go on far past the cap, so a test of an unbounded loop fails instead of hanging."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)
    metadata = {"render_modes": [], "render_fps": 30}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        if self.t > 3 * UNLIMITED_EPISODE_CAP:
            raise RuntimeError("an evaluation episode ran on past the cap: it would never end")
        return np.full(2, np.sin(self.t / 10), np.float32), 1.0, False, False, {}


def _register() -> None:
    if ENV_ID not in gym.registry:
        gym.register(ENV_ID, entry_point=NeverEnds)


def test_episodes_without_a_time_limit_are_cut(caplog):
    _register()
    assert gym.spec(ENV_ID).max_episode_steps is None
    assert random_policy_returns(EnvSpec(ENV_ID), episodes=2, seed=0) == [float(UNLIMITED_EPISODE_CAP)] * 2
    model = PPO("MlpPolicy", gym.make(ENV_ID), n_steps=64, seed=0)
    with caplog.at_level("INFO", logger="prefloop"):
        assert evaluate(model, EnvSpec(ENV_ID), episodes=1, seed=0) == [float(UNLIMITED_EPISODE_CAP)]
    assert "registers no time limit" in caplog.text
    # ... and afterwards, that the return is one of an episode that never ended (not a score)
    assert f"1 of 1 evaluation episodes never ended: each was cut at {UNLIMITED_EPISODE_CAP} steps" in caplog.text


def _never_ends_in_100() -> gym.Env:
    return gym.wrappers.TimeLimit(NeverEnds(), max_episode_steps=100)


def test_env_time_limits_are_kept(caplog):
    returns = random_policy_returns(EnvSpec("Pendulum-v1"), episodes=1, seed=0)
    assert len(returns) == 1 and -2_000 < returns[0] < 0  # 200 steps of at most -16.3 each
    # An env factory's own TimeLimit counts, though an unregistered env's spec does not show it.
    assert random_policy_returns(EnvSpec("Corridor", factory=_never_ends_in_100), episodes=1, seed=0) == [100.0]
    model = PPO("MlpPolicy", _never_ends_in_100(), n_steps=64, seed=0)
    with caplog.at_level("INFO", logger="prefloop"):
        assert evaluate(model, EnvSpec("Corridor", factory=_never_ends_in_100), episodes=1, seed=0) == [100.0]
    assert "no time limit" not in caplog.text


def test_a_run_on_an_env_without_a_time_limit_finishes(tmp_path):
    _register()
    result = train(TrainConfig(env_id=ENV_ID, run_dir=tmp_path / "run", reward_source="true", steps=200,
                               n_envs=1, algo_kwargs={"n_steps": 128}, eval_episodes=1, progress_bar=False))
    assert result.eval_returns == [float(UNLIMITED_EPISODE_CAP)]
    # No episode ended, so the learning curve is empty; the summary still says what the run took.
    assert result.curve == [] and result.env_steps == 256
    assert dict(run_summary_rows(result))["env steps"] == "256 (asked 200; the algorithm finishes the rollout it is in)"
