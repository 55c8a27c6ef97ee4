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

import logging
from typing import Any

import gymnasium as gym
import numpy as np
from prefloop.envs.segments import EpisodeSegmenter, SegmentBuffer, cut_segments
from prefloop.structured_obs import batch_as_array, one_as_array
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

log = logging.getLogger("prefloop")

# Episode steps after which the recorder says (once) that an episode has not ended: each of its
# segments keeps every action since the reset (clips replay the episode) and the history keeps
# every step since, so memory and each clip's replay grow with it -- without bound in an env that
# never ends and has no time limit.
LONG_EPISODE_STEPS = 10_000


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

    Per vector step it only copies the batch into one row of a history of whole vector steps
    (this runs on every env step of training); an env's episode is its column of the history,
    cut when the episode ends, and history older than every running episode is dropped. Long
    episodes are also cut while they run, every ``2 * segment_length`` steps, so segments arrive
    before the first episode ends (many parallel envs with 500-step episodes would otherwise give
    none for thousands of steps).
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
        self._history = StepHistory()
        self._episode_start = np.zeros(venv.num_envs, dtype=np.int64)
        self._cut_until = np.zeros(venv.num_envs, dtype=np.int64)  # episode steps already cut
        self._next_cut = 2 * segment_length  # first history index at which a running episode is due a cut
        self._episode_seed: list[int | None] = [None] * venv.num_envs
        self._last_obs: np.ndarray | None = None
        self._actions_in_flight: np.ndarray | None = None
        self._said_long = False  # the LONG_EPISODE_STEPS warning is given once
        self.num_timesteps = 0

    @property
    def history_steps(self) -> int:
        """Vector steps the history holds (from the start of the oldest running episode)."""
        return len(self._history)

    def _seed_of_new_episode(self, env_index: int) -> int | None:
        return self.venv.unwrapped.reset_infos[env_index].get("episode_seed")

    def reset(self) -> VecEnvObs:
        obs = self.venv.reset()
        self._history = StepHistory()
        self._episode_start[:] = 0
        self._cut_until[:] = 0
        self._next_cut = 2 * self.segment_length
        self._episode_seed = [self._seed_of_new_episode(i) for i in range(self.num_envs)]
        self._last_obs = self._as_array(obs)
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions_in_flight = np.asarray(actions)
        self.venv.step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        assert self._last_obs is not None and self._actions_in_flight is not None, "step before reset"
        self.num_timesteps += self.num_envs
        now = self._history.append(self._last_obs, self._actions_in_flight, rewards)  # history index after this step
        if dones.any():
            for index in np.flatnonzero(dones).tolist():
                terminated = not infos[index].get("TimeLimit.truncated", False)
                self._cut(index, now, terminated)
                steps = now - int(self._episode_start[index])
                if not terminated and steps < self.segment_length:  # gave no segment
                    self.buffer.longest_uncut_episode = max(self.buffer.longest_uncut_episode, steps)
                self._episode_start[index] = now
                self._cut_until[index] = 0
                self._episode_seed[index] = self._seed_of_new_episode(index)
            self._history.drop_before(int(self._episode_start.min()))
            self._next_cut = self._first_due_cut()
        if now >= self._next_cut:  # a scalar test per step; the per-env one only when some env is due
            running = now - self._episode_start
            if not self._said_long and running.max() >= LONG_EPISODE_STEPS:
                self._say_long(int(running.max()))
            for index in np.flatnonzero(running - self._cut_until >= 2 * self.segment_length).tolist():
                self._cut(index, now, terminated=False)
            self._next_cut = self._first_due_cut()
        self._last_obs = self._as_array(obs)
        return obs, rewards, dones, infos

    def _say_long(self, steps: int) -> None:
        self._said_long = True
        log.warning(
            "an episode has run %d steps without ending: its segments keep every action since the "
            "reset (clips replay the episode), so memory and clip rendering grow with it; give the "
            "env a time limit (gymnasium.register(..., max_episode_steps=N) or a TimeLimit wrapper)",
            steps,
        )

    def _first_due_cut(self) -> int:
        """The first history index at which some running episode has ``2 L`` steps not yet cut."""
        return int((self._episode_start + self._cut_until).min()) + 2 * self.segment_length

    def _cut(self, index: int, end: int, terminated: bool) -> None:
        """Cut the segments of env ``index``'s episode that start after what was cut before."""
        seed = self._episode_seed[index]
        begin = int(self._episode_start[index])
        if seed is None or end <= begin:
            return
        # Observations and rewards only from where the new segments can start; the actions from
        # the reset (segments keep them to replay their episode), as a copy that owns its memory.
        from_step = int(self._cut_until[index])
        obs, rewards = self._history.column(index, begin + from_step, end)
        actions, _ = self._history.column(index, begin, end, actions=True)
        self.buffer.extend(
            cut_segments(
                obs, actions.copy(), rewards,
                terminated=terminated, episode_seed=seed, segment_length=self.segment_length,
                rng=self._rngs[index], env_step=self.num_timesteps, segments_per_step=self.segments_per_step,
                from_step=from_step,
            )
        )
        # the next cut starts where no whole segment fitted yet
        self._cut_until[index] = max(from_step, end - begin - self.segment_length + 1)


