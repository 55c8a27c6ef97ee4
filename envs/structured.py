"""Dict and Tuple observations on the policy's side: one flat Dict of leaves for SB3.

SB3's ``MultiInputPolicy`` takes a Dict observation whose entries are Box, Discrete, MultiBinary or
MultiDiscrete spaces; it has no Tuple support, no nested Dicts, and no scalar Box entries (its
``Flatten`` of a ``(B,)`` batch fails; DeepMind Control's walker has ``height: Box(())``). So an env
whose observation space is a Tuple, or a Dict holding a Dict, a Tuple or a scalar Box, is wrapped
in :class:`LeafDictObservation`, which gives a scalar Box leaf the shape ``(1,)``:
the policy sees one Dict with an entry per leaf, keyed by the leaf's path joined with slashes
(``"0"``, ``"arm/joints"``, ``"sensors/1"``; not dots, which torch refuses in SB3's module names). A plain Dict of vector leaves is left as it is.

The leaves keep their order, so ``gymnasium.spaces.flatten`` gives the same vector for the wrapped
observation as for the original one: segments and the reward model (which read that flat vector,
see ``prefloop.structured_obs``) are the same whichever side of the wrapper they look from.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from prefloop.structured_obs import StructuredSpaceError, is_structured, leaf_value, leaves


def needs_leaf_dict(space: gym.Space) -> bool:
    """True for a Tuple, or a Dict with a Dict, Tuple or scalar Box inside: spaces SB3 policies cannot read."""
    if isinstance(space, spaces.Tuple):
        return True
    return isinstance(space, spaces.Dict) and any(
        is_structured(sub) or _is_scalar_box(sub) for sub in space.spaces.values()
    )


def _is_scalar_box(space: gym.Space) -> bool:
    return isinstance(space, spaces.Box) and space.shape == ()


def _policy_space(space: gym.Space) -> gym.Space:
    """The leaf's space as the policy sees it: a scalar Box as shape ``(1,)``, others unchanged
    (same values, so the flat vector is the same)."""
    if not _is_scalar_box(space):
        return space
    return spaces.Box(np.reshape(space.low, (1,)), np.reshape(space.high, (1,)), (1,), space.dtype)


class LeafDictObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """A Tuple or nested Dict observation as a flat Dict ``{leaf path: leaf value}`` (see the module doc).

    Raises:
        StructuredSpaceError: unsupported leaves (see ``prefloop.structured_obs.leaves``), or two
            leaves whose paths coincide (a key containing a slash).
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        self._leaves = leaves(env.observation_space)
        names = [leaf.name for leaf in self._leaves]
        if len(set(names)) != len(names):
            clash = sorted({n for n in names if names.count(n) > 1})
            raise StructuredSpaceError(
                f"observation leaves {clash} have the same path; rename the Dict keys that contain '/'"
            )
        self._scalar = {leaf.name for leaf in self._leaves if _is_scalar_box(leaf.space)}
        self.observation_space = spaces.Dict([(leaf.name, _policy_space(leaf.space)) for leaf in self._leaves])

    def observation(self, observation: Any) -> dict[str, Any]:
        values = {leaf.name: leaf_value(observation, leaf) for leaf in self._leaves}
        for name in self._scalar:
            values[name] = np.reshape(values[name], (1,))
        return values
