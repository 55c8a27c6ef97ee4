"""Cutting episodes into fixed-length segments, the unit a teacher compares.

:class:`EpisodeSegmenter` accumulates one env's steps; when the episode ends it cuts segments:

- a *terminated* episode (the env reached a terminal state) may end inside a segment; the rest of
  that segment is the absorbing state after termination, padded with zeros (``n_valid < L``);
- a *truncated* episode (time limit) is only cut into segments that lie wholly inside it, since
  nothing is known of what would have come after the cut.

Segments share their episode's action array (views, no copies), so keeping thousands is cheap.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

import numpy as np

from prefloop.types import Segment


class EpisodeSegmenter:
    """Collects the steps of one env's current episode and cuts segments when it ends.

    Args:
        segment_length: L, the number of steps per segment.
        rng: draws segment start positions.
        segments_per_step: how many segments to cut per episode step (default ``1 / L``: on
            average each step lands in one segment); at least one segment per episode is cut.
    """

    def __init__(self, segment_length: int, rng: np.random.Generator, segments_per_step: float | None = None):
        if segment_length < 1:
            raise ValueError(f"segment_length must be >= 1, got {segment_length}")
        self.segment_length = segment_length
        self.segments_per_step = segments_per_step if segments_per_step is not None else 1.0 / segment_length
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
        """Cut the finished episode into segments (possibly none) and forget it."""
        segments = self._cut(terminated, env_step) if self._episode_seed is not None else []
        self.start_episode(None)
        return segments

    def _cut(self, terminated: bool, env_step: int) -> list[Segment]:
        length = len(self._rewards)
        seg_len = self.segment_length
        last_start = length - 1 if terminated else length - seg_len
        if length == 0 or last_start < 0:
            return []
        obs = np.stack(self._obs).astype(np.float32, copy=False)
        actions = np.stack(self._actions)
        actions = actions.astype(np.int64 if np.issubdtype(actions.dtype, np.integer) else np.float32, copy=False)
        rewards = np.asarray(self._rewards, dtype=np.float32)
        n_segments = max(1, int(round(length * self.segments_per_step)))
        n_segments = min(n_segments, last_start + 1)
        starts = np.sort(self._rng.choice(last_start + 1, size=n_segments, replace=False))
        return [self._segment(obs, actions, rewards, int(s), terminated, env_step) for s in starts]

    def _segment(
        self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, start: int, terminated: bool, env_step: int
    ) -> Segment:
        seg_len = self.segment_length
        end = min(start + seg_len, len(rewards))
        n_valid = end - start
        return Segment(
            obs=_pad(obs[start:end], seg_len),
            actions=_pad(actions[start:end], seg_len),
            true_rewards=_pad(rewards[start:end], seg_len),
            n_valid=n_valid,
            terminated=bool(terminated and end == len(rewards)),
            episode_seed=int(self._episode_seed),  # type: ignore[arg-type]
            start_step=start,
            episode_actions=actions[:end],
            env_step=env_step,
        )


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
