"""Frame-stacked image observations kept once per frame, in memory and in the store.

A frame-stacked observation ``(k, *frame)`` repeats each frame ``k`` times across consecutive steps:
step ``t``'s stack is step ``t - 1``'s shifted by one frame, the newest last. So ``T`` steps hold
only ``T + k - 1`` distinct frames.

- In memory, :func:`share_stacked_frames` turns ``obs (T, k, *frame)`` into a read-only view over
  those frames (the segment buffer of an Atari run holds each frame about once).
- In the store, :func:`obs_to_bytes` writes only the distinct frames (``.npy`` bytes after a short
  header saying ``k``), about ``k`` times fewer bytes; :func:`obs_from_bytes` gives back the same
  values as such a view. Anything else is written as plain ``.npy`` (:func:`array_to_bytes`), and
  plain ``.npy`` written by earlier prefloop versions reads as before.
"""

from __future__ import annotations

import numpy as np

from prefloop.serialization import array_from_bytes, array_to_bytes

__all__ = ["STACKED_MAGIC", "obs_from_bytes", "obs_to_bytes", "share_stacked_frames", "stacked_view"]

# A blob starting with this is stacked frames; a plain .npy blob starts with b"\x93NUMPY".
STACKED_MAGIC = b"PFSTACK1"


def distinct_frames(obs: np.ndarray) -> np.ndarray | None:
    """``obs (T, k, *frame)`` uint8: its ``T + k - 1`` distinct frames ``(T + k - 1, *frame)`` when
    each step's stack is the previous one shifted by one frame (the newest last); else None."""
    if obs.dtype != np.uint8 or obs.ndim < 3 or obs.shape[1] < 2 or len(obs) < 2:
        return None
    if not np.array_equal(obs[1:, :-1], obs[:-1, 1:]):
        return None
    return np.concatenate([obs[0], obs[1:, -1]])


def stacked_view(frames: np.ndarray, k: int) -> np.ndarray:
    """``(T, k, *frame)`` read-only view over ``frames (T + k - 1, *frame)``: step ``t`` is frames ``t .. t + k - 1``."""
    if not 1 <= k <= len(frames):
        raise ValueError(f"a stack of {k} frames needs at least {k} frames, got {len(frames)}")
    frames = np.ascontiguousarray(frames)
    step = frames.strides[0]
    return np.lib.stride_tricks.as_strided(
        frames, shape=(len(frames) - k + 1, k, *frames.shape[1:]), strides=(step, *frames.strides), writeable=False
    )


def share_stacked_frames(obs: np.ndarray) -> np.ndarray:
    """``obs (T, k, *frame)`` uint8, consecutive steps of one episode: a read-only view of the same
    values over one array of its distinct frames when it is frame-stacked; otherwise ``obs`` itself."""
    frames = distinct_frames(obs)
    return obs if frames is None else stacked_view(frames, obs.shape[1])


def obs_to_bytes(obs: np.ndarray) -> bytes:
    """A segment's observations as a store blob: the distinct frames of a frame-stacked uint8
    array (``STACKED_MAGIC``, one byte ``k``, then ``.npy`` of ``(T + k - 1, *frame)``), any other
    array as plain ``.npy``."""
    frames = distinct_frames(obs) if obs.ndim >= 3 and obs.shape[1] <= 255 else None
    if frames is None:
        return array_to_bytes(obs)
    return STACKED_MAGIC + bytes([obs.shape[1]]) + array_to_bytes(frames)


def obs_from_bytes(data: bytes | bytearray | memoryview) -> np.ndarray:
    """The observations :func:`obs_to_bytes` (or plain :func:`array_to_bytes`) wrote; stacked
    frames come back as a read-only view with the original shape and values.

    Raises:
        ValueError: the blob is neither (damaged, or not written by prefloop).
    """
    data = bytes(data)
    if not data.startswith(STACKED_MAGIC):
        return array_from_bytes(data)
    header = len(STACKED_MAGIC)
    if len(data) <= header:
        raise ValueError("stored stacked frames are cut short; the database row is damaged")
    frames = array_from_bytes(data[header + 1 :])
    k = data[header]
    if frames.dtype != np.uint8 or frames.ndim < 2 or not 2 <= k <= len(frames) - 1:
        raise ValueError(
            f"stored stacked frames are inconsistent ({k} per stack, {frames.dtype} frames of shape "
            f"{frames.shape}); the database row is damaged or was not written by prefloop"
        )
    return stacked_view(frames, k)
