"""Building the environments of a run, and refusing the ones prefloop cannot learn from.

One function, :func:`make_env`, builds every env of a run -- the training envs, the evaluation env
and the env that re-renders clips -- so that a recorded episode replays in exactly the same stack
of wrappers it was recorded in.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from prefloop.envs.dmc import INSTALL_HINT as DMC_INSTALL_HINT
from prefloop.envs.dmc import dmc_available, ensure_dmc_registered, is_dmc_id
from prefloop.envs.mujoco_render import configure_fast_rendering
from prefloop.envs.pixels import ATARI_INSTALL_HINT, ensure_atari_registered, is_atari_game, looks_like_atari_id, make_atari_env
from prefloop.envs.seeding import EpisodeSeeder, RecordedPrecisionActions, needs_recorded_precision
from prefloop.envs.structured import LeafDictObservation, needs_leaf_dict
from prefloop.import_paths import ImportPathError, describe, rebuildable
from prefloop.import_paths import load as load_import_path

from prefloop.structured_obs import StructuredSpaceError, is_structured, leaves

EnvFactory = Callable[..., gym.Env]
"""A user's env: called with the run's ``env_kwargs`` (and ``render_mode="rgb_array"`` when clips
are rendered for people), returns a ``gymnasium.Env`` -- an unregistered env, or a registered one
inside the user's wrappers."""

SUPPORTED_OBSERVATION_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiBinary, spaces.MultiDiscrete)
SUPPORTED_ACTION_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


class EnvSetupError(ValueError):
    """The environment cannot be used as asked; the message says why and what to do instead."""


@dataclass(frozen=True)
class EnvSpec:
    """What is needed to rebuild a run's environment anywhere (trainer, renderer, rater app).

    Attributes:
        env_id: a Gymnasium registry id, e.g. ``"CartPole-v1"``; with ``factory``, the env's name.
        env_kwargs: keyword arguments for ``gymnasium.make`` or the factory (JSON-serialisable).
        factory: the user's :data:`EnvFactory` or its import path ``"package.module:make_env"``
            (None: ``gymnasium.make(env_id)``). JSON holds the path, so another process (the clip
            worker) can build the env when the factory is a top-level function of an importable module.
    """

    env_id: str
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    factory: EnvFactory | str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"env_id": self.env_id, "env_kwargs": dict(self.env_kwargs)}
        if self.factory is not None:
            data["factory"] = self.factory if isinstance(self.factory, str) else describe(self.factory)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "EnvSpec":
        factory = data.get("factory")
        return cls(env_id=str(data["env_id"]), env_kwargs=dict(data.get("env_kwargs", {})),
                   factory=str(factory) if factory is not None else None)

    def factory_rebuildable(self) -> bool:
        """Whether another process can build this env from :meth:`to_json` (no factory, or an importable one)."""
        return self.factory is None or rebuildable(self.to_json()["factory"])

    def build(self, render_mode: str | None = None) -> gym.Env:
        """The bare env (no seeding wrapper): ``gymnasium.make`` or the factory.

        Raises:
            EnvSetupError: unknown id, a factory that does not import or fails, rejected kwargs.
        """
        kwargs = dict(self.env_kwargs)
        if render_mode is not None:
            kwargs["render_mode"] = render_mode
        if self.factory is None:
            check_env_id(self.env_id)
            name = registered_name(self.env_id)
            make: Callable[..., Any] = functools.partial(gym.make, self.env_id)
            if is_atari_game(name, self.env_kwargs):  # the Atari preset's frames: 84x84 grey, 4 stacked
                make = functools.partial(make_atari_env, game=name)
        elif isinstance(self.factory, str):
            try:
                make = load_import_path(self.factory, f"env factory of {self.env_id}")
            except ImportPathError as exc:
                raise EnvSetupError(str(exc)) from None
        else:
            make = self.factory
        try:
            env = make(**kwargs)
        except gym.error.DependencyNotInstalled as exc:
            raise EnvSetupError(f"{self.env_id} needs a package that is not installed: {exc}") from exc
        except TypeError as exc:
            raise EnvSetupError(f"{self.env_id} rejected its keyword arguments {kwargs}: {exc}") from exc
        if not isinstance(env, gym.Env):
            raise EnvSetupError(f"env_factory of {self.env_id} returned {type(env).__name__}, not a gymnasium.Env")
        return env


def registered_name(env_id: str) -> str:
    """The registry id of ``env_id``, importing its module first for Gymnasium's ``"module:EnvId"``
    form (a package that registers its envs on import: ``"highway_env:highway-v0"``); other ids
    as they are.

    Raises:
        EnvSetupError: the module does not import.
    """
    module, colon, name = env_id.partition(":")
    if not (colon and module and name) or "/" in module:
        return env_id
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise EnvSetupError(f"--env {env_id}: cannot import {module!r} ({exc}); install the package that "
                            f"registers {name!r}") from None
    return name


def check_env_id(env_id: str) -> None:
    """Raise :class:`EnvSetupError` naming close registered ids when ``env_id`` is unknown
    (a ``dm_control/`` id registers itself first when shimmy is installed: :mod:`prefloop.envs.dmc`,
    an ALE id when ale-py is: :mod:`prefloop.envs.pixels`; ``"module:EnvId"`` imports its module)."""
    env_id = registered_name(env_id)
    ensure_dmc_registered(env_id)
    ensure_atari_registered(env_id)
    if env_id in gym.registry:
        return
    if is_dmc_id(env_id) and not dmc_available():
        raise EnvSetupError(f"{env_id!r} is a DeepMind Control task. {DMC_INSTALL_HINT}")
    if looks_like_atari_id(env_id) and importlib.util.find_spec("ale_py") is None:
        raise EnvSetupError(f"{env_id!r} looks like an Atari game (ale-py is not installed). {ATARI_INSTALL_HINT}")
    if env_id.split("-v")[0] in {"Hopper", "HalfCheetah", "Walker2d", "Swimmer", "Ant", "Humanoid"}:
        hint = " MuJoCo envs need the extra: pip install 'prefloop[mujoco]'."
    else:
        hint = ""
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.5)
    suggestion = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise EnvSetupError(
        f"Unknown environment id {env_id!r}.{suggestion}{hint} "
        "Any id registered with Gymnasium works; list them with "
        "`python -c \"import gymnasium; print(list(gymnasium.registry))\"`."
    )


