"""The checks every record of a dataset gets, whichever file layout it came in.

A dataset may come from anyone, so every value gets the checks the store would make when the
data arrived through the product, and an error quotes at most a short excerpt of the value it is
about. The file readers (:mod:`prefloop.datasets.load`) turn files into arrays and plain objects;
the functions here turn those into segments, pairs and labels or raise :class:`DatasetError`
naming the file, the line (or row) or array, the field, and the fix.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from typing import Any

import numpy as np

from prefloop.datasets.format import (
    CHOICES,
    INT_ARRAYS,
    LABELS_JSONL,
    PAIRS_JSONL,
    SEGMENTS_JSONL,
    SEGMENTS_NPZ,
    DatasetError,
    DatasetPair,
)
from prefloop.store import (
    ANSWERED,
    CLAIMED,
    PENDING,
    WITHDRAWN,
    StoreError,
    _check_rater,
    _validate_segment,
)
from prefloop.types import Choice, Label, Segment
from prefloop.untrusted import (
    BIDI_CONTROLS,
    TooLargeError,
    check_finite,
    excerpt,
    iter_jsonl,
)

MAX_JSONL_LINE_BYTES = 64 << 10  # a label line is ~200 bytes, a segment line ~250
# Unix seconds a dataset may hold: from 1970 to the end of year 9999 (what datetime can show).
TIME_RANGE = (0.0, 253_402_300_799.0)
INT32 = (-(2**31), 2**31 - 1)  # INTEGER columns on PostgreSQL
INT64 = (-(2**63), 2**63 - 1)  # BIGINT columns, and ids
REEXPORT = "export it again with `prefloop export` (a dataset is only accepted as written)"


# What one record costs once parsed (dicts, dataclasses, small arrays), so that the number of
# records is bounded by --max-gib as well as the bytes: a file of a million "{}" lines is small.
BYTES_PER_RECORD = 1 << 10
BYTES_PER_SEGMENT = 4 << 10


def check_record_budget(name: str, records: int, noun: str, max_bytes: int) -> None:
    """Refuse a file of more records (``noun``: "lines", "rows") than ``max_bytes`` allows once parsed."""
    if records * BYTES_PER_RECORD > max_bytes:
        raise TooLargeError(
            f"{name} has {records:,} {noun}, which would take about {records * BYTES_PER_RECORD:,} "
            f"bytes once read, more than the limit of {max_bytes:,}"
        )


def storable_text(value: str) -> str | None:
    """Why ``value`` cannot be stored as text on every backend (NUL, unpaired surrogate), or None."""
    if "\x00" in value:
        return "a NUL character"
    if any("\ud800" <= ch <= "\udfff" for ch in value):
        return "an unpaired surrogate (not valid Unicode text)"
    return None


def segments_from_arrays(a: dict[str, np.ndarray], file: str = SEGMENTS_NPZ, kind: str = "array") -> list[Segment]:
    """Segments from the per-segment arrays of :data:`NPZ_ARRAYS` (``segments.npz``, or the
    columns of ``segments.parquet`` as arrays), checked as the store would check them.

    Args:
        a: by name, ``(N, ...)`` arrays; ``episode_actions`` concatenated, cut by its offsets.
        file, kind: what the errors name ("segments.npz: array 'obs' ...").
    """

    def bad(name: str, problem: str) -> DatasetError:
        return DatasetError(f"{file}: {kind} {name!r} {problem}; {REEXPORT}")

    for name, arr in a.items():
        if arr.dtype.hasobject or arr.dtype.kind not in "biuf":
            raise bad(name, f"has dtype {arr.dtype}; only numeric and bool arrays are allowed")
        if not check_finite(arr):
            raise bad(name, "holds NaN or infinite values; a recorded segment holds finite numbers only")
    ids = a["segment_id"]
    if ids.ndim != 1:
        raise bad("segment_id", f"must have shape (N,), got {ids.shape}")
    n = ids.shape[0]
    for name in (*INT_ARRAYS, "terminated"):
        arr = a[name]
        if arr.shape != (n,):
            raise bad(name, f"has shape {arr.shape}, expected ({n},) like segment_id")
        if name != "terminated" and arr.dtype.kind not in "iu":
            raise bad(name, f"has dtype {arr.dtype}, expected an integer dtype")
    if a["terminated"].dtype != np.bool_:
        raise bad("terminated", f"has dtype {a['terminated'].dtype}, expected bool")
    offsets = a["episode_actions_offsets"]
    if offsets.shape != (n + 1,) or offsets.dtype.kind not in "iu":
        raise bad("episode_actions_offsets", f"has shape {offsets.shape} ({offsets.dtype}), expected ({n + 1},) integers")
    for name in (*INT_ARRAYS, "episode_actions_offsets"):
        arr = a[name]
        if arr.size and (int(arr.max()) > INT64[1] or int(arr.min()) < INT64[0]):
            raise bad(name, "holds a value outside the 64-bit integer range")
    if len(set(ids.tolist())) != n:
        raise bad("segment_id", "holds duplicate ids")
    if n == 0:
        return []
    rewards = a["true_rewards"]
    if rewards.ndim != 2 or rewards.shape[0] != n or rewards.shape[1] < 1:
        raise bad("true_rewards", f"has shape {rewards.shape}, expected ({n}, L) with L >= 1")
    length = rewards.shape[1]
    for name in ("obs", "actions"):
        if a[name].ndim < 2 or a[name].shape[:2] != (n, length):
            raise bad(name, f"has shape {a[name].shape}, expected ({n}, {length}, ...) (N segments of length L)")
    episode_actions = a["episode_actions"]
    act_tail = a["actions"].shape[2:]
    if episode_actions.ndim < 1 or episode_actions.shape[1:] != act_tail or episode_actions.dtype != a["actions"].dtype:
        raise bad(
            "episode_actions",
            f"has shape {episode_actions.shape} ({episode_actions.dtype}); expected (T, *{act_tail}) "
            f"({a['actions'].dtype}) like actions",
        )
    if offsets[0] != 0 or np.any(np.diff(offsets.astype(np.int64)) < 0) or offsets[-1] != episode_actions.shape[0]:
        raise bad("episode_actions_offsets", f"must rise from 0 to {episode_actions.shape[0]}")

    segments = []
    for i in range(n):
        n_valid, start = int(a["n_valid"][i]), int(a["start_step"][i])
        where = f"segment_id {int(ids[i])} (row {i})"
        if not 1 <= n_valid <= length:
            raise bad("n_valid", f"is {n_valid} for {where}; it must be between 1 and {length}")
        if n_valid < length and not bool(a["terminated"][i]):
            raise bad("n_valid", f"is {n_valid} < L={length} for {where}, which is not terminated")
        if start < 0 or int(a["env_step"][i]) < 0:
            raise bad("start_step", f"or env_step is negative for {where}")
        span = int(offsets[i + 1]) - int(offsets[i])
        if span != start + n_valid:
            raise bad(
                "episode_actions_offsets",
                f"gives {span} episode actions for {where}; start_step + n_valid = {start + n_valid}",
            )
        segment = Segment(
            obs=a["obs"][i].copy(),
            actions=a["actions"][i].copy(),
            true_rewards=rewards[i].copy(),
            n_valid=n_valid,
            terminated=bool(a["terminated"][i]),
            episode_seed=int(a["episode_seed"][i]),
            start_step=start,
            episode_actions=episode_actions[int(offsets[i]) : int(offsets[i + 1])].copy(),
            env_step=int(a["env_step"][i]),
            id=int(ids[i]),
        )
        try:  # every check the store makes on a segment it is given
            _validate_segment(dataclasses.replace(segment, id=None), where)
        except StoreError as exc:
            raise DatasetError(f"{file}: {exc}; {REEXPORT}") from None
        segments.append(segment)
    return segments


def jsonl_objects(data: bytes, name: str) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-empty line of a JSON Lines file's bytes."""
    out = []
    for number, obj in iter_jsonl(data, name, MAX_JSONL_LINE_BYTES):
        if not isinstance(obj, dict):
            raise DatasetError(f"{name} line {number} must be a JSON object, got {type(obj).__name__}; {REEXPORT}")
        out.append((number, obj))
    return out


