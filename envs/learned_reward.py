"""Replacing the environment's reward with the learned one.

The policy only ever sees the learned reward. The true reward is passed on in
``info["true_reward"]`` for metrics; nothing in training reads it.

A Dict or Tuple observation reaches the reward function as its flat float32 vector (the layout of
``gymnasium.spaces.flatten``, ``prefloop.structured_obs``), as segments store it; the policy gets
the observation unchanged.

After termination the env gives no more steps, which is the absorbing state with learned reward 0
that the reward model was trained with (see ``prefloop.reward_models``); so whether dying early
pays is decided by the sign of the learned reward of being alive, not by an arbitrary offset.
"""

from __future__ import annotations

from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from prefloop.structured_obs import batch_as_array, one_as_array
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn


class RewardFunction(Protocol):
    """Anything with ``predict(obs (B, *obs_shape), actions (B, ...)) -> (B,) float32``,
    e.g. :class:`prefloop.reward_models.RewardEnsemble`; ``obs`` is ``(B, D)`` flat vectors for
    Dict and Tuple observation spaces."""

    def predict(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray: ...


class LearnedRewardWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Single-env version: the reward of ``step`` is ``reward_fn.predict(obs, action)``.

    ``obs`` is the observation the action was taken in. ``info["true_reward"]`` (float) keeps the
    env's own reward.
    """

    def __init__(self, env: gym.Env, reward_fn: RewardFunction):
        gym.utils.RecordConstructorArgs.__init__(self, reward_fn=reward_fn)
        gym.Wrapper.__init__(self, env)
        self.reward_fn = reward_fn
        self._as_array = one_as_array(env.observation_space)
        self._last_obs: Any = None

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._last_obs = self._as_array(obs)
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, true_reward, terminated, truncated, info = self.env.step(action)
        learned = self.reward_fn.predict(self._last_obs[None], np.asarray(action)[None])
        self._last_obs = self._as_array(obs)
        info = dict(info)
        info["true_reward"] = float(true_reward)
        return obs, float(learned[0]), terminated, truncated, info


class VecLearnedReward(VecEnvWrapper):
    """VecEnv version: one batched ``predict`` call per vector step for all envs.

    Rewards out: ``(n_envs,)`` float32 learned rewards. Per env, ``info["true_reward"]`` holds the
    env reward and, at the end of an episode, ``info["learned_episode_return"]`` the learned return.
    """

    def __init__(self, venv: VecEnv, reward_fn: RewardFunction):
        super().__init__(venv)
        self.reward_fn = reward_fn
        self._as_array = batch_as_array(venv.observation_space)
        self._last_obs: np.ndarray | None = None
        self._actions: np.ndarray | None = None
        self._episode_returns = np.zeros(venv.num_envs, dtype=np.float64)

    def reset(self) -> VecEnvObs:
        obs = self.venv.reset()
        self._last_obs = self._as_array(obs)
        self._episode_returns[:] = 0.0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)
        self.venv.step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        obs, true_rewards, dones, infos = self.venv.step_wait()
        assert self._last_obs is not None and self._actions is not None, "step before reset"
        learned = np.asarray(self.reward_fn.predict(self._last_obs, self._actions), dtype=np.float32)
        self._episode_returns += learned
        # Python floats in one call each, not one numpy scalar per env: this runs every vector step.
        for info, true_reward in zip(infos, true_rewards.tolist()):
            info["true_reward"] = float(true_reward)
        if dones.any():
            for index in np.flatnonzero(dones).tolist():
                infos[index]["learned_episode_return"] = float(self._episode_returns[index])
                self._episode_returns[index] = 0.0
        self._last_obs = self._as_array(obs)
        return obs, learned, dones, infos
