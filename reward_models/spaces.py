"""Turning Gymnasium observations and actions into the flat float vectors a reward network reads.

Each supported space gets a small encoder module mapping a batch ``(B, *space.shape)`` to
``(B, dim)`` float32:

- ``Box``: flattened. Dimensions with finite bounds (``high - low <= 1e4``) are mapped affinely
  onto ``[-1, 1]`` so that e.g. MountainCar's velocity (range 0.14) is not drowned out by its
  position; unbounded dimensions pass through unchanged. The map depends on the space only, so a
  model rebuilt from its saved space description encodes exactly the same way.
- ``Discrete``: one-hot over ``n`` (values may be integers or integral floats, offset by ``start``).
- ``MultiDiscrete``: the one-hots of all components, concatenated.
- ``MultiBinary``: flattened 0/1 as floats.

Anything else (Dict, Tuple, Text, Graph, Sequence, ...) raises :class:`UnsupportedSpaceError`.

Spaces are also described as plain JSON (:func:`space_to_json` / :func:`space_from_json`) so a saved
reward model never needs pickle.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

# Box dimensions wider than this are treated as unbounded (e.g. bounds at +-float32 max).
_MAX_SCALED_RANGE = 1e4


class UnsupportedSpaceError(ValueError):
    """A Gymnasium space the reward model cannot encode."""


def _unsupported(space: gym.Space, role: str) -> UnsupportedSpaceError:
    return UnsupportedSpaceError(
        f"the reward model cannot encode the {role} space {space!r} "
        f"({type(space).__name__}); supported are Box, Discrete, MultiDiscrete and MultiBinary. "
        "Flatten structured spaces first, e.g. wrap the env in "
        "gymnasium.wrappers.FlattenObservation (observations) or convert the space to a Box."
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
    def __init__(self, space: gym.spaces.Box, role: str) -> None:
        super().__init__(space, role)
        self.dim = self._flat
        low = np.asarray(space.low, dtype=np.float64).reshape(-1)
        high = np.asarray(space.high, dtype=np.float64).reshape(-1)
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
            return flat * self._inv_half_np + self._offset_np
        return flat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = self._flatten(x).to(torch.float32)
        if self._affine:
            return torch.addcmul(self.offset, flat, self.inv_half)
        return flat


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
        idx = np.rint(np.asarray(x).reshape(len(x), -1)[:, 0]).astype(np.int64) - self.start
        return self._eye[np.clip(idx, 0, self.n - 1)]

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
    if arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
        raise ValueError(f"{role} values must be integers for {space!r}, got non-integral floats")
    if np.any(arr < low) or np.any(arr > high):
        raise ValueError(
            f"{role} values out of range for {space!r}: min {arr.min()}, max {arr.max()}"
        )


def make_encoder(space: gym.Space, role: str) -> SpaceEncoder:
    """The encoder for ``space``; ``role`` ("observation" or "action") only words error messages.

    Raises:
        UnsupportedSpaceError: for any space other than Box, Discrete, MultiDiscrete, MultiBinary.
    """
    if isinstance(space, gym.spaces.Box):
        if space.shape is None or any(int(s) == 0 for s in space.shape):
            raise UnsupportedSpaceError(f"the {role} space {space!r} is empty (a zero-size Box)")
        return BoxEncoder(space, role)
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
    raise ValueError(f"unknown space type {kind!r}; expected Box, Discrete, MultiDiscrete or MultiBinary")