class Fields:
    """Typed field access on one JSON Lines object, with errors naming file, line and field and
    quoting at most a short excerpt of the value."""

    def __init__(self, file: str, number: int, obj: dict[str, Any], unit: str = "line"):
        self.file, self.number, self.obj, self.unit = file, number, obj, unit

    def error(self, name: str, problem: str) -> DatasetError:
        return DatasetError(f"{self.file} {self.unit} {self.number}: field {name!r} {problem}; {REEXPORT}")

    def _get(self, name: str) -> Any:
        if name not in self.obj:
            raise self.error(name, "is missing")
        return self.obj[name]

    def int(self, name: str, low: int = INT64[0], high: int = INT64[1]) -> int:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be an integer, got {excerpt(value)}")
        if not low <= value <= high:
            raise self.error(name, f"must be an integer from {low} to {high}, got {excerpt(value)}")
        return value

    def float(self, name: str, *, optional: bool = False) -> float | None:
        value = self._get(name)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(name, f"must be a finite number{' or null' if optional else ''}, got {excerpt(value)}")
        return float(value)

    def time(self, name: str, *, optional: bool = False) -> float | None:
        """Unix seconds from 1970 to the year 9999."""
        value = self.float(name, optional=optional)
        if value is not None and not TIME_RANGE[0] <= value <= TIME_RANGE[1]:
            raise self.error(name, f"must be unix seconds from 1970 to the year 9999, got {excerpt(value)}")
        return value

    def str(self, name: str) -> str:
        value = self._get(name)
        if not isinstance(value, str) or not value.strip():
            raise self.error(name, f"must be a non-empty string, got {excerpt(value)}")
        return value

    def bool(self, name: str) -> bool:
        value = self._get(name)
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, got {excerpt(value)}")
        return value

    def choice(self, name: str, *, optional: bool = False) -> Choice | None:
        value = self._get(name)
        if value is None and optional:
            return None
        try:
            return Choice(value)
        except (ValueError, TypeError):
            allowed = CHOICES + (["null"] if optional else [])
            raise self.error(name, f"is {excerpt(value)}; it must be one of {allowed}") from None

    def unique_id(self, seen: set[int], noun: str) -> int:
        """The record's ``id``, refused when an earlier record of the file had it; added to ``seen``."""
        record_id = self.int("id")
        if record_id in seen:
            raise self.error("id", f"{record_id} appears twice; {noun} ids must be unique")
        seen.add(record_id)
        return record_id

    def pair_id(self, pair_ids: Any, pairs_file: str, why: str = "") -> int:
        """The record's ``pair_id``, refused unless it is one of ``pair_ids`` (the pairs of ``pairs_file``)."""
        pair_id = self.int("pair_id")
        if pair_id not in pair_ids:
            raise self.error("pair_id", f"is {pair_id}, which is not a pair of {pairs_file}{why}")
        return pair_id

    def rater_id(self, name: str) -> str:
        """A rater id the store would accept, without characters that reorder how it shows."""
        value = self._get(name)
        try:
            rater_id = _check_rater(value)
        except StoreError as exc:
            raise self.error(name, str(exc).removeprefix("rater_id ")) from None
        bidi = next((ch for ch in rater_id if ch in BIDI_CONTROLS), None)
        if bidi is not None:
            raise self.error(
                name,
                f"{excerpt(rater_id)} contains the bidirectional control U+{ord(bidi):04X}, which "
                "makes a name show as another",
            )
        return rater_id


