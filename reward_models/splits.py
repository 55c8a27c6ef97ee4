"""Keys of labelled pairs, and the held-out split that keys on them (``val_fraction > 0``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prefloop.types import LabeledPair

__all__ = ["pair_keys", "validation_mask"]


def pair_keys(pairs: Sequence[LabeledPair]) -> np.ndarray:
    """``(N,)`` int64: each pair's id, or its position for pairs without one (what the validation
    split and the prequential record key on)."""
    return np.array([i if p.pair_id is None else p.pair_id for i, p in enumerate(pairs)], dtype=np.int64)


def validation_mask(keys: np.ndarray, seed: int, val_fraction: float) -> np.ndarray:
    """``(N,)`` bool: which keys (pair ids) are held out. Depends only on ``(seed, key)``."""
    u64 = np.uint64
    with np.errstate(over="ignore"):
        salt = _splitmix64(np.array([seed], dtype=np.int64).view(u64))
        hashed = _splitmix64(np.asarray(keys, dtype=np.int64).view(u64) ^ salt)
        uniform = (hashed >> u64(11)).astype(np.float64) / float(1 << 53)
    return uniform < val_fraction


def _splitmix64(z: np.ndarray) -> np.ndarray:
    u64 = np.uint64
    z = z + u64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> u64(30))) * u64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> u64(27))) * u64(0x94D049BB133111EB)
    return z ^ (z >> u64(31))
