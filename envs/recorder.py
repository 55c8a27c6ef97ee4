"""Recording what the agent did, as segments, in a Gymnasium wrapper and an SB3 VecEnv wrapper.

Both wrappers leave observations, actions and rewards untouched; they only watch, and push the
segments of finished episodes into a :class:`~prefloop.envs.segments.SegmentBuffer`. They must sit
*below* the learned-reward wrapper, so the reward they record is the environment's true reward.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from prefloop.envs.segments import EpisodeSegmenter, SegmentBuffer


class SegmentRecorder(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Single-env recorder: cuts each finished episode into segments of ``segment_length`` steps.

    The env below must report ``info["episode_seed"]`` on reset (see ``EpisodeSeeder``); episodes
    without a known seed cannot be replayed and are not recorded.
    """

    def __init__(self, env: gym.Env, buffer: SegmentBuffer, segment_length: int, seed: int | None = None):
        gym.utils.RecordConstructorArgs.__init__(self, buffer=buffer, segment_length=segment_length, seed=seed)
        gym.Wrapper.__init__(self, env)
        self.buffer = buffer
        self._segmenter = EpisodeSegmenter(segment_length, np.random.default_rng(seed))
        self._last_obs: Any = None
        self.num_steps = 0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._segmenter.start_episode(info.get("episode_seed"))
        self._last_obs = obs
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.num_steps += 1
        self._segmenter.add_step(self._last_obs, action, float(reward))
        self._last_obs = obs
        if terminated or truncated:
            self.buffer.extend(self._segmenter.end_episode(bool(terminated), self.num_steps))
        return obs, reward, terminated, truncated, info


class VecSegmentRecorder(VecEnvWrapper):
    """Recorder for all envs of an SB3 ``VecEnv`` at once (works with Dummy- and SubprocVecEnv).

    Put it directly on the ``VecEnv`` whose envs are wrapped in ``EpisodeSeeder``: it reads each
    episode's seed from the VecEnv's ``reset_infos`` after the automatic reset.
    ``num_timesteps`` counts env steps over all envs (the provenance stamp of each segment).
    """

    def __init__(self, venv: VecEnv, buffer: SegmentBuffer, segment_length: int, seed: int | None = None):
        super().__init__(venv)
        self.buffer = buffer
        rngs = np.random.default_rng(seed).spawn(venv.num_envs)
        self._segmenters = [EpisodeSegmenter(segment_length, rng) for rng in rngs]
        self._last_obs: np.ndarray | None = None
        self._actions: np.ndarray | None = None
        self.num_timesteps = 0

    def _episode_seed(self, env_index: int) -> int | None:
        return self.venv.unwrapped.reset_infos[env_index].get("episode_seed")

    def reset(self) -> VecEnvObs:
        obs = self.venv.reset()
        for index, segmenter in enumerate(self._segmenters):
            segmenter.start_episode(self._episode_seed(index))
        self._last_obs = obs
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)
        self.venv.step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        assert self._last_obs is not None and self._actions is not None, "step before reset"
        self.num_timesteps += self.num_envs
        for index, segmenter in enumerate(self._segmenters):
            segmenter.add_step(self._last_obs[index], self._actions[index], rewards[index])
            if dones[index]:
                terminated = not infos[index].get("TimeLimit.truncated", False)
                self.buffer.extend(segmenter.end_episode(terminated, self.num_timesteps))
                segmenter.start_episode(self._episode_seed(index))
        self._last_obs = obs
        return obs, rewards, dones, infos