def check_segment_lines(
    lines: list[tuple[int, dict[str, Any]]],
    segments: list[Segment],
    file: str = SEGMENTS_JSONL,
    arrays_file: str = SEGMENTS_NPZ,
    unit: str = "line",
) -> dict[int, float]:
    """Check the segment records of ``file`` against the arrays of ``arrays_file``; returns each
    segment's ``created_at`` (if given)."""
    if len(lines) != len(segments):
        raise DatasetError(
            f"{file} has {len(lines)} {unit}s but {arrays_file} holds {len(segments)} "
            f"segments; one of them is incomplete -- {REEXPORT}"
        )
    created_at: dict[int, float] = {}
    for (number, obj), seg in zip(lines, segments):
        f = Fields(file, number, obj, unit)
        row = number - 1 if unit == "line" else number  # lines count from 1, rows from 0
        if f.int("id") != seg.id:
            raise f.error("id", f"is {obj['id']} but row {row} of {arrays_file} is segment {seg.id}; keep both files in the same order")
        for name in ("episode_seed", "start_step", "n_valid", "env_step"):
            if f.int(name) != getattr(seg, name):
                raise f.error(name, f"is {obj[name]} but {arrays_file} says {getattr(seg, name)}")
        if f.bool("terminated") != seg.terminated:
            raise f.error("terminated", f"is {obj['terminated']} but {arrays_file} says {seg.terminated}")
        if obj.get("created_at") is not None:
            created_at[int(seg.id)] = f.time("created_at")  # type: ignore[arg-type, assignment]
    return created_at


