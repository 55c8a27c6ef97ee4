"""Turning Gymnasium observations and actions into the flat float vectors a reward network reads.

Each supported space gets a small encoder module mapping a batch ``(B, *space.shape)`` to
``(B, dim)`` float32:

- ``Box``: flattened. Dimensions with finite bounds (``high - low <= 1e4``) are mapped affinely
  onto ``[-1, 1]`` so that e.g. MountainCar's velocity (range 0.14) is not drowned out by its
  position; unbounded dimensions pass through unchanged. The map depends on the space only, so a
  model rebuilt from its saved space description encodes exactly the same way. Box *actions* may
  also enter squared (``squares=True``: ``(B, 2 * flat)``, the scaled values then their squares):
  a control cost ``sum(a**2)``, part of nearly every MuJoCo and DeepMind Control reward, is then
  linear in the inputs instead of a curve an MLP must find from comparisons.
- ``Discrete``: one-hot over ``n`` (values may be integers or integral floats, offset by ``start``).
- ``MultiDiscrete``: the one-hots of all components, concatenated.
- ``MultiBinary``: flattened 0/1 as floats.
- ``Dict`` and ``Tuple`` (nested too) of the four above: the network reads the *flat vector* of
  ``prefloop.structured_obs`` -- exactly ``gymnasium.spaces.flatten(space, obs)`` as float32:
  leaves depth-first in the space's order, Box leaves row-major, Discrete and MultiDiscrete
  leaves one-hot, MultiBinary leaves 0/1 (docs/observations.md gives the layout). The encoder
  then scales the columns of bounded Box leaves onto ``[-1, 1]`` as for a Box and passes every
  other column through. It takes that flat vector ``(B, flatdim)`` (what segments store), and
  :meth:`SpaceEncoder.as_batch` also turns a batch in the space's own structure (a dict or tuple
  of ``(B, ...)`` arrays, as SB3 gives it) into it.

Anything else (Text, Graph, Sequence, image leaves in a Dict, ...) raises :class:`UnsupportedSpaceError`.

Spaces are also described as plain JSON (:func:`space_to_json` / :func:`space_from_json`) so a saved
reward model never needs pickle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from prefloop.structured_obs import ObservationFlattener, StructuredSpaceError, is_structured

# Box dimensions wider than this are treated as unbounded (e.g. bounds at +-float32 max).
_MAX_SCALED_RANGE = 1e4


class UnsupportedSpaceError(ValueError):
    """A Gymnasium space the reward model cannot encode."""


def _unsupported(space: gym.Space, role: str) -> UnsupportedSpaceError:
    return UnsupportedSpaceError(
        f"the reward model cannot encode the {role} space {space!r} "
        f"({type(space).__name__}); supported are Box, Discrete, MultiDiscrete and MultiBinary, "
        "and (observations) Dict and Tuple spaces of those. Convert the space to one of them, "
        "e.g. with a gymnasium.ObservationWrapper."
    )


class SpaceEncoder(nn.Module):
    """Base class: ``forward(x (B, *shape)) -> (B, dim)`` float32."""

    space: gym.Space
    dim: int

    def __init__(self, space: gym.Space, role: str) -> None:
        super().__init__()
        self.space = space
        self.role = role
        self.shape: tuple[int, ...] = tuple(int(s) for s in (space.shape or ()))
        self._flat = int(np.prod(self.shape)) if self.shape else 1

    def check(self, x: np.ndarray) -> None:
        """Raise ValueError when a numpy batch ``(B, *shape)`` does not belong to the space."""
        rest = tuple(x.shape[1:])
        if x.ndim < 1 or not (rest == self.shape or (self.shape == () and rest == (1,))):
            raise ValueError(f"{self.role} batch has shape {x.shape}, expected {self._expected()} for {self.space!r}")

    def as_batch(self, x: Any) -> np.ndarray:
        """A batch as the numpy array this encoder reads (structured encoders flatten dicts/tuples)."""
        return np.asarray(x)

    def encode_numpy(self, x: np.ndarray) -> np.ndarray:
        """The same encoding as ``forward``, in numpy: ``(B, *shape) -> (B, dim)`` float32.

        The per-env-step reward path uses this: for a handful of rows numpy is several times
        faster than dispatching the equivalent torch ops.
        """
        return self(torch.as_tensor(x)).numpy()

    def _expected(self) -> str:
        return "(B,) or (B, 1)" if self.shape == () else f"(B, {', '.join(map(str, self.shape))})"

    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        flat = x.reshape(batch, -1)
        if flat.shape[1] != self._flat:
            raise ValueError(
                f"{self.role} batch has shape {tuple(x.shape)}, expected {self._expected()} for {self.space!r}"
            )
        return flat


class BoxEncoder(SpaceEncoder):
    """Flattened, bounded dimensions scaled onto ``[-1, 1]``; ``low``/``high`` (flat) default to the
    space's bounds (:class:`StructuredEncoder` passes the bounds of its flat vector)."""

    def __init__(
        self, space: gym.Space, role: str, low: np.ndarray | None = None, high: np.ndarray | None = None,
        squares: bool = False,
    ) -> None:
        super().__init__(space, role)
        self.squares = bool(squares)
        self.dim = self._flat * (2 if self.squares else 1)
        low = np.asarray(space.low if low is None else low, dtype=np.float64).reshape(-1)
        high = np.asarray(space.high if high is None else high, dtype=np.float64).reshape(-1)
        with np.errstate(invalid="ignore", over="ignore"):
            width = high - low
            bounded = np.isfinite(low) & np.isfinite(high) & (width > 0) & (width <= _MAX_SCALED_RANGE)
            half = np.where(bounded, width / 2.0, 1.0)
            centre = np.where(bounded, (high + low) / 2.0, 0.0)
        self._affine = bool(bounded.any())
        self._inv_half_np = (1.0 / half).astype(np.float32)
        self._offset_np = (-centre / half).astype(np.float32)
        # Derived from the space, so not persisted: a reloaded model recomputes them.
        self.register_buffer("inv_half", torch.as_tensor(1.0 / half, dtype=torch.float32), persistent=False)
        self.register_buffer("offset", torch.as_tensor(-centre / half, dtype=torch.float32), persistent=False)

    def encode_numpy(self, x: np.ndarray) -> np.ndarray:
        flat = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        if self._affine:
            flat = flat * self._inv_half_np + self._offset_np
        return np.concatenate((flat, flat * flat), axis=1) if self.squares else flat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = self._flatten(x).to(torch.float32)
        if self._affine:
            flat = torch.addcmul(self.offset, flat, self.inv_half)
        return torch.cat((flat, flat * flat), dim=1) if self.squares else flat