class StepHistory:
    """The observations, actions and true rewards of every env over the recent vector steps, as
    three growing arrays ``(T, n_envs, ...)``: one row copy per step, and an env's episode is a
    strided view of its column (no per-step Python objects to gather when it is cut).

    Rows are in the dtypes segments keep (:func:`~prefloop.envs.segments.as_stored_observations`:
    uint8 observations stay uint8, others float32; integer actions int64, others float32; rewards
    float32), converted as they are copied in, exactly as converting at the cut would.
    Steps are numbered by a history index that never resets; :meth:`drop_before` forgets old
    steps, whose rows are reused once the arrays are full.
    """

    def __init__(self, capacity: int = 256):
        self._capacity = capacity
        self._obs: np.ndarray | None = None
        self._actions: np.ndarray | None = None
        self._rewards: np.ndarray | None = None
        self._first = 0  # history index of row 0
        self._keep_from = 0  # history index of the oldest step still needed
        self._rows = 0  # rows written

    def __len__(self) -> int:
        return self._first + self._rows - self._keep_from

    def append(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> int:
        """Copy one vector step in: ``obs (n_envs, *obs_shape)``, ``actions (n_envs, *act_shape)``,
        ``rewards (n_envs,)``. Returns the history index after this step."""
        if self._obs is None or self._actions is None or self._rewards is None:
            self._obs, self._actions, self._rewards = self._allocate(obs, actions, rewards)
        elif actions.dtype.kind not in "iu" and self._actions.dtype == np.int64:
            self._actions = self._actions.astype(np.float32)  # float actions after integer ones
        if self._rows == len(self._obs):
            self._make_room()
        row = self._rows
        self._obs[row] = obs
        self._actions[row] = actions
        self._rewards[row] = rewards
        self._rows += 1
        return self._first + self._rows

    def drop_before(self, index: int) -> None:
        """Steps before history index ``index`` are no longer needed."""
        self._keep_from = max(self._keep_from, index)

    def column(self, env: int, begin: int, end: int, actions: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Env ``env``'s steps ``begin <= i < end`` (history indices): ``(obs, rewards)`` views, or
        ``(actions, rewards)`` with ``actions=True``. Views of the history: copy what must outlive
        the next :meth:`append`."""
        assert self._obs is not None and self._actions is not None and self._rewards is not None
        if begin < self._keep_from:
            raise IndexError(f"history index {begin} was dropped (kept from {self._keep_from})")
        rows = slice(begin - self._first, end - self._first)
        return (self._actions if actions else self._obs)[rows, env], self._rewards[rows, env]

    def _allocate(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cap = self._capacity
        obs_dtype = np.uint8 if obs.dtype == np.uint8 else np.float32
        act_dtype = np.int64 if np.issubdtype(actions.dtype, np.integer) else np.float32
        return (
            np.empty((cap, *obs.shape), dtype=obs_dtype),
            np.empty((cap, *actions.shape), dtype=act_dtype),
            np.empty((cap, *np.shape(rewards)), dtype=np.float32),
        )

    def _make_room(self) -> None:
        """Move the kept rows to the front, into arrays 1.5 times as long when they would be over
        two thirds full: at most two row copies per appended row on average, and at most about
        1.5 times the memory of the kept steps (image observations make rows large)."""
        assert self._obs is not None and self._actions is not None and self._rewards is not None
        drop = self._keep_from - self._first
        kept = self._rows - drop
        arrays = []
        for old in (self._obs, self._actions, self._rewards):
            grown = 3 * kept > 2 * len(old)
            new = np.empty((kept * 3 // 2 + 64, *old.shape[1:]), dtype=old.dtype) if grown else old
            new[:kept] = old[drop : self._rows]  # overlapping only towards the front: safe
            arrays.append(new)
        self._obs, self._actions, self._rewards = arrays
        self._first, self._rows = self._keep_from, kept
