"""Dict and Tuple observations as one float vector per step, in ``gymnasium.spaces.flatten``'s layout.

Segments, the store, datasets and the reward model all hold an observation as one array per step;
for a Dict or Tuple observation space that array is the *flat vector* this module makes. Its layout
is exactly ``gymnasium.spaces.flatten(space, obs)`` cast to float32 (see docs/observations.md):

- the leaves are concatenated depth-first in the space's own order: a ``Dict``'s keys in the order
  of ``space.spaces`` (Gymnasium sorts the keys of a plain ``dict`` when the space is built; an
  ``OrderedDict`` or a list of pairs keeps its order), a ``Tuple``'s entries by position;
- ``Box`` leaf: its values, row-major (``x.reshape(-1)``);
- ``Discrete(n, start)`` leaf: a one-hot of length ``n``, 1 at ``x - start``;
- ``MultiDiscrete(nvec, start)`` leaf: the one-hots of its entries (lengths ``nvec``), concatenated;
- ``MultiBinary`` leaf: its 0/1 values, row-major.

``gymnasium.spaces.unflatten(space, vector)`` turns a stored vector back into the observation.

Only *vector* leaves are accepted: image leaves (uint8 Box of rank >= 2) and Text, Graph,
Sequence or OneOf leaves are refused with :class:`StructuredSpaceError`.

Kept free of torch and SB3: the env wrappers (``prefloop.envs``) and the reward model
(``prefloop.reward_models``) both flatten with these functions, so both sides agree by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

STRUCTURED_SPACES = (spaces.Dict, spaces.Tuple)
VECTOR_LEAVES = (spaces.Box, spaces.Discrete, spaces.MultiBinary, spaces.MultiDiscrete)


class StructuredSpaceError(ValueError):
    """A Dict or Tuple observation space prefloop cannot flatten; the message names the leaf."""


@dataclass(frozen=True)
class Leaf:
    """One leaf of a structured space and where it lies in the flat vector.

    Attributes:
        path: keys (Dict) and positions (Tuple) from the root, e.g. ``("achieved_goal",)``.
        space: the leaf's space (Box, Discrete, MultiBinary or MultiDiscrete).
        start, stop: its columns in the flat vector, ``vector[start:stop]``.
    """

    path: tuple[str | int, ...]
    space: gym.Space
    start: int
    stop: int

    @property
    def name(self) -> str:
        """The path joined with slashes (``"observation"``, ``"arm/0"``); ``"<root>"`` for the root.

        Slashes, not dots: SB3's ``MultiInputPolicy`` makes a torch submodule per key of the Dict
        it reads, and torch refuses module names with dots."""
        return _name(self.path)


def is_structured(space: gym.Space) -> bool:
    """True for Dict and Tuple spaces (the ones flattened into one vector per step)."""
    return isinstance(space, STRUCTURED_SPACES)


def leaves(space: gym.Space) -> list[Leaf]:
    """The leaves of ``space`` in flat-vector order, with their column ranges.

    Raises:
        StructuredSpaceError: an image leaf, a leaf type other than Box, Discrete, MultiBinary
            and MultiDiscrete, a non-string Dict key, or no leaf at all.
    """
    found: list[Leaf] = []
    _collect(space, (), found)
    if not found:
        raise StructuredSpaceError(f"the observation space {space} has no leaves; there is nothing to learn from")
    return found


def _collect(space: gym.Space, path: tuple[str | int, ...], out: list[Leaf]) -> None:
    if isinstance(space, spaces.Dict):
        for key, sub in space.spaces.items():
            if not isinstance(key, str):
                raise StructuredSpaceError(
                    f"observation key {key!r} at {_name(path)} is a {type(key).__name__}; "
                    "Dict observation keys must be strings"
                )
            _collect(sub, (*path, key), out)
        return
    if isinstance(space, spaces.Tuple):
        for index, sub in enumerate(space.spaces):
            _collect(sub, (*path, index), out)
        return
    name = _name(path)
    if isinstance(space, spaces.Box) and np.dtype(space.dtype) == np.uint8 and len(space.shape) >= 2:
        raise StructuredSpaceError(
            f"observation leaf {name!r} is an image ({space}); Dict and Tuple observations take "
            "vector leaves only (Box of rank < 2 or non-uint8, Discrete, MultiBinary, MultiDiscrete): "
            "drop the image leaf, or give the env a plain image observation space"
        )
    if not isinstance(space, VECTOR_LEAVES):
        raise StructuredSpaceError(
            f"observation leaf {name!r} is a {type(space).__name__} space ({space}); Dict and Tuple "
            "observations take Box, Discrete, MultiBinary and MultiDiscrete leaves only"
        )
    start = out[-1].stop if out else 0
    out.append(Leaf(path, space, start, start + int(gym.spaces.flatdim(space))))


def _name(path: tuple[str | int, ...]) -> str:
    return "/".join(str(p) for p in path) or "<root>"


def flat_dim(space: gym.Space) -> int:
    """Length of the flat vector of a structured space (``gymnasium.spaces.flatdim``)."""
    return leaves(space)[-1].stop


class ObservationFlattener:
    """Flattens observations of one Dict or Tuple space (its leaves are worked out once).

    Raises:
        StructuredSpaceError: see :func:`leaves`.
    """

    def __init__(self, space: gym.Space) -> None:
        self.space = space
        self.leaves = leaves(space)
        self.dim = self.leaves[-1].stop

    def batch(self, obs: Any) -> np.ndarray:
        """A batch of observations -> ``(B, dim)`` float32, row ``i`` equal to
        ``gymnasium.spaces.flatten(space, obs_i)``.

        ``obs`` is the batch as SB3's VecEnvs and replay buffers hold it: a dict (Dict) or tuple
        (Tuple) whose leaves are arrays ``(B, *leaf_shape)``; Discrete leaves ``(B,)`` or
        ``(B, 1)``, integers or integral floats.
        """
        parts = [_flatten_leaf(leaf, _at(obs, leaf.path)) for leaf in self.leaves]
        rows = {len(p) for p in parts}
        if len(rows) != 1:
            raise ValueError(f"the leaves of the observation batch have different row counts {sorted(rows)}")
        return np.concatenate(parts, axis=1)

    def one(self, obs: Any) -> np.ndarray:
        """One observation -> ``(dim,)`` float32 (``gymnasium.spaces.flatten``, as float32)."""
        return self.batch(_map_leaves(self.space, obs, lambda x: np.asarray(x)[None]))[0]


def batch_as_array(space: gym.Space) -> Callable[[Any], np.ndarray]:
    """What turns a batch of ``space``'s observations into the array segments and reward functions
    read: :meth:`ObservationFlattener.batch` for Dict and Tuple spaces, ``np.asarray`` otherwise."""
    return ObservationFlattener(space).batch if is_structured(space) else np.asarray


def one_as_array(space: gym.Space) -> Callable[[Any], np.ndarray]:
    """:func:`batch_as_array` for one observation (no batch axis)."""
    return ObservationFlattener(space).one if is_structured(space) else np.asarray


def flatten_batch(space: gym.Space, obs: Any) -> np.ndarray:
    """:meth:`ObservationFlattener.batch` for a one-off call."""
    return ObservationFlattener(space).batch(obs)


def flatten_one(space: gym.Space, obs: Any) -> np.ndarray:
    """:meth:`ObservationFlattener.one` for a one-off call."""
    return ObservationFlattener(space).one(obs)


def _map_leaves(space: gym.Space, obs: Any, fn: Any) -> Any:
    if isinstance(space, spaces.Dict):
        return {key: _map_leaves(sub, obs[key], fn) for key, sub in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(_map_leaves(sub, obs[i], fn) for i, sub in enumerate(space.spaces))
    return fn(obs)


def leaf_value(obs: Any, leaf: Leaf) -> np.ndarray:
    """The value of ``leaf`` in an observation (or a batch) in the space's structure."""
    return _at(obs, leaf.path)


