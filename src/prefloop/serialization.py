"""NumPy arrays <-> bytes, for storing arrays as database blobs.

The format is NumPy's own ``.npy`` (``np.save``), which records dtype, byte order and shape, so an
array comes back exactly as it went in. Pickle is never used in either direction: loading runs with
``allow_pickle=False``, so a tampered database cannot execute code.

:func:`strict_json` is the one way the project writes JSON files: never a bare ``NaN``.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np


def array_to_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` (any shape, any numeric/bool/string dtype) as ``.npy`` bytes.

    Raises:
        TypeError: ``array`` is not a NumPy array.
        ValueError: ``array`` has an object dtype (that would need pickle).
    """
    if not isinstance(array, np.ndarray):
        raise TypeError(
            f"expected a numpy.ndarray, got {type(array).__name__}; convert it with np.asarray(...)"
        )
    if array.dtype.hasobject:
        raise ValueError(
            f"cannot store an array of dtype {array.dtype} (object) without pickle; "
            "convert it to a numeric dtype such as float32 or int64 first"
        )
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def array_from_bytes(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Decode bytes written by :func:`array_to_bytes`; dtype and shape are restored exactly.

    Raises:
        ValueError: ``data`` is not a pickle-free ``.npy`` payload.
    """
    try:
        return np.load(io.BytesIO(bytes(data)), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(
            f"stored array bytes are not a valid pickle-free .npy payload ({exc}); "
            "the database row is damaged or was not written by prefloop"
        ) from exc


def finite_json(value: Any) -> Any:
    """``value`` with every nan/inf float replaced by None, so it is strict JSON for any reader."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def strict_json(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of ``value`` as valid JSON: nan/inf become null (never a bare ``NaN``)."""
    return json.dumps(finite_json(value), allow_nan=False, **kwargs)