class StructuredEncoder(BoxEncoder):
    """Dict and Tuple spaces: reads the flat vector ``(B, flatdim)`` (see the module docstring).

    Columns of bounded Box leaves are scaled onto ``[-1, 1]`` like a Box's; one-hot and binary
    columns pass through unchanged (their bounds are set to ``[-1, 1]``, the identity map).
    """

    def __init__(self, space: gym.Space, role: str) -> None:
        try:
            flattener = ObservationFlattener(space)
        except StructuredSpaceError as exc:
            raise UnsupportedSpaceError(f"the reward model cannot encode the {role} space: {exc}") from None
        low = -np.ones(flattener.dim)
        high = np.ones(flattener.dim)
        for leaf in flattener.leaves:
            if isinstance(leaf.space, gym.spaces.Box):
                low[leaf.start : leaf.stop] = np.asarray(leaf.space.low, dtype=np.float64).reshape(-1)
                high[leaf.start : leaf.stop] = np.asarray(leaf.space.high, dtype=np.float64).reshape(-1)
        super().__init__(gym.spaces.Box(-np.inf, np.inf, (flattener.dim,), np.float32), role, low, high)
        self.flattener = flattener
        self.space = space

    def as_batch(self, x: Any) -> np.ndarray:
        if isinstance(x, (Mapping, tuple)):  # the space's own structure, as SB3 batches it
            return self.flattener.batch(x)
        return np.asarray(x)

    def _expected(self) -> str:
        return f"(B, {self.flattener.dim}) (the flat vector; gymnasium.spaces.flatdim of the space)"


