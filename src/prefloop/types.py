"""The data that flows through the loop: segments, the choices a teacher makes, labelled pairs.

Kept free of torch, SQLAlchemy and SB3 so every part of prefloop (and the rater app) can import it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np


class Choice(str, enum.Enum):
    """A teacher's answer to "which of these two segments is better?"."""

    LEFT = "left"
    RIGHT = "right"
    EQUAL = "equal"
    CANT_TELL = "cant_tell"

    @property
    def target(self) -> float | None:
        """Probability that RIGHT is preferred, as the Bradley-Terry loss wants it.

        LEFT -> 0.0, RIGHT -> 1.0, EQUAL -> 0.5, CANT_TELL -> None (not used for training).
        """
        return _TARGETS[self]


_TARGETS: dict[Choice, float | None] = {
    Choice.LEFT: 0.0,
    Choice.RIGHT: 1.0,
    Choice.EQUAL: 0.5,
    Choice.CANT_TELL: None,
}


@dataclass(eq=False)
class Segment:
    """A fixed-length piece of one episode, the unit a teacher compares.

    Every segment of a run has the same length ``L``. When the episode *terminated* inside the
    segment, the steps from ``n_valid`` on are the absorbing state after termination: their
    observations and actions are zeros, their true reward is 0, and the reward model gives them
    exactly 0 as well (see ``prefloop.reward_models``). Episodes cut by a time limit are never
    padded: a segment lies wholly inside the steps that really happened.

    Attributes:
        obs: ``(L, *obs_shape)`` float32, the observation each action was taken in; uint8 for
            image observations (kept as the env gives them, 4x smaller).
        actions: ``(L, *act_shape)``; float32 for Box action spaces, int64 ``(L,)`` for Discrete.
        true_rewards: ``(L,)`` float32, the environment's reward (metrics and simulated teachers only).
        n_valid: number of real steps; ``n_valid < L`` only when ``terminated``.
        terminated: the episode reached a terminal state at step ``n_valid - 1`` of this segment.
        episode_seed: the seed the episode was reset with; with ``episode_actions`` it replays the
            episode exactly, which is how clips are rendered later without recording frames.
        start_step: index of the segment's first step within its episode.
        episode_actions: ``(start_step + n_valid, *act_shape)``, every action from the episode's
            reset up to the segment's last real step.
        env_step: the agent's total environment steps when the segment was recorded (provenance).
        id: the store's id once saved, else None.
    """

    obs: np.ndarray
    actions: np.ndarray
    true_rewards: np.ndarray
    n_valid: int
    terminated: bool
    episode_seed: int
    start_step: int
    episode_actions: np.ndarray
    env_step: int = 0
    id: int | None = None

    @property
    def length(self) -> int:
        return int(self.true_rewards.shape[0])

    @property
    def true_return(self) -> float:
        return float(self.true_rewards.sum())

    @property
    def valid_mask(self) -> np.ndarray:
        """``(L,)`` float32: 1 for real steps, 0 for absorbing steps after termination."""
        mask = np.zeros(self.length, dtype=np.float32)
        mask[: self.n_valid] = 1.0
        return mask


def unique_segments(segments: Iterable[Segment]) -> list[Segment]:
    """Each segment once, in the order first seen. Segments compare by identity (``eq=False``): a
    segment listed twice must not be paired with itself, nor its features computed twice."""
    return list({id(segment): segment for segment in segments}.values())


@dataclass(eq=False)
class SegmentPair:
    """Two segments shown side by side. ``id`` is the store's pair id (None before saving)."""

    left: Segment
    right: Segment
    id: int | None = None
    score: float = 0.0  # the query selector's acquisition score, kept for analysis


@dataclass(frozen=True)
class Label:
    """One rater's answer to one pair, as stored."""

    pair_id: int
    rater_id: str
    choice: Choice
    response_time_s: float
    created_at: float  # unix seconds
    id: int | None = None
    retracted_at: float | None = None  # set when the rater undid this answer; the row is kept


@dataclass(eq=False)
class LabeledPair:
    """A pair with the training target its labels give (probability that RIGHT is better)."""

    left: Segment
    right: Segment
    target: float
    pair_id: int | None = None
    extra: dict = field(default_factory=dict)
