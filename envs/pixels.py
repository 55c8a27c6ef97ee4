"""Image-observation envs: a classic-control task seen through its own rendering, and Atari games.

Both are registered Gymnasium ids (:func:`register_pixel_envs`, run when ``prefloop.envs`` is
imported), so a pixel run is built, replayed and re-rendered through the same
:func:`prefloop.envs.make_env` as any other env:

- ``prefloop/CartPolePixels-v1`` (or ``prefloop/Pixels-v0`` with ``env_id=`` any env that renders
  ``rgb_array``): the observation is the env's ``rgb_array`` frame, greyscaled and shrunk to
  ``height x width`` uint8 (default 64 x 96, CartPole's 2:3 aspect), the last ``frame_stack``
  frames stacked: ``(frame_stack, height, width)``.
- ``prefloop/Atari-v0`` (``game=`` any ALE id, default Breakout; ale-py's own ids, e.g.
  ``ALE/Pong-v5`` or ``PongNoFrameskip-v4``, get the same stack and preset): Gymnasium's
  ``AtariPreprocessing`` (84x84 greyscale, 4-frame max-pool skip, up to 30 no-op starts) and
  ``FrameStackObservation(4)``: ``(4, 84, 84)`` uint8. Needs the ``atari`` extra (ale-py ships the
  ROMs; opencv resizes). Losing a life does *not* end the episode: an episode must start at a
  seeded reset to be replayable for clips.

Frames are stacked channel-first, which SB3 detects as an image (no ``VecTransposeImage``); the
reward model and the policy both read the stack. ``render()`` of these envs is the inner env's
normal full-colour frame, so a rater's clips look the same as for the state-based env.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import FrameStackObservation
from PIL import Image

PIXEL_CARTPOLE_ID = "prefloop/CartPolePixels-v1"
PIXELS_ID = "prefloop/Pixels-v0"
ATARI_ID = "prefloop/Atari-v0"
DEFAULT_ATARI_GAME = "BreakoutNoFrameskip-v4"


class RenderedObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """The observation is the env's own ``rgb_array`` frame, greyscale, ``(height, width)`` uint8.

    Args:
        env: an env made with ``render_mode="rgb_array"``.
        height, width: size of the observation in pixels (at least 36 each, the smallest image
            the Nature-DQN torso of the reward model and of SB3's CnnPolicy accepts).
    """

    def __init__(self, env: gym.Env, height: int = 64, width: int = 96):
        gym.utils.RecordConstructorArgs.__init__(self, height=height, width=width)
        gym.ObservationWrapper.__init__(self, env)
        if env.render_mode != "rgb_array":
            raise ValueError(f"RenderedObservation needs an env made with render_mode='rgb_array', got {env.render_mode!r}")
        if int(height) < 36 or int(width) < 36:
            raise ValueError(f"height and width must be at least 36 pixels, got {height} x {width}")
        self.height, self.width = int(height), int(width)
        self.observation_space = gym.spaces.Box(0, 255, (self.height, self.width), dtype=np.uint8)

    def observation(self, observation: Any) -> np.ndarray:
        """``(height, width)`` uint8: the current frame (the state vector is ignored)."""
        frame = self.env.render()
        # BOX filter: every source pixel counts, so a 10-pixel pole stays visible when shrunk.
        image = Image.fromarray(np.asarray(frame, dtype=np.uint8)).convert("L").resize((self.width, self.height), Image.BOX)
        return np.asarray(image, dtype=np.uint8)


def make_pixel_env(
    env_id: str = "CartPole-v1", height: int = 64, width: int = 96, frame_stack: int = 4,
    render_mode: str | None = None, **kwargs: Any,
) -> gym.Env:
    """``env_id`` seen through its rendering: ``(frame_stack, height, width)`` uint8 observations.

    ``render_mode`` is accepted for :func:`gymnasium.make` and must be None or ``"rgb_array"``:
    the inner env always renders ``rgb_array`` (its frames are the observations), and ``render()``
    returns its normal full-colour frame.
    """
    if render_mode not in (None, "rgb_array"):
        raise ValueError(f"{env_id} pixels render only 'rgb_array' frames, got render_mode={render_mode!r}")
    env = RenderedObservation(gym.make(env_id, render_mode="rgb_array", **kwargs), height=height, width=width)
    return FrameStackObservation(env, int(frame_stack))


def make_atari_env(
    game: str = DEFAULT_ATARI_GAME, frame_stack: int = 4, screen_size: int = 84, noop_max: int = 30,
    render_mode: str | None = None, **kwargs: Any,
) -> gym.Env:
    """An ALE game with the usual DQN preprocessing and a stack of the last ``frame_stack`` frames.

    Raises:
        gymnasium.error.DependencyNotInstalled: ale-py or opencv missing (the ``atari`` extra).
    """
    try:
        import ale_py
    except ImportError as exc:
        raise gym.error.DependencyNotInstalled(ATARI_INSTALL_HINT) from exc
    gym.register_envs(ale_py)
    inner = gym.make(game, render_mode=render_mode, frameskip=1, **kwargs)
    env = gym.wrappers.AtariPreprocessing(
        inner, noop_max=noop_max, frame_skip=4, screen_size=screen_size, terminal_on_life_loss=False,
        grayscale_obs=True, scale_obs=False,
    )
    return FrameStackObservation(env, int(frame_stack))


ATARI_INSTALL_HINT = "Atari games need ale-py and opencv: pip install 'prefloop[atari]'"
_ALE_ENTRY_POINT = "ale_py.env:AtariEnv"


def looks_like_atari_id(env_id: str, plain_names: bool = False) -> bool:
    """Whether ``env_id`` has the form of an id ale-py registers, before ale-py is imported:
    ``ALE/Pong-v5``, ``PongNoFrameskip-v4``, ``PongDeterministic-v4``; with ``plain_names`` also
    ``Pong-v4`` (a form other envs share: ``CartPol-v0`` is a typo, not a game)."""
    name, _, version = env_id.rpartition("-v")
    return env_id.startswith("ALE/") or name.endswith(("NoFrameskip", "Deterministic")) or (
        plain_names and "/" not in env_id and name.isalpha() and name[:1].isupper() and version in ("0", "4"))


def ensure_atari_registered(env_id: str) -> None:
    """Register ale-py's ids (Gymnasium 1.x registers them only when asked) when ``env_id`` looks
    like one of them and is not registered yet; a no-op otherwise, and when ale-py is not installed."""
    if env_id in gym.registry or not looks_like_atari_id(env_id, plain_names=True) or importlib.util.find_spec("ale_py") is None:
        return
    import ale_py

    gym.register_envs(ale_py)


def is_atari_game(env_id: str, env_kwargs: dict[str, Any] | None = None) -> bool:
    """Whether ``env_id`` is an ALE game seen as images (not ``obs_type="ram"``): such an id gets
    the Atari preset and its preprocessing (:func:`make_atari_env` with ``game=env_id``)."""
    ensure_atari_registered(env_id)
    spec = gym.registry.get(env_id)
    if spec is None or spec.entry_point != _ALE_ENTRY_POINT:
        return False
    obs_type = {**spec.kwargs, **(env_kwargs or {})}.get("obs_type", "rgb")
    return obs_type in ("rgb", "grayscale")


def atari_game_name(game: str) -> str:
    """``"ALE/MsPacman-v5"`` or ``"MsPacmanNoFrameskip-v4"`` -> ``"MsPacman"``."""
    name = game.split("/")[-1].rsplit("-v", 1)[0]
    for suffix in ("NoFrameskip", "Deterministic"):
        name = name.removesuffix(suffix)
    return name


def register_pixel_envs() -> None:
    """Register prefloop's pixel env ids with Gymnasium (idempotent)."""
    for env_id, entry_point, kwargs in (
        (PIXEL_CARTPOLE_ID, make_pixel_env, {"env_id": "CartPole-v1"}),
        (PIXELS_ID, make_pixel_env, {}),
        (ATARI_ID, make_atari_env, {}),
    ):
        if env_id not in gym.registry:
            # Episode limits come from the inner env (CartPole's 500 steps, ALE's 108,000 frames).
            gym.register(env_id, entry_point=entry_point, kwargs=kwargs, disable_env_checker=True)