def _at(obs: Any, path: tuple[str | int, ...]) -> np.ndarray:
    for step in path:
        if isinstance(step, str):
            if not isinstance(obs, Mapping) or step not in obs:
                raise ValueError(f"the observation has no key {step!r} (path {_name(path)})")
        elif not isinstance(obs, Sequence) or isinstance(obs, (str, bytes)) or step >= len(obs):
            raise ValueError(f"the observation has no entry {step} (path {_name(path)})")
        obs = obs[step]
    return np.asarray(obs)


def _flatten_leaf(leaf: Leaf, x: np.ndarray) -> np.ndarray:
    space = leaf.space
    if x.ndim == 0:
        raise ValueError(f"observation leaf {leaf.name!r} is a scalar; expected a batch (B, ...)")
    batch = len(x)
    if isinstance(space, spaces.Discrete):
        index = _indices(x.reshape(batch, -1), leaf)[:, :1] - int(space.start)
        return _one_hot(index, np.array([int(space.n)]), leaf)
    if isinstance(space, spaces.MultiDiscrete):
        index = _indices(x.reshape(batch, -1), leaf) - np.asarray(space.start, dtype=np.int64).reshape(1, -1)
        return _one_hot(index, np.asarray(space.nvec, dtype=np.int64).reshape(-1), leaf)
    flat = np.asarray(x, dtype=np.float32).reshape(batch, -1)
    if flat.shape[1] != leaf.stop - leaf.start:
        raise ValueError(f"observation leaf {leaf.name!r} has shape {x.shape}, expected (B, {', '.join(map(str, space.shape))})")
    return flat


def _indices(x: np.ndarray, leaf: Leaf) -> np.ndarray:
    if x.dtype.kind == "f":
        rounded = np.rint(x)
        if not np.array_equal(rounded, x):
            raise ValueError(f"observation leaf {leaf.name!r} ({leaf.space}) has non-integral values")
        x = rounded
    return x.astype(np.int64)


def _one_hot(index: np.ndarray, sizes: np.ndarray, leaf: Leaf) -> np.ndarray:
    """``index (B, K)`` zero-based, ``sizes (K,)`` -> ``(B, sizes.sum())`` float32 one-hots."""
    if index.shape[1] != len(sizes):
        raise ValueError(f"observation leaf {leaf.name!r} has {index.shape[1]} entries per row, expected {len(sizes)}")
    if np.any(index < 0) or np.any(index >= sizes):
        raise ValueError(f"observation leaf {leaf.name!r} has values outside {leaf.space}")
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    out = np.zeros((len(index), int(sizes.sum())), dtype=np.float32)
    np.put_along_axis(out, index + offsets, 1.0, axis=1)
    return out