class DiscreteEncoder(SpaceEncoder):
    def __init__(self, space: gym.spaces.Discrete, role: str) -> None:
        super().__init__(space, role)
        self.n = int(space.n)
        self.start = int(space.start)
        self.dim = self.n
        self._eye = np.eye(self.n, dtype=np.float32)

    def check(self, x: np.ndarray) -> None:
        super().check(x)
        _check_integral(x, self.start, self.start + self.n - 1, self.role, self.space)

    def encode_numpy(self, x: np.ndarray) -> np.ndarray:
        values = np.asarray(x).reshape(len(x), -1)[:, 0]
        # Integers need no rounding (SB3's Discrete actions are int64); minimum/maximum is np.clip without its wrapper.
        idx = (values if values.dtype.kind in "iu" else np.rint(values)).astype(np.int64) - self.start
        return self._eye[np.minimum(np.maximum(idx, 0), self.n - 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = _to_index(self._flatten(x)[:, 0], self.start)
        # Clamped so absorbing steps (zeros, possibly below ``start``) never index out of range;
        # their reward is masked anyway. Real inputs are range-checked by ``check``.
        idx = idx.clamp_(0, self.n - 1)
        # scatter rather than F.one_hot, which reads the max index back (a device sync).
        out = torch.zeros(idx.shape[0], self.n, dtype=torch.float32, device=idx.device)
        return out.scatter_(1, idx.unsqueeze(1), 1.0)


class MultiDiscreteEncoder(SpaceEncoder):
    def __init__(self, space: gym.spaces.MultiDiscrete, role: str) -> None:
        super().__init__(space, role)
        nvec = np.asarray(space.nvec, dtype=np.int64).reshape(-1)
        start = np.asarray(space.start, dtype=np.int64).reshape(-1)
        self.dim = int(nvec.sum())
        self._nvec_np, self._start_np = nvec, start
        offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
        self.register_buffer("nvec", torch.as_tensor(nvec), persistent=False)
        self.register_buffer("start_vec", torch.as_tensor(start), persistent=False)
        self.register_buffer("offsets", torch.as_tensor(offsets), persistent=False)

    def check(self, x: np.ndarray) -> None:
        super().check(x)
        flat = x.reshape(x.shape[0], -1)
        _check_integral(flat, self._start_np, self._start_np + self._nvec_np - 1, self.role, self.space)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = self._flatten(x)
        idx = _to_index(flat, 0) - self.start_vec
        idx = torch.minimum(idx.clamp_(min=0), self.nvec - 1) + self.offsets
        out = torch.zeros(flat.shape[0], self.dim, dtype=torch.float32, device=flat.device)
        return out.scatter_(1, idx, 1.0)


class MultiBinaryEncoder(SpaceEncoder):
    def __init__(self, space: gym.spaces.MultiBinary, role: str) -> None:
        super().__init__(space, role)
        self.dim = self._flat

    def check(self, x: np.ndarray) -> None:
        super().check(x)
        _check_integral(x, 0, 1, self.role, self.space)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._flatten(x).to(torch.float32)


def _to_index(x: torch.Tensor, start: int) -> torch.Tensor:
    if x.is_floating_point():
        x = x.round()
    return x.to(torch.int64) - start


def _check_integral(x: np.ndarray, low: Any, high: Any, role: str, space: gym.Space) -> None:
    arr = np.asarray(x)
    if arr.size == 0:
        return
    if arr.dtype.kind == "f" and not (arr == np.round(arr)).all():
        raise ValueError(f"{role} values must be integers for {space!r}, got non-integral floats")
    # Array methods, not np.any: this checks every env step's actions, and np.any's wrapper costs more than the test.
    if (arr < low).any() or (arr > high).any():
        raise ValueError(
            f"{role} values out of range for {space!r}: min {arr.min()}, max {arr.max()}"
        )


def make_encoder(space: gym.Space, role: str, *, squares: bool = False) -> SpaceEncoder:
    """The encoder for ``space``; ``role`` ("observation" or "action") only words error messages;
    ``squares``: a Box also gives its scaled values squared (other spaces ignore it: a one-hot or
    0/1 column squared is itself).

    Raises:
        UnsupportedSpaceError: for any space other than Box, Discrete, MultiDiscrete, MultiBinary
            and Dict or Tuple spaces of them (image leaves refused).
    """
    if is_structured(space) and role == "observation":  # SB3 has no Dict or Tuple actions
        return StructuredEncoder(space, role)
    if isinstance(space, gym.spaces.Box):
        if space.shape is None or any(int(s) == 0 for s in space.shape):
            raise UnsupportedSpaceError(f"the {role} space {space!r} is empty (a zero-size Box)")
        return BoxEncoder(space, role, squares=squares)
    if isinstance(space, gym.spaces.Discrete):
        return DiscreteEncoder(space, role)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return MultiDiscreteEncoder(space, role)
    if isinstance(space, gym.spaces.MultiBinary):
        return MultiBinaryEncoder(space, role)
    raise _unsupported(space, role)


def _floats_to_json(values: np.ndarray) -> list:
    """Nested lists of floats; infinities as the strings "inf" / "-inf" so the JSON stays strict."""

    def conv(v: float) -> float | str:
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if math.isnan(v):
            raise ValueError("Box bounds must not be NaN")
        return float(v)

    return [conv(float(v)) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def _floats_from_json(values: list, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    arr = np.array([float(v) for v in values], dtype=np.float64)
    return arr.astype(dtype).reshape(shape)


def space_to_json(space: gym.Space) -> dict[str, Any]:
    """A JSON-serialisable description of a supported space (strict JSON: no NaN / Infinity)."""
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": np.dtype(space.dtype).name,
            "low": _floats_to_json(space.low),
            "high": _floats_to_json(space.high),
        }
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start), "dtype": np.dtype(space.dtype).name}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {
            "type": "MultiDiscrete",
            "shape": list(space.shape),
            "nvec": [int(v) for v in np.asarray(space.nvec).reshape(-1)],
            "start": [int(v) for v in np.asarray(space.start).reshape(-1)],
            "dtype": np.dtype(space.dtype).name,
        }
    if isinstance(space, gym.spaces.MultiBinary):
        return {"type": "MultiBinary", "shape": list(space.shape)}
    if isinstance(space, gym.spaces.Dict):
        # a list, not an object: the key order is the flat vector's layout and must survive
        return {"type": "Dict", "spaces": [[str(k), space_to_json(s)] for k, s in space.spaces.items()]}
    if isinstance(space, gym.spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_to_json(s) for s in space.spaces]}
    raise _unsupported(space, "given")


