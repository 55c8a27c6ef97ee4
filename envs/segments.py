"""Cutting episodes into fixed-length segments, the unit a teacher compares.

:func:`cut_segments` cuts one finished episode (:class:`EpisodeSegmenter` accumulates one env's
steps for it; ``VecSegmentRecorder`` keeps a history of whole vector steps instead):

- a *terminated* episode (the env reached a terminal state) may end inside a segment; the rest of
  that segment is the absorbing state after termination, padded with zeros (``n_valid < L``);
- a *truncated* episode (time limit) is only cut into segments that lie wholly inside it, since
  nothing is known of what would have come after the cut.

Segments share their episode's action array (views, no copies), so keeping thousands is cheap.

Observations are stored as float32, except uint8 observations (images), which stay uint8 end to
end -- buffer, store, datasets, reward-model batches -- and become floats only inside the reward
network: an 84x84x4 frame stack is 28 KB per step instead of 113 KB.

Frame stacks share their frames in memory: when every step's observation is the previous one's
stack shifted by one frame (``gymnasium.wrappers.FrameStackObservation``: ``(k, H, W)``), the
segments cut from one piece of an episode are read-only views of one array of its distinct
frames (:func:`share_stacked_frames`), so the buffer holds each frame about once, not ``k`` times.
What leaves memory -- the store's blobs, datasets, reward-model batches -- is the stacked array.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

import numpy as np

from prefloop.stacked_frames import share_stacked_frames
from prefloop.types import Segment


def cut_segments(
    obs: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    *,
    terminated: bool,
    episode_seed: int,
    segment_length: int,
    rng: np.random.Generator,
    env_step: int,
    segments_per_step: float | None = None,
    from_step: int = 0,
) -> list[Segment]:
    """Cut an episode (finished, or the steps of a running one so far) into segments at random,
    distinct start steps.

    Args:
        obs: ``(T - from_step, *obs_shape)``, the observation each action was taken in, for the
            episode's steps ``from_step`` to ``T - 1``.
        actions: ``(T, *act_shape)``, every action since the reset (integer dtype for discrete
            actions): segments keep the prefix to replay their episode.
        rewards: ``(T - from_step,)`` true rewards of the same steps as ``obs``.
        terminated: the episode ended in a terminal state at step ``T - 1``; False for a time
            limit or a running episode (then every segment lies wholly inside the ``T`` steps).
        episode_seed: the seed it was reset with.
        segment_length: L.
        rng: draws the start steps.
        env_step: provenance stamp for the segments.
        segments_per_step: segments per episode step (default ``1 / L``: on average every step
            lands in one segment); at least one segment is cut when any fits.
        from_step: only segments starting at or after this episode step (the earlier ones were
            cut before, while the episode was running).
    """
    length = len(actions)
    if len(rewards) != length - from_step or len(obs) != length - from_step:
        raise ValueError(f"obs and rewards must cover steps {from_step}..{length - 1}, got {len(obs)} and {len(rewards)} rows")
    last_start = length - 1 if terminated else length - segment_length
    if length == 0 or last_start < from_step:
        return []
    obs = share_stacked_frames(as_stored_observations(obs))
    shared = obs.base is not None and not obs.flags.writeable
    actions = np.asarray(actions)
    actions = actions.astype(np.int64 if np.issubdtype(actions.dtype, np.integer) else np.float32, copy=False)
    rewards = np.asarray(rewards, dtype=np.float32)
    per_step = segments_per_step if segments_per_step is not None else 1.0 / segment_length
    n_starts = last_start + 1 - from_step
    n_segments = min(max(1, int(round((length - from_step) * per_step))), n_starts)
    starts = from_step + np.sort(rng.choice(n_starts, size=n_segments, replace=False))
    segments = []
    for start in (int(s) for s in starts):
        end = min(start + segment_length, length)
        seg_obs = obs[start - from_step : end - from_step]
        segments.append(
            Segment(
                # a view of the shared frames, or a copy (so the segment does not pin the episode)
                obs=seg_obs if shared and len(seg_obs) == segment_length else _pad(seg_obs, segment_length),
                actions=_pad(actions[start:end], segment_length),
                true_rewards=_pad(rewards[start - from_step : end - from_step], segment_length),
                n_valid=end - start,
                terminated=bool(terminated and end == length),
                episode_seed=int(episode_seed),
                start_step=start,
                episode_actions=actions[:end],
                env_step=env_step,
            )
        )
    return segments


def as_stored_observations(obs: np.ndarray) -> np.ndarray:
    """Observations in the dtype segments keep them in: uint8 stays uint8 (images), anything
    else becomes float32. No copy when the dtype is already right."""
    obs = np.asarray(obs)
    return obs if obs.dtype == np.uint8 else obs.astype(np.float32, copy=False)


class EpisodeSegmenter:
    """Collects the steps of one env's current episode and cuts segments when it ends.

    Args:
        segment_length: L, the number of steps per segment.
        rng: draws segment start positions.
        segments_per_step: see :func:`cut_segments`.
    """

    def __init__(self, segment_length: int, rng: np.random.Generator, segments_per_step: float | None = None):
        if segment_length < 1:
            raise ValueError(f"segment_length must be >= 1, got {segment_length}")
        self.segment_length = segment_length
        self.segments_per_step = segments_per_step
        self._rng = rng
        self._episode_seed: int | None = None
        self._obs: list[np.ndarray] = []
        self._actions: list[np.ndarray] = []
        self._rewards: list[float] = []

    def start_episode(self, episode_seed: int | None) -> None:
        """Forget the current episode's steps; the next steps belong to an episode reset with this seed."""
        self._episode_seed = episode_seed
        self._obs.clear()
        self._actions.clear()
        self._rewards.clear()

    def add_step(self, obs: np.ndarray, action: np.ndarray, reward: float) -> None:
        """Record one step: the observation the action was taken in, the action, the true reward."""
        self._obs.append(np.asarray(obs))
        self._actions.append(np.asarray(action))
        self._rewards.append(float(reward))

    def end_episode(self, terminated: bool, env_step: int) -> list[Segment]:
        """Cut the finished episode into segments (none when its seed is unknown) and forget it."""
        segments: list[Segment] = []
        if self._episode_seed is not None and self._rewards:
            segments = cut_segments(
                np.stack(self._obs), np.stack(self._actions), np.asarray(self._rewards),
                terminated=terminated, episode_seed=self._episode_seed, segment_length=self.segment_length,
                rng=self._rng, env_step=env_step, segments_per_step=self.segments_per_step,
            )
        self.start_episode(None)
        return segments


def _pad(values: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad the first axis to ``length`` (the absorbing steps after termination)."""
    if len(values) == length:
        return values.copy()
    padded = np.zeros((length, *values.shape[1:]), dtype=values.dtype)
    padded[: len(values)] = values
    return padded


class SegmentBuffer:
    """The most recent segments, bounded: new ones push out the oldest.

    Query selection draws candidates from here, so pairs reflect the current policy.
    """

    def __init__(self, capacity: int):
        if capacity < 2:
            raise ValueError(f"segment buffer capacity must be >= 2, got {capacity}")
        self._segments: collections.deque[Segment] = collections.deque(maxlen=capacity)
        self.total_added = 0
        # The most steps of an episode cut off (truncated) before one segment fitted in it: such
        # episodes give no segment, and a round that finds too few says so (0: none was).
        self.longest_uncut_episode = 0

    def extend(self, segments: Iterable[Segment]) -> None:
        for segment in segments:
            self._segments.append(segment)
            self.total_added += 1

    def recent(self, n: int | None = None) -> list[Segment]:
        """The ``n`` newest segments (all when None), oldest first."""
        items = list(self._segments)
        return items if n is None else items[-n:]

    def __len__(self) -> int:
        return len(self._segments)
