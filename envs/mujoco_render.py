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


def keep_signals_from_sdl() -> None:
    """SDL's first initialisation (pygame's first frame) installs its own SIGINT and SIGTERM
    handlers where the defaults are in place, and turns those signals into quit events that only
    a pygame event loop reads: a process that has drawn one CartPole frame then ignores ``kill``,
    ``timeout`` and ``docker stop`` (seen: a pixel CartPole ``prefloop train`` survived SIGTERM for
    minutes). prefloop reads no pygame events, so signals stay with Python unless told otherwise."""
    os.environ.setdefault("SDL_NO_SIGNAL_HANDLERS", "1")


def configure_fast_rendering(env: gym.Env) -> None:
    """No shadows, no reflections, no multisampling; a no-op for envs that are not MuJoCo.

    Gymnasium's MuJoCo envs and DeepMind Control tasks through shimmy (:func:`_configure_dm_control`)."""
    unwrapped = env.unwrapped
    if _configure_dm_control(unwrapped):
        return
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


# Frame size of DeepMind Control clips unless the env's render_kwargs say otherwise: dm_control's
# own default, 4:3 like the Gymnasium MuJoCo presets' 320 x 240.
DMC_FRAME = {"height": 240, "width": 320}


def _configure_dm_control(unwrapped: gym.Env) -> bool:
    """Fast, tracking renders for a shimmy ``DmControlCompatibilityV0`` env; False for any other env.

    shimmy renders through ``physics.render(**env.render_kwargs)``, which makes a new camera and
    scene per frame, so the scene flags cannot be set once as for Gymnasium's viewer: they go in as
    ``render_flag_overrides``. The model's shadow map and multisampling are read when dm_control
    makes its GL context, at the first frame, which is still to come here. Camera 0 is the suite's
    tracking camera (walker, cheetah, hopper, ...); the default free camera (-1) stays where the
    body started, and a walker leaves the picture within seconds.
    """
    physics = getattr(getattr(unwrapped, "_env", None), "physics", None)
    render_kwargs = getattr(unwrapped, "render_kwargs", None)
    if physics is None or not isinstance(render_kwargs, dict):
        return False
    physics.model.vis.quality.shadowsize = 0
    physics.model.vis.quality.offsamples = 0
    kwargs = {**DMC_FRAME, **({"camera_id": 0} if physics.model.ncam > 0 else {}), **render_kwargs}
    # a new dict: the one given may belong to the run's env_kwargs, which must stay JSON
    kwargs["render_flag_overrides"] = {"shadow": False, "reflection": False, **(kwargs.get("render_flag_overrides") or {})}
    unwrapped.render_kwargs = kwargs
    return True
