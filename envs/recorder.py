"""Recording what the agent did, as segments, in a Gymnasium wrapper and an SB3 VecEnv wrapper.

Both wrappers leave observations, actions and rewards untouched; they only watch, and push the
segments of finished episodes into a :class:`~prefloop.envs.segments.SegmentBuffer`. They must sit
*below* the learned-reward wrapper, so the reward they record is the environment's true reward.

A Dict or Tuple observation is recorded as its flat float32 vector (``gymnasium.spaces.flatten``'s
layout, ``prefloop.structured_obs``): one array per segment keeps the store, the datasets and the
reward model's batching exactly as for Box observations, and ``gymnasium.spaces.unflatten`` gives
the structure back.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from prefloop.envs.segments import EpisodeSegmenter, SegmentBuffer, cut_segments
from prefloop.structured_obs import batch_as_array, one_as_array
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn


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
        self._as_array = one_as_array(env.observation_space)
        self._last_obs: Any = None
        self.num_steps = 0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._segmenter.start_episode(info.get("episode_seed"))
        self._last_obs = self._as_array(obs)
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.num_steps += 1
        self._segmenter.add_step(self._last_obs, action, float(reward))
        self._last_obs = self._as_array(obs)
        if terminated or truncated:
            self.buffer.extend(self._segmenter.end_episode(bool(terminated), self.num_steps))
        return obs, reward, terminated, truncated, info


class VecSegmentRecorder(VecEnvWrapper):
    """Recorder for all envs of an SB3 ``VecEnv`` at once (works with Dummy- and SubprocVecEnv).

    Put it directly on the ``VecEnv`` whose envs are wrapped in ``EpisodeSeeder``: it reads each
    episode's seed from the VecEnv's ``reset_infos`` after the automatic reset.
    ``num_timesteps`` counts env steps over all envs (the provenance stamp of each segment).

    Per vector step it only appends the batch arrays to a history (this runs on every env step of
    training); an env's episode is gathered from its column of the history when the episode ends,
    and history older than every running episode is dropped. Long episodes are also cut while
    they run, every ``2 * segment_length`` steps, so segments arrive before the first episode ends
    (many parallel envs with 500-step episodes would otherwise give none for thousands of steps).
    """

    def __init__(
        self,
        venv: VecEnv,
        buffer: SegmentBuffer,
        segment_length: int,
        seed: int | None = None,
        segments_per_step: float | None = None,
    ):
        super().__init__(venv)
        self.buffer = buffer
        self.segment_length = segment_length
        self.segments_per_step = segments_per_step
        self._rngs = np.random.default_rng(seed).spawn(venv.num_envs)
        self._as_array = batch_as_array(venv.observation_space)  # Dict/Tuple -> flat vectors
        self._obs: list[np.ndarray] = []
        self._actions: list[np.ndarray] = []
        self._rewards: list[np.ndarray] = []
        self._first = 0  # history index of self._obs[0]
        self._episode_start = np.zeros(venv.num_envs, dtype=np.int64)
        self._cut_until = np.zeros(venv.num_envs, dtype=np.int64)  # episode steps already cut
        self._episode_seed: list[int | None] = [None] * venv.num_envs
        self._last_obs: np.ndarray | None = None
        self._actions_in_flight: np.ndarray | None = None
        self.num_timesteps = 0

    def _seed_of_new_episode(self, env_index: int) -> int | None:
        return self.venv.unwrapped.reset_infos[env_index].get("episode_seed")

    def reset(self) -> VecEnvObs:
        obs = self.venv.reset()
        self._obs.clear()
        self._actions.clear()
        self._rewards.clear()
        self._first = 0
        self._episode_start[:] = 0
        self._cut_until[:] = 0
        self._episode_seed = [self._seed_of_new_episode(i) for i in range(self.num_envs)]
        self._last_obs = self._as_array(obs)
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions_in_flight = np.array(actions)
        self.venv.step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        assert self._last_obs is not None and self._actions_in_flight is not None, "step before reset"
        self.num_timesteps += self.num_envs
        self._obs.append(self._last_obs)
        self._actions.append(self._actions_in_flight)
        self._rewards.append(np.asarray(rewards, dtype=np.float32))
        now = self._first + len(self._obs)  # history index after this step
        if dones.any():
            for index in np.flatnonzero(dones):
                terminated = not infos[index].get("TimeLimit.truncated", False)
                self._cut(int(index), now, terminated)
                self._episode_start[index] = now
                self._cut_until[index] = 0
                self._episode_seed[index] = self._seed_of_new_episode(int(index))
            self._drop_history_before(int(self._episode_start.min()))
        running = now - self._episode_start
        for index in np.flatnonzero(running - self._cut_until >= 2 * self.segment_length):
            self._cut(int(index), now, terminated=False)
        self._last_obs = self._as_array(obs)
        return obs, rewards, dones, infos

    def _cut(self, index: int, end: int, terminated: bool) -> None:
        """Cut the segments of env ``index``'s episode that start after what was cut before."""
        seed = self._episode_seed[index]
        begin = int(self._episode_start[index]) - self._first
        stop = end - self._first
        if seed is None or stop <= begin:
            return
        # One C-level conversion of the history slice, then this env's column (a Python loop over
        # steps would cost more than the rest of the recorder together); observations and rewards
        # only from where the new segments can start.
        from_row = begin + int(self._cut_until[index])
        self.buffer.extend(
            cut_segments(
                np.asarray(self._obs[from_row:stop])[:, index],
                np.asarray(self._actions[begin:stop])[:, index],
                np.asarray(self._rewards[from_row:stop])[:, index],
                terminated=terminated, episode_seed=seed, segment_length=self.segment_length,
                rng=self._rngs[index], env_step=self.num_timesteps, segments_per_step=self.segments_per_step,
                from_step=int(self._cut_until[index]),
            )
        )
        # the next cut starts where no whole segment fitted yet
        self._cut_until[index] = max(int(self._cut_until[index]), stop - begin - self.segment_length + 1)

    def _drop_history_before(self, index: int) -> None:
        drop = index - self._first
        if drop > 0:
            del self._obs[:drop], self._actions[:drop], self._rewards[:drop]
            self._first = index