def check_spaces(observation_space: gym.Space, action_space: gym.Space, env_id: str) -> None:
    """Raise :class:`EnvSetupError` when the reward model cannot read these spaces.

    Dict and Tuple observation spaces (nested too) are read when every leaf is a vector space
    (Box, Discrete, MultiBinary, MultiDiscrete; no images): see ``prefloop.structured_obs``.
    """
    observed = [observation_space]
    if is_structured(observation_space):
        try:
            found = leaves(observation_space)
        except StructuredSpaceError as exc:
            raise EnvSetupError(f"{env_id}: {exc}") from None
        observed = [leaf.space for leaf in found]
        dotted = [leaf.name for leaf in found if any("." in str(part) for part in leaf.path)]
        if dotted:  # SB3 makes a torch module per Dict key, and torch refuses dots in module names
            raise EnvSetupError(
                f"{env_id}: observation keys with a dot ({', '.join(map(repr, dotted))}) cannot reach "
                "SB3's MultiInputPolicy; rename them (e.g. with a gymnasium.ObservationWrapper)"
            )
    elif not isinstance(observation_space, SUPPORTED_OBSERVATION_SPACES):
        raise EnvSetupError(
            f"{env_id}: observation space {observation_space} is not supported "
            "(supported: Box, Discrete, MultiBinary, MultiDiscrete, and Dict or Tuple spaces of those)."
        )
    if not isinstance(action_space, SUPPORTED_ACTION_SPACES):
        raise EnvSetupError(
            f"{env_id}: action space {action_space} is not supported "
            "(supported: Box, Discrete, MultiDiscrete, MultiBinary)."
        )
    for what, space in [*(("observation", s) for s in observed), ("action", action_space)]:
        if _starts_off_zero(space):
            # SB3 ignores ``start``: its policies act in 0..n-1 and one-hot observations as if
            # they started at 0, so the env got actions out of its range (an IndexError in the
            # env, or a wrong action) and observations out of the one-hot's.
            raise EnvSetupError(
                f"{env_id}: {what} space {space} does not start at 0, which stable-baselines3 ignores; "
                f"shift it to start at 0 with a gymnasium.{what.capitalize()}Wrapper"
            )


def _starts_off_zero(space: gym.Space) -> bool:
    """A Discrete or MultiDiscrete space whose values do not start at 0 (``start`` is Gymnasium's)."""
    if isinstance(space, (spaces.Discrete, spaces.MultiDiscrete)):
        return bool(np.any(np.asarray(space.start) != 0))
    return False


def make_env(
    spec: EnvSpec,
    *,
    seed: int | None = None,
    render_mode: str | None = None,
) -> gym.Env:
    """Build one env of a run: ``gym.make`` (or the spec's factory) (+ :class:`RecordedPrecisionActions`
    for a float64 action space, so that a replay executes the very actions of the recording)
    (+ :class:`LeafDictObservation` for a Tuple, nested Dict or scalar-leaf Dict observation, which
    SB3 cannot read) + :class:`EpisodeSeeder`.

    Args:
        spec: env id and kwargs (and factory).
        seed: the seed of this env's sequence of episode seeds (None: drawn from the OS).
        render_mode: ``"rgb_array"`` for the clip renderer; None for training (no rendering cost).

    Raises:
        EnvSetupError: unknown id, unsupported spaces, or an env that cannot render as asked.
    """
    env = spec.build(render_mode)
    check_spaces(env.observation_space, env.action_space, spec.env_id)
    if render_mode == "rgb_array":
        configure_fast_rendering(env)
    if needs_recorded_precision(env.action_space):
        env = RecordedPrecisionActions(env)
    if needs_leaf_dict(env.observation_space):
        try:
            env = LeafDictObservation(env)
        except StructuredSpaceError as exc:
            raise EnvSetupError(f"{spec.env_id}: {exc}") from None
    return EpisodeSeeder(env, seed=seed)


def check_can_render(spec: EnvSpec) -> None:
    """Raise :class:`EnvSetupError` when the env cannot produce ``rgb_array`` frames for clips."""
    if not spec.factory_rebuildable():
        raise EnvSetupError(
            f"the rater app's clip worker runs in its own process and must import the env factory "
            f"{spec.to_json()['factory']}: define it at the top level of an importable module (not in a "
            "script or inside a function), or use a simulated teacher"
        )
    env = spec.build()
    try:
        modes = list(env.metadata.get("render_modes", []))
    finally:
        env.close()
    if "rgb_array" not in modes:
        raise EnvSetupError(
            f"{spec.env_id} cannot render 'rgb_array' frames (its render modes: {modes or 'none'}), "
            "so its segments cannot be shown to a human rater. Use a simulated teacher "
            "(--teacher oracle), or an env that renders rgb_array."
        )
    # Built as the clip worker builds it: an env whose metadata lists rgb_array but whose
    # constructor takes no render_mode passed the check above, and then every clip failed.
    spec.build(render_mode="rgb_array").close()
