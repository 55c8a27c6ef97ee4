"""What a rater's session shows and accepts, as plain values: the pair on screen with its clips,
a notice for the rater, why nothing is shown, and a browser's response time made safe to store."""

from __future__ import annotations

import base64
import datetime as dt
import math
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy.exc import SQLAlchemyError

from prefloop.store import PreferenceStore, StoreError

MAX_RESPONSE_TIME_S = 3600.0
DEFAULT_CLIP_FPS = 30.0

NoticeLevel = Literal["info", "success", "warning", "error"]


@dataclass(frozen=True)
class Notice:
    """A message for the rater (shown as a toast)."""

    level: NoticeLevel
    text: str


@dataclass(frozen=True)
class ShownPair:
    """A claimed pair whose two clips are loaded: what the player shows."""

    pair_id: int
    left_segment_id: int
    right_segment_id: int
    left_clip: bytes
    right_clip: bytes
    mime: str
    clip_seconds: float = 0.0  # how long the longer clip plays at 1x
    is_check: bool = False  # a check (prefloop.store.rater_checks), not a pair from the queue

    def to_player(self) -> dict[str, Any]:
        """JSON for the browser: pair id and both clips base64-encoded."""
        return {
            "id": self.pair_id,
            "mime": self.mime,
            "left": base64.b64encode(self.left_clip).decode("ascii"),
            "right": base64.b64encode(self.right_clip).decode("ascii"),
        }


@dataclass
class QueueState:
    """Why there is no pair to show, for the waiting screen."""

    waiting: int = 0  # pending or claimed pairs of the run
    preparing: int = 0  # of those, pairs whose clips are not encoded yet (or failed)
    checks_only: bool = False  # the rater is flagged: gold checks only (prefloop.training.rater_checks)


def clamp_response_time(value: object) -> float:
    """The browser's measured seconds from clips playable to answer, made safe to store.

    Anything that is not a finite number becomes 0; negative becomes 0; more than an hour is
    clamped to an hour (a tab left open overnight is not a response time).
    """
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return 0.0
    if isinstance(value, bool) or not math.isfinite(seconds):
        return 0.0
    return min(max(seconds, 0.0), MAX_RESPONSE_TIME_S)


def clip_fps(store: PreferenceStore) -> float:
    """The run's clip frame rate (``render_fps`` meta), or 30."""
    try:
        fps = float(store.get_meta("render_fps") or DEFAULT_CLIP_FPS)
    except (ValueError, StoreError, SQLAlchemyError):
        return DEFAULT_CLIP_FPS
    return fps if math.isfinite(fps) and fps > 0 else DEFAULT_CLIP_FPS


def start_of_today(now: float) -> float:
    """Unix time of the last local midnight before ``now``."""
    day = dt.datetime.fromtimestamp(now).date()
    return dt.datetime.combine(day, dt.time()).timestamp()
