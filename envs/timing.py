"""How long a segment should be for an env without a preset, from the env's own clock.

Christiano et al. showed raters clips of 1-2 seconds: long enough to see what the agent does, short
enough that one comparison says something about a few actions. An env's time step is
``env.unwrapped.dt`` (MuJoCo) or ``1 / metadata["render_fps"]`` (classic control, toy text, Box2D);
the segment covers :data:`CLIP_SECONDS` of it, within [``MIN_SEGMENT_LENGTH``, ``MAX_SEGMENT_LENGTH``]
steps and at most half an episode, so that every episode gives at least two segments to compare
(Reacher's 50-step episodes would otherwise be one segment each, and a pair of whole episodes of
random actions differs mostly by noise).
"""

from __future__ import annotations

import functools
import logging
import math

import gymnasium as gym
from prefloop.envs.dmc import ensure_dmc_registered

log = logging.getLogger("prefloop")

CLIP_SECONDS = 1.5
MIN_SEGMENT_LENGTH = 5
MAX_SEGMENT_LENGTH = 50
FALLBACK_SEGMENT_LENGTH = 50


def step_seconds(env: gym.Env) -> float | None:
    """Seconds of env time per step: ``unwrapped.dt``, else ``1 / render_fps``; None when neither is known."""
    dt = getattr(env.unwrapped, "dt", None)
    if isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0:
        return float(dt)
    fps = env.metadata.get("render_fps")
    if isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0:
        return 1.0 / float(fps)
    return None


def segment_length_for(seconds_per_step: float | None, max_episode_steps: int | None) -> int:
    """Steps per segment: :data:`CLIP_SECONDS` of env time, clamped, and at most half an episode."""
    if seconds_per_step is None:
        length = FALLBACK_SEGMENT_LENGTH
    else:
        length = round(CLIP_SECONDS / seconds_per_step)
    length = min(max(length, MIN_SEGMENT_LENGTH), MAX_SEGMENT_LENGTH)
    if max_episode_steps:
        length = min(length, max(MIN_SEGMENT_LENGTH, int(max_episode_steps) // 2))
    return int(length)


@functools.lru_cache(maxsize=64)
def default_segment_length(env_id: str) -> int:
    """:func:`segment_length_for` the registered env ``env_id`` (built once to read its clock);
    :data:`FALLBACK_SEGMENT_LENGTH` when it cannot be built (the run reports why elsewhere)."""
    try:
        ensure_dmc_registered(env_id)
        env = gym.make(env_id)
    except Exception as exc:  # noqa: BLE001 -- any failure here is reported by the env checks later
        log.debug("cannot build %s to read its time step: %s", env_id, exc)
        return FALLBACK_SEGMENT_LENGTH
    try:
        max_steps = env.spec.max_episode_steps if env.spec is not None else None
        return segment_length_for(step_seconds(env), max_steps)
    finally:
        env.close()
