"""Reproducible episodes: every reset gets a known seed, so any episode can be replayed later."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

ObsType = Any
ActType = Any


class EpisodeSeeder(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Resets the wrapped env with a fresh seed drawn from its own generator, and says which.

    Why: a segment is re-rendered as a clip by resetting the same env with the episode's seed and
    replaying the recorded actions. Recording seeds instead of frames keeps oracle runs free of any
    rendering cost.

    ``reset(seed=s)`` restarts the generator at ``s``; ``reset()`` draws the next seed. Either way
    the inner env is reset with an explicit int seed, returned as ``info["episode_seed"]`` (int).
    Observations, actions and rewards pass through unchanged.
    """

    def __init__(self, env: gym.Env, seed: int | None = None):
        gym.utils.RecordConstructorArgs.__init__(self, seed=seed)
        gym.Wrapper.__init__(self, env)
        self._seed_rng = np.random.default_rng(seed)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[ObsType, dict[str, Any]]:
        if seed is not None:
            self._seed_rng = np.random.default_rng(seed)
        episode_seed = int(self._seed_rng.integers(0, 2**31 - 1))
        obs, info = self.env.reset(seed=episode_seed, options=options)
        info = dict(info)
        info["episode_seed"] = episode_seed
        return obs, info


class RecordedPrecisionActions(gym.ActionWrapper, gym.utils.RecordConstructorArgs):
    """Rounds each continuous action to float32, the precision segments record it in, before the
    env sees it; the action space (and the policy's view of it) is unchanged.

    Why: a clip is rendered by replaying the recorded actions. An env with a float64 action space
    (DeepMind Control through shimmy) would otherwise be trained on actions that the recording
    rounds, and a contact-rich body (walker) amplifies the rounding into a visibly different
    motion within a hundred steps, so the replay check refuses the clip.
    """

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ActionWrapper.__init__(self, env)

    def action(self, action: ActType) -> ActType:
        dtype = self.action_space.dtype
        return np.asarray(action, dtype=np.float32).astype(dtype)


def needs_recorded_precision(action_space: gym.Space) -> bool:
    """True for a Box action space finer than float32 (float64): see :class:`RecordedPrecisionActions`."""
    return (
        isinstance(action_space, gym.spaces.Box)
        and np.issubdtype(action_space.dtype, np.floating)
        and np.finfo(action_space.dtype).precision > np.finfo(np.float32).precision
    )