def pairs_from_records(
    lines: list[tuple[int, dict[str, Any]]],
    segment_ids: set[int],
    file: str = PAIRS_JSONL,
    segments_file: str = SEGMENTS_JSONL,
    unit: str = "line",
) -> list[DatasetPair]:
    """Checked pairs, by id, from ``(line or row number, object)`` records of ``file``; every
    segment id must be one of ``segment_ids`` (the segments of ``segments_file``)."""
    pairs: list[DatasetPair] = []
    seen: set[int] = set()
    for number, obj in lines:
        f = Fields(file, number, obj, unit)
        pair_id = f.unique_id(seen, "pair")
        sides = {}
        for side in ("left_segment_id", "right_segment_id"):
            sides[side] = f.int(side)
            if sides[side] not in segment_ids:
                raise f.error(side, f"is {sides[side]}, which is not a segment of {segments_file}")
        labels_per_pair = f.int("labels_per_pair", 1, INT32[1])
        gold = f.choice("gold_choice", optional=True)
        if gold is Choice.CANT_TELL:
            raise f.error("gold_choice", "is 'cant_tell'; a gold answer is left, right, equal or null")
        status = obj.get("status")
        pairs.append(
            DatasetPair(
                id=pair_id,
                left_segment_id=sides["left_segment_id"],
                right_segment_id=sides["right_segment_id"],
                labels_per_pair=labels_per_pair,
                gold_choice=gold,
                score=f.float("score"),  # type: ignore[arg-type]
                created_at=f.time("created_at"),  # type: ignore[arg-type]
                status=status if status in (PENDING, CLAIMED, ANSWERED, WITHDRAWN) else None,
            )
        )
    return sorted(pairs, key=lambda p: p.id)


def labels_from_records(
    lines: list[tuple[int, dict[str, Any]]],
    pairs: list[DatasetPair],
    file: str = LABELS_JSONL,
    pairs_file: str = PAIRS_JSONL,
    unit: str = "line",
) -> list[Label]:
    """Checked labels, by id, from ``(line or row number, object)`` records of ``file``: rater
    ids the store accepts, at most one live label per rater and pair, never more live labels than
    a pair asks for."""
    asked = {p.id: p.labels_per_pair for p in pairs}
    labels: list[Label] = []
    seen: set[int] = set()
    live: set[tuple[int, str]] = set()
    live_per_pair: Counter[int] = Counter()
    for number, obj in lines:
        f = Fields(file, number, obj, unit)
        label_id = f.unique_id(seen, "label")
        pair_id = f.pair_id(asked, pairs_file)
        rater_id = f.rater_id("rater_id")
        response_time = f.float("response_time_s")
        if response_time is not None and response_time < 0:
            raise f.error("response_time_s", f"must be >= 0, got {response_time}")
        created = f.time("created_at")
        retracted_at = f.time("retracted_at", optional=True)
        if retracted_at is None:
            if (pair_id, rater_id) in live:
                raise f.error(
                    "rater_id",
                    f"{excerpt(rater_id)} has two live (not retracted) labels on pair {pair_id}; a "
                    "rater has at most one live label per pair",
                )
            live.add((pair_id, rater_id))
            live_per_pair[pair_id] += 1
            if live_per_pair[pair_id] > asked[pair_id]:
                raise f.error(
                    "pair_id",
                    f"pair {pair_id} asked for {asked[pair_id]} label(s) but this is live label "
                    f"number {live_per_pair[pair_id]}; the store never takes more than a pair asks for",
                )
        labels.append(
            Label(
                pair_id=pair_id,
                rater_id=rater_id,
                choice=f.choice("choice"),  # type: ignore[arg-type]
                response_time_s=response_time,  # type: ignore[arg-type]
                created_at=created,  # type: ignore[arg-type]
                id=label_id,
                retracted_at=retracted_at,
            )
        )
    return sorted(labels, key=lambda lab: lab.id)  # type: ignore[arg-type, return-value]