def space_from_json(desc: dict[str, Any]) -> gym.Space:
    """Inverse of :func:`space_to_json`. Raises ValueError (or KeyError) on a malformed description."""
    kind = desc["type"]
    if kind == "Box":
        shape = tuple(int(s) for s in desc["shape"])
        dtype = np.dtype(desc["dtype"])
        low = _floats_from_json(desc["low"], shape, dtype)
        high = _floats_from_json(desc["high"], shape, dtype)
        return gym.spaces.Box(low=low, high=high, shape=shape, dtype=dtype)
    if kind == "Discrete":
        return gym.spaces.Discrete(int(desc["n"]), start=int(desc.get("start", 0)), dtype=np.dtype(desc.get("dtype", "int64")))
    if kind == "MultiDiscrete":
        shape = tuple(int(s) for s in desc["shape"])
        nvec = np.array(desc["nvec"], dtype=np.int64).reshape(shape)
        start = np.array(desc["start"], dtype=np.int64).reshape(shape)
        return gym.spaces.MultiDiscrete(nvec, dtype=np.dtype(desc.get("dtype", "int64")), start=start)
    if kind == "MultiBinary":
        shape = [int(s) for s in desc["shape"]]
        return gym.spaces.MultiBinary(shape[0] if len(shape) == 1 else shape)
    if kind == "Dict":  # a list of pairs keeps the saved key order (a plain dict would be sorted)
        return gym.spaces.Dict([(str(key), space_from_json(sub)) for key, sub in desc["spaces"]])
    if kind == "Tuple":
        return gym.spaces.Tuple([space_from_json(sub) for sub in desc["spaces"]])
    raise ValueError(
        f"unknown space type {kind!r}; expected Box, Discrete, MultiDiscrete, MultiBinary, Dict or Tuple"
    )
