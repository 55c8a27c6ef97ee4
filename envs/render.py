"""Re-rendering a recorded segment as frames, by replaying its episode.

Training never renders. A segment keeps its episode's seed and every action since the reset, so
the renderer resets a fresh ``rgb_array`` env (built by the same :func:`make_env` as training) with
that seed, replays the actions, and grabs frames during the segment's steps.
"""

from __future__ import annotations

import gc

import gymnasium as gym
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from prefloop.envs.factory import EnvSpec, make_env

from prefloop.structured_obs import one_as_array
from prefloop.types import Segment

END_TEXT = "EPISODE ENDED"
END_BAND_RGB = (200, 30, 30)
END_DIM = 0.4  # brightness of the final state behind the marker


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
        frame shows the state after the last action. After termination the final state is held,
        dimmed and marked "EPISODE ENDED" (:func:`mark_episode_end`), so clips of one run all have
        the same length and loop in sync, and a rater sees an ending, not a stalled video.

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
        as_array = one_as_array(env.observation_space)  # as recorded: Dict/Tuple flattened
        frames: list[np.ndarray] = []
        last = len(segment.episode_actions) - 1
        for t, action in enumerate(segment.episode_actions):
            if t >= segment.start_step:
                if verify:
                    _check_same(as_array(obs), segment.obs[t - segment.start_step], t, atol)
                frames.append(np.asarray(env.render(), dtype=np.uint8))
            obs, _, terminated, truncated, _ = env.step(_env_action(action, env))
            if (terminated or truncated) and t < last:
                raise ReplayMismatchError(f"episode ended at step {t} during replay, before the recorded end")
        frames.append(np.asarray(env.render(), dtype=np.uint8))
        if len(frames) < segment.length + 1:
            ended = mark_episode_end(frames[-1])
            frames.extend([ended] * (segment.length + 1 - len(frames)))
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


def mark_episode_end(frame: np.ndarray) -> np.ndarray:
    """What a clip shows for the steps after its episode terminated: ``frame`` (``(H, W, 3)``
    uint8, the final state) dimmed, with a red band across its upper part saying "EPISODE ENDED".

    Returns a new frame of the same shape; the band is large and plain so it survives video
    compression and downscaling.
    """
    height, width = frame.shape[:2]
    image = Image.fromarray((np.asarray(frame, dtype=np.float32) * END_DIM).astype(np.uint8))
    band = max(4, height // 5)
    top = max(1, height // 12)  # above the scene: envs draw their ground and bodies low
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, top, width, top + band), fill=END_BAND_RGB)
    font = _font(max(6, min(int(band * 0.6), int(width / (0.75 * len(END_TEXT))))))
    draw.text((width / 2, top + band / 2), END_TEXT, fill=(255, 255, 255), font=font, anchor="mm")
    return np.asarray(image, dtype=np.uint8)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one small bitmap font
        return ImageFont.load_default()


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
