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

from collections import deque
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
    ``finished_returns`` keeps the learned returns of the last ``returns_kept`` episodes, oldest first.

    **Deferred rewards** (``defer(True)``): an on-policy learner needs a rollout's rewards only at
    its end, so they can be one ``predict`` for the whole rollout instead of one per step (a fraction
    of the cost, ``benchmarks/predict_batching.py``, and no reward model running between the
    policy's calls). While deferred, each step's reward out is 0 and its inputs wait;
    :meth:`take_deferred_rewards` then returns their learned rewards, ``(T, n_envs)`` float32, what
    the steps would have got (``predict`` is row-wise; a large batch may round in the last bit
    differently), and books the learned returns of the episodes that ended (in ``finished_returns``
    only: the steps' ``info`` dicts were handed on already).
    """

    def __init__(self, venv: VecEnv, reward_fn: RewardFunction, returns_kept: int = 100):
        super().__init__(venv)
        self.reward_fn = reward_fn
        self._as_array = batch_as_array(venv.observation_space)
        self._last_obs: np.ndarray | None = None
        self._actions: np.ndarray | None = None
        self._episode_returns = np.zeros(venv.num_envs, dtype=np.float64)
        self.finished_returns: deque[float] = deque(maxlen=returns_kept)
        self.deferred = False
        self._waiting: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (obs, actions, dones) per step

    def reset(self) -> VecEnvObs:
        obs = self.venv.reset()
        self._last_obs = self._as_array(obs)
        self._episode_returns[:] = 0.0
        self._waiting.clear()  # their episodes are cut short: no return to book
        return obs

    def defer(self, deferred: bool) -> None:
        """Switch deferred rewards on or off; steps still waiting are dropped (a rollout cut short)."""
        self.deferred = deferred
        self._waiting.clear()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)
        self.venv.step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        obs, true_rewards, dones, infos = self.venv.step_wait()
        assert self._last_obs is not None and self._actions is not None, "step before reset"
        # Python floats in one call each, not one numpy scalar per env: this runs every vector step.
        for info, true_reward in zip(infos, true_rewards.tolist()):
            info["true_reward"] = float(true_reward)
        if self.deferred:
            self._waiting.append((self._last_obs, self._actions, dones))
            # A new array each step, not a shared one: SB3 adds its time-limit bootstrap in place.
            learned = np.zeros(self.num_envs, dtype=np.float32)
        else:
            learned = np.asarray(self.reward_fn.predict(self._last_obs, self._actions), dtype=np.float32)
            for index, episode_return in self._book_returns(learned, dones):
                infos[index]["learned_episode_return"] = episode_return
        self._last_obs = self._as_array(obs)
        return obs, learned, dones, infos

    def take_deferred_rewards(self) -> np.ndarray:
        """The learned rewards of the steps taken while deferred, ``(T, n_envs)`` float32, oldest
        first, in one ``predict``; those steps are then done with."""
        waiting, self._waiting = self._waiting, []
        if not waiting:
            return np.zeros((0, self.num_envs), dtype=np.float32)
        obs = np.concatenate([step[0] for step in waiting])
        actions = np.concatenate([step[1] for step in waiting])
        rewards = np.asarray(self.reward_fn.predict(obs, actions), dtype=np.float32).reshape(len(waiting), self.num_envs)
        for step_rewards, (_, _, dones) in zip(rewards, waiting):
            self._book_returns(step_rewards, dones)
        return rewards

    def _book_returns(self, rewards: np.ndarray, dones: np.ndarray) -> list[tuple[int, float]]:
        """Add one vector step's learned rewards to the running returns; ``(env index, return)`` of
        the episodes it ended."""
        self._episode_returns += rewards
        if not dones.any():
            return []
        ended = []
        for index in np.flatnonzero(dones).tolist():
            episode_return = float(self._episode_returns[index])
            self._episode_returns[index] = 0.0
            self.finished_returns.append(episode_return)
            ended.append((index, episode_return))
        return ended
