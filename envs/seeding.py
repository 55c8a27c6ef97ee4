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
