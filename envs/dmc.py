"""DeepMind Control Suite tasks (dm_control through shimmy) as ordinary Gymnasium ids.

shimmy registers ``dm_control/<domain>-<task>-v0`` (e.g. ``dm_control/walker-walk-v0``) when it is
imported. Importing it loads dm_control's suite and MuJoCo (about half a second), so prefloop does
it only when a ``dm_control/`` id is asked for (:func:`ensure_dmc_registered`, called by the env
checks), never on ``import prefloop.envs``.

The preference-learning papers name these tasks ``walker_walk`` and ``cheetah_run``: those short
names are registered Gymnasium ids too (:func:`register_dmc_envs`, run when ``prefloop.envs`` is
imported, like the pixel envs), so ``--env walker_walk`` works wherever an id does -- training,
the clip worker, ``--resume``, the bench -- and has the same preset as the shimmy id.

Observations are shimmy's Dict of the task's named arrays (walker: ``height`` (a scalar),
``orientations`` (14,), ``velocity`` (9,)); the policy reads them through SB3's
``MultiInputPolicy`` and the reward model through the flat vector (docs/observations.md).
Episodes end by truncation after 1,000 control steps; they never terminate.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import gymnasium as gym

DMC_NAMESPACE = "dm_control"
INSTALL_HINT = "DeepMind Control tasks need dm_control and shimmy: pip install 'prefloop[dmc]'"

# The papers' task names -> shimmy's ids.
SHORT_NAMES: dict[str, str] = {
    "walker_walk": "dm_control/walker-walk-v0",
    "cheetah_run": "dm_control/cheetah-run-v0",
}


def is_dmc_id(env_id: str) -> bool:
    """True for shimmy's ``dm_control/...`` ids and prefloop's short names of them."""
    return env_id.startswith(f"{DMC_NAMESPACE}/") or env_id in SHORT_NAMES


def dmc_available() -> bool:
    """Whether dm_control and shimmy are installed (without importing either)."""
    return all(importlib.util.find_spec(name) is not None for name in ("dm_control", "shimmy"))


def ensure_dmc_registered(env_id: str) -> None:
    """Import shimmy (which registers its ``dm_control/`` ids) when ``env_id`` is one of them and
    not registered yet; a no-op for every other id, and when shimmy is not installed (the unknown
    id is then reported by :func:`prefloop.envs.check_env_id`, with :data:`INSTALL_HINT`)."""
    if not env_id.startswith(f"{DMC_NAMESPACE}/") or env_id in gym.registry or not dmc_available():
        return
    import shimmy  # noqa: F401 -- registers the dm_control ids as a side effect

    gym.register_envs(shimmy)


def make_dmc_env(env_id: str, **kwargs: Any) -> gym.Env:
    """``gymnasium.make(env_id, **kwargs)`` for a shimmy ``dm_control/`` id (the entry point of the
    short names).

    Raises:
        gymnasium.error.DependencyNotInstalled: dm_control or shimmy missing (the ``dmc`` extra).
    """
    ensure_dmc_registered(env_id)
    if env_id not in gym.registry:
        raise gym.error.DependencyNotInstalled(INSTALL_HINT)
    return gym.make(env_id, **kwargs)


def register_dmc_envs() -> None:
    """Register the short names of :data:`SHORT_NAMES` with Gymnasium (idempotent; imports nothing)."""
    for short, full in SHORT_NAMES.items():
        if short not in gym.registry:
            # Episode length (1,000 steps) and time step come from the dm_control task itself.
            gym.register(short, entry_point=make_dmc_env, kwargs={"env_id": full}, disable_env_checker=True)
