"""Re-rendering a recorded segment as frames, by replaying its episode.

Training never renders. A segment keeps its episode's seed and every action since the reset, so
the renderer resets a fresh ``rgb_array`` env (built by the same :func:`make_env` as training) with
that seed, replays the actions, and grabs frames during the segment's steps.
"""

from __future__ import annotations

import gc

import gymnasium as gym
import numpy as np

from prefloop.envs.factory import EnvSpec, make_env
from prefloop.types import Segment


class ReplayMismatchError(RuntimeError):
    """The replayed episode diverged from the recorded one (the env is not deterministic)."""


class SegmentRenderer:
    """Renders many segments of one run with one ``rgb_array`` env, reused.

    One env (and for MuJoCo one GL context) for all clips is faster than a new one per clip, and
    avoids MuJoCo's silent black frames when a closed env's GL context is collected after a new
    one was made. Close it when done (or use it as a context manager).
    """

    def __init__(self, spec: EnvSpec):
        self.spec = spec
        self._env: gym.Env | None = make_env(spec, render_mode="rgb_array")

    def render(self, segment: Segment, *, verify: bool = True, atol: float = 1e-4) -> np.ndarray:
        """Frames of one segment: ``(L + 1, H, W, 3)`` uint8.

        Frame ``t`` shows the state in which the segment's action ``t`` was taken; the last real
        frame shows the state after the last action. After termination the final frame is held, so
        clips of one run all have the same length and loop in sync.

        Args:
            segment: a recorded segment.
            verify: compare replayed observations with the recorded ones and raise
                :class:`ReplayMismatchError` when they differ by more than ``atol``.
        """
        env = self._env
        if env is None:
            raise RuntimeError("this SegmentRenderer is closed")
        # Below the EpisodeSeeder: reset with the recorded episode seed itself.
        obs, _ = env.env.reset(seed=segment.episode_seed)
        frames: list[np.ndarray] = []
        last = len(segment.episode_actions) - 1
        for t, action in enumerate(segment.episode_actions):
            if t >= segment.start_step:
                if verify:
                    _check_same(obs, segment.obs[t - segment.start_step], t, atol)
                frames.append(np.asarray(env.render(), dtype=np.uint8))
            obs, _, terminated, truncated, _ = env.step(_env_action(action, env))
            if (terminated or truncated) and t < last:
                raise ReplayMismatchError(f"episode ended at step {t} during replay, before the recorded end")
        frames.append(np.asarray(env.render(), dtype=np.uint8))
        while len(frames) < segment.length + 1:
            frames.append(frames[-1])
        return np.stack(frames)

    def close(self) -> None:
        """Close the env and free its GL context now.

        MuJoCo's off-screen viewer frees its GL context only when garbage-collected; if that
        happens after another renderer made its own context, that one renders black from then on.
        """
        if self._env is None:
            return
        self._env.close()
        self._env = None
        gc.collect()

    def __enter__(self) -> "SegmentRenderer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def render_segment(spec: EnvSpec, segment: Segment, *, verify: bool = True, atol: float = 1e-4) -> np.ndarray:
    """One segment's frames with a one-off :class:`SegmentRenderer` (see its ``render``)."""
    with SegmentRenderer(spec) as renderer:
        return renderer.render(segment, verify=verify, atol=atol)


def _env_action(action: np.ndarray, env) -> np.ndarray | int:
    if np.issubdtype(np.asarray(action).dtype, np.integer) and np.ndim(action) == 0:
        return int(action)
    return action


def _check_same(replayed: np.ndarray, recorded: np.ndarray, step: int, atol: float) -> None:
    replayed = np.asarray(replayed, dtype=np.float32)
    if replayed.shape != recorded.shape or not np.allclose(replayed, recorded, atol=atol):
        raise ReplayMismatchError(
            f"replayed observation at episode step {step} differs from the recorded one; "
            "the environment is not deterministic given its seed and actions, so its clips "
            "cannot be re-rendered from the recording"
        )
