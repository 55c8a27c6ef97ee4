"""Checks on what callers pass the store, each raising a one-line :class:`StoreError` that names
the problem and the fix, so bad input fails at the call and not at training time (or, on
PostgreSQL, as a driver error). Messages quote untrusted values only cut short (:func:`short`).
"""

from __future__ import annotations

import math
import numbers
import unicodedata

import numpy as np

from prefloop.store.errors import StoreError
from prefloop.store.schema import MAX_META_KEY_CHARS, MAX_MIME_CHARS, MAX_RATER_ID_CHARS
from prefloop.types import Choice, Segment

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1  # INTEGER columns (ids) on PostgreSQL


def short(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages about untrusted input (a
    megabyte string or a 10**5000 integer must not end up in a message or a log line whole)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 -- a hostile __repr__, or an int too long to print
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def bad_text(text: str) -> str | None:
    """Why ``text`` cannot be stored as is on every backend, or None: PostgreSQL refuses NUL
    characters, no backend can encode an unpaired surrogate, and other control characters in a
    name only hide what it really says."""
    for ch in text:
        category = unicodedata.category(ch)
        if category == "Cs":
            return "an unpaired surrogate (not valid Unicode text)"
        if category == "Cc":
            return f"the control character U+{ord(ch):04X}"
    return None


def as_int(value: object, what: str, low: int = _INT64_MIN, high: int = _INT64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise StoreError(f"{what} must be an integer, got {short(value)}")
    number = int(value)
    if not low <= number <= high:
        raise StoreError(f"{what} must be an integer from {low} to {high}, got {short(number)}")
    return number


def as_id(value: object, what: str) -> int:
    """An id (or count) of an INTEGER column: PostgreSQL's are 32-bit, and a larger number in a
    query is an error there rather than "no such row", so it is refused here on every backend."""
    return as_int(value, what, _INT32_MIN, _INT32_MAX)


def as_choice(value: object, what: str) -> Choice:
    try:
        return Choice(value)
    except ValueError:
        raise StoreError(
            f"{what} must be one of {[c.value for c in Choice]} (a prefloop.types.Choice), "
            f"got {short(value)}"
        ) from None


def check_rater(rater_id: object) -> str:
    if not isinstance(rater_id, str) or not rater_id.strip():
        raise StoreError(f"rater_id must be a non-empty string, got {short(rater_id)}")
    if len(rater_id) > MAX_RATER_ID_CHARS:
        raise StoreError(
            f"rater_id is {len(rater_id)} characters long; use at most {MAX_RATER_ID_CHARS}"
        )
    problem = bad_text(rater_id)
    if problem:
        raise StoreError(f"rater_id {short(rater_id)} contains {problem}; use printable text")
    return rater_id


def check_lease(lease_seconds: object) -> float:
    try:
        value = float(lease_seconds)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise StoreError(f"lease_seconds must be a positive number of seconds, got {short(lease_seconds)}")
    return value


def check_response_time(response_time_s: object) -> float:
    try:
        value = float(response_time_s)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(response_time_s, bool) or not (math.isfinite(value) and value >= 0):
        raise StoreError(
            f"response_time_s must be a finite number of seconds >= 0, got {short(response_time_s)}"
        )
    return value


def check_mime(mime: object) -> str:
    if not isinstance(mime, str) or not mime.strip() or len(mime) > MAX_MIME_CHARS:
        raise StoreError(
            f"clip MIME type must be a non-empty string of at most {MAX_MIME_CHARS} characters "
            f"(e.g. 'video/webm'), got {mime!r}"
        )
    return mime


def check_meta_key(key: object) -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_META_KEY_CHARS or bad_text(key):
        raise StoreError(
            f"meta key must be a non-empty string of at most {MAX_META_KEY_CHARS} printable "
            f"characters, got {short(key)}"
        )
    return key


def validate_segment(seg: Segment, where: str) -> None:
    """Check what the store relies on, so a bad segment fails here and not at training time."""
    if not isinstance(seg, Segment):
        raise StoreError(f"{where} is {type(seg).__name__}, not a prefloop.types.Segment")
    for name in ("obs", "actions", "true_rewards", "episode_actions"):
        array = getattr(seg, name)
        if not isinstance(array, np.ndarray):
            raise StoreError(
                f"{where}.{name} is {type(array).__name__}; it must be a numpy array"
            )
        if array.dtype.hasobject:
            raise StoreError(
                f"{where}.{name} has dtype object; use a numeric dtype (float32, int64)"
            )
    if seg.true_rewards.ndim != 1 or seg.true_rewards.shape[0] < 1:
        raise StoreError(
            f"{where}.true_rewards must have shape (L,) with L >= 1, got {seg.true_rewards.shape}"
        )
    length = seg.length
    for name in ("obs", "actions"):
        array = getattr(seg, name)
        if array.ndim < 1 or array.shape[0] != length:
            raise StoreError(
                f"{where}.{name} has shape {array.shape}; its first dimension must be the "
                f"segment length {length} (the length of true_rewards)"
            )
    n_valid = as_int(seg.n_valid, f"{where}.n_valid")
    start_step = as_int(seg.start_step, f"{where}.start_step")
    env_step = as_int(seg.env_step, f"{where}.env_step")
    seed = as_int(seg.episode_seed, f"{where}.episode_seed")
    if not 1 <= n_valid <= length:
        raise StoreError(f"{where}.n_valid is {n_valid}; it must be between 1 and {length}")
    if n_valid < length and not bool(seg.terminated):
        raise StoreError(
            f"{where}.n_valid is {n_valid} < length {length} but terminated is False; only a "
            "terminated episode may be padded with absorbing steps"
        )
    if start_step < 0 or env_step < 0:
        raise StoreError(f"{where}: start_step and env_step must be >= 0")
    if not _INT64_MIN <= seed <= _INT64_MAX:
        raise StoreError(f"{where}.episode_seed {seed} does not fit in 64 bits; use a smaller seed")
    expected = (start_step + n_valid, *seg.actions.shape[1:])
    if seg.episode_actions.shape != expected:
        raise StoreError(
            f"{where}.episode_actions has shape {seg.episode_actions.shape}, expected {expected}: "
            "every action from the episode's reset to the segment's last real step"
        )
