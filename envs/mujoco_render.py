"""Headless MuJoCo clips that render fast and never come out black.

Gymnasium's MuJoCo envs render with a 4096² shadow map and 4x multisampling by default: 5-18
frames/s in software EGL. Clips for raters need neither, and without them rendering is ~10x faster.
The settings must be made before the first frame, when the off-screen GL context is created.
"""

from __future__ import annotations

import os

import gymnasium as gym


def prefer_egl() -> None:
    """Headless machines have no display: let MuJoCo render through EGL unless told otherwise."""
    os.environ.setdefault("MUJOCO_GL", "egl")


def prefer_windowless_sdl() -> None:
    """Classic-control envs draw with pygame, whose first frame initialises SDL's video: on a
    machine without a display, SDL's Wayland probe prints ``error: XDG_RUNTIME_DIR is invalid or
    not set in the environment.`` to stderr (at every app start). ``rgb_array`` frames need no
    window, so without a display SDL gets its window-less driver unless told otherwise."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")


def configure_fast_rendering(env: gym.Env) -> None:
    """No shadows, no reflections, no multisampling; a no-op for envs that are not MuJoCo."""
    unwrapped = env.unwrapped
    model = getattr(unwrapped, "model", None)
    renderer = getattr(unwrapped, "mujoco_renderer", None)
    if model is None or renderer is None:
        return
    import mujoco

    model.vis.quality.shadowsize = 0
    model.vis.quality.offsamples = 0
    viewer = renderer._get_viewer("rgb_array")  # creates the GL context now, with the settings above
    viewer.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    viewer.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
