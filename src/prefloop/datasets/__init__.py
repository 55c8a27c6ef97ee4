"""A run's preferences as a portable dataset folder: export, validate, load, import.

Researchers take a run's segments, pairs and labels elsewhere (another machine, another store,
another tool) and can re-run a human experiment from them (see :mod:`prefloop.teachers.recorded`). The
format is open and never uses pickle: JSON, JSON Lines and one NumPy ``.npz`` of plain numeric
arrays, which any language with a zip and ``.npy`` reader can open.

    dataset/
      manifest.json    format "prefloop.preferences" version 1: where it came from (run name,
                       env_spec, render_fps, guideline, the run's config), counts, file checksums,
                       and a description of every file, array and field
      segments.npz     the segments' arrays, row i of every array belongs to segment_id[i]
      segments.jsonl   one JSON object per segment (same order), its scalar fields and provenance
      pairs.jsonl      one JSON object per pair shown to raters
      labels.jsonl     one JSON object per label, retracted ones included (they are kept, marked)

Ids in the files are the source store's ids; importing gives new ids in the target store and keeps
everything else as it was: arrays bit for bit (dtypes too), rater ids, choices, response times,
timestamps and the retracted state of every label.

Everything a file holds is validated on loading, before a store is touched; a problem raises
:class:`DatasetError` naming the file, the line or array, the field, and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    create_engine,
    delete,
    exists,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from prefloop.config_files import ConfigError
from prefloop.credentials import scrub_config
from prefloop.serialization import array_to_bytes
from prefloop.store import (
    ANSWERED,
    CLAIMED,
    PENDING,
    WITHDRAWN,
    NoSuchRunError,
    NoSuchStoreError,
    PreferenceStore,
    StoreError,
    _check_rater,
    _segment_from_row,
    _validate_segment,
    labels_table,
    pairs_table,
    run_meta_table,
    runs_table,
    segments_table,
)
from prefloop.store.run_folder import store_of_run_folder
from prefloop.types import Choice, Label, Segment
from prefloop.untrusted import (
    BIDI_CONTROLS,
    TooLargeError,
    UntrustedInputError,
    check_finite,
    excerpt,
    extract_zip,
    iter_jsonl,
    open_regular_file,
    parse_json,
    read_npz,
    read_regular_file,
)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "DatasetError",
    "DatasetPair",
    "DatasetSummary",
    "PreferenceDataset",
    "export_dataset",
    "import_dataset",
    "load_dataset",
]

FORMAT_NAME = "prefloop.preferences"
FORMAT_VERSION = 1

MANIFEST = "manifest.json"
SEGMENTS_NPZ = "segments.npz"
SEGMENTS_JSONL = "segments.jsonl"
PAIRS_JSONL = "pairs.jsonl"
LABELS_JSONL = "labels.jsonl"
DATA_FILES = (SEGMENTS_NPZ, SEGMENTS_JSONL, PAIRS_JSONL, LABELS_JSONL)

# Run meta keys (written by prefloop.training.loop.publish_run_info) carried in the manifest.
# "guideline_page": the rater guideline's Markdown page (rendered safely by the rater app).
_META_KEYS = ("config", "env_spec", "render_fps", "guideline", "guideline_page")
_IMPORT_META_KEY = "import_source"

_CHOICES = [c.value for c in Choice]
_INT_ARRAYS = ("segment_id", "n_valid", "episode_seed", "start_step", "env_step")

FILE_DESCRIPTIONS: dict[str, Any] = {
    MANIFEST: {
        "description": "this file: format, provenance, counts, checksums and the meaning of every field",
    },
    SEGMENTS_NPZ: {
        "description": (
            "NumPy npz (zip of .npy files, no pickle: load with allow_pickle=False). N segments of "
            "length L; row i of every per-segment array belongs to segment_id[i]"
        ),
        "arrays": {
            "segment_id": "(N,) int64, the segment's id in the source store",
            "obs": "(N, L, *obs_shape), the observation each action was taken in (float32, or uint8 for images, as recorded)",
            "actions": "(N, L, *act_shape), the actions (int64 for Discrete, float32 for Box)",
            "true_rewards": "(N, L) float32, the environment's reward (0 on absorbing steps)",
            "n_valid": "(N,) int64, real steps; steps from n_valid on are the absorbing state "
            "after termination (obs and actions zero)",
            "terminated": "(N,) bool, the episode terminated at step n_valid - 1 of the segment",
            "episode_seed": "(N,) int64, the seed the episode was reset with",
            "start_step": "(N,) int64, index of the segment's first step within its episode",
            "env_step": "(N,) int64, the agent's total env steps when the segment was recorded",
            "episode_actions": "(sum of start_step + n_valid, *act_shape), every action from each "
            "episode's reset to its segment's last real step, segments concatenated in row order; "
            "with episode_seed it replays the episode exactly (how clips are rendered)",
            "episode_actions_offsets": "(N + 1,) int64, segment i's episode actions are "
            "episode_actions[offsets[i]:offsets[i + 1]]",
        },
    },
    SEGMENTS_JSONL: {
        "description": "one JSON object per line, one line per segment, in the order of segments.npz",
        "fields": {
            "id": "int, the segment's id in the source store (= segment_id in segments.npz)",
            "env_id": "str or null, the Gymnasium id of the env it was recorded in",
            "episode_seed": "int", "start_step": "int", "n_valid": "int", "terminated": "bool",
            "env_step": "int, provenance: the policy had trained this many env steps when it "
            "played the segment (random-policy segments come first)",
            "run_name": "str, provenance: the run whose policy played it",
            "created_at": "float, unix seconds when it was stored",
        },
    },
    PAIRS_JSONL: {
        "description": "one JSON object per line, one line per pair shown to raters, by id",
        "fields": {
            "id": "int, the pair's id in the source store",
            "left_segment_id": "int, a segment id of segments.jsonl",
            "right_segment_id": "int, a segment id of segments.jsonl",
            "labels_per_pair": "int >= 1, how many different raters were to label it",
            "gold_choice": "null or 'left'/'right'/'equal': the known answer of a quality-control pair",
            "score": "float, the query selector's acquisition score",
            "created_at": "float, unix seconds when it was queued",
            "status": "'pending', 'claimed', 'answered' or 'withdrawn' at export; an import "
            "recomputes it from the labels (keeping 'withdrawn') and never carries leases",
        },
    },
    LABELS_JSONL: {
        "description": "one JSON object per line, one line per label, in the order they were given",
        "fields": {
            "id": "int, the label's id in the source store",
            "pair_id": "int, a pair id of pairs.jsonl",
            "rater_id": "str, who answered",
            "choice": f"one of {_CHOICES}: which segment is better ('cant_tell': no answer)",
            "response_time_s": "float >= 0, seconds the rater took",
            "created_at": "float, unix seconds when it was given",
            "retracted_at": "null, or unix seconds when the rater undid it (not used for training)",
        },
    },
}


class DatasetError(ValueError):
    """A dataset folder is missing, malformed or cannot go where it was asked to; the message names
    the file and field and says how to fix it."""


@dataclass(frozen=True)
class DatasetPair:
    """One pair of a dataset; segment ids refer to :attr:`PreferenceDataset.segments`."""

    id: int
    left_segment_id: int
    right_segment_id: int
    labels_per_pair: int
    gold_choice: Choice | None
    score: float
    created_at: float
    status: str | None = None


@dataclass
class PreferenceDataset:
    """A dataset folder in memory.

    Attributes:
        manifest: the parsed ``manifest.json``.
        segments: every segment, ``id`` set to its dataset (source store) id.
        pairs: by id.
        labels: in the order given; ``pair_id`` and ``id`` are dataset ids, retracted ones included
            when the export included them.
        segment_created_at: when each segment (by id) was first stored, unix seconds.
    """

    manifest: dict[str, Any]
    segments: list[Segment]
    pairs: list[DatasetPair]
    labels: list[Label]
    segment_created_at: dict[int, float] = field(default_factory=dict)

    @property
    def run_name(self) -> str | None:
        """The run the dataset was exported from."""
        return self.manifest.get("source", {}).get("run_name")

    @property
    def env_spec(self) -> dict[str, Any] | None:
        return self.manifest.get("env_spec")

    def segment_by_id(self) -> dict[int, Segment]:
        return {int(s.id): s for s in self.segments}  # type: ignore[arg-type]

    def live_labels(self) -> dict[int, list[Label]]:
        """Non-retracted labels by pair id, in the order given."""
        out: dict[int, list[Label]] = {}
        for label in self.labels:
            if label.retracted_at is None:
                out.setdefault(label.pair_id, []).append(label)
        return out


@dataclass
class DatasetSummary:
    """What an export or import moved.

    ``segment_ids``, ``pair_ids`` and ``label_ids`` map dataset ids to the target store's ids
    (import only; empty after an export, whose files keep the store's ids).
    """

    path: Path
    run_name: str
    segments: int
    pairs: int
    labels: int
    retracted_labels: int
    raters: list[str]
    segment_ids: dict[int, int] = field(default_factory=dict)
    pair_ids: dict[int, int] = field(default_factory=dict)
    label_ids: dict[int, int] = field(default_factory=dict)

    def to_text(self) -> str:
        return (
            f"{self.segments} segments, {self.pairs} pairs, {self.labels} labels "
            f"({self.retracted_labels} retracted) from {len(self.raters)} rater(s)"
        )


# --------------------------------------------------------------------------------------------
# Export


def export_dataset(
    store_url: str,
    run_name: str,
    out_dir: str | os.PathLike[str],
    *,
    include_retracted: bool = True,
) -> DatasetSummary:
    """Write run ``run_name`` of the store at ``store_url`` as a dataset folder ``out_dir``.

    Reads one consistent snapshot (a single read transaction), so a run still in progress exports
    cleanly. The folder is written under a temporary name and renamed when complete. Nothing in the
    store is changed.

    Raises:
        DatasetError: ``out_dir`` is not empty, the store or run does not exist, or the run's
            segments do not share one shape.
        prefloop.store.StoreError: the store cannot be opened.
    """
    out = Path(out_dir)
    _check_out_dir(out)
    with _open_for_export(store_url, run_name) as store:
        with _transaction(store, write=False) as conn:
            segment_rows, pair_rows, label_rows, meta = _read_snapshot(conn, store.run_id, include_retracted)

    env_spec = _json_or_none(meta.get("env_spec"))
    segments = [_segment_from_row(row) for row in segment_rows]
    arrays = _segment_arrays(segments, run_name)
    env_id = env_spec.get("env_id") if isinstance(env_spec, dict) else None
    segment_lines = [
        {
            "id": int(row.id),
            "env_id": env_id,
            "episode_seed": int(row.episode_seed),
            "start_step": int(row.start_step),
            "n_valid": int(row.n_valid),
            "terminated": bool(row.terminated),
            "env_step": int(row.env_step),
            "run_name": run_name,
            "created_at": float(row.created_at),
        }
        for row in segment_rows
    ]
    pair_lines = [
        {
            "id": int(row.id),
            "left_segment_id": int(row.left_segment_id),
            "right_segment_id": int(row.right_segment_id),
            "labels_per_pair": int(row.labels_per_pair),
            "gold_choice": row.gold_choice,
            "score": float(row.score),
            "created_at": float(row.created_at),
            "status": row.status,
        }
        for row in pair_rows
    ]
    label_lines = [
        {
            "id": int(row.id),
            "pair_id": int(row.pair_id),
            "rater_id": row.rater_id,
            "choice": row.choice,
            "response_time_s": float(row.response_time_s),
            "created_at": float(row.created_at),
            "retracted_at": None if row.retracted_at is None else float(row.retracted_at),
        }
        for row in label_rows
    ]
    counts = _counts(len(segment_lines), pair_lines, label_lines)
    try:
        render_fps: float | None = float(meta["render_fps"])
    except (KeyError, ValueError):
        render_fps = None

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        np.savez_compressed(tmp / SEGMENTS_NPZ, allow_pickle=False, **arrays)
        _write_jsonl(tmp / SEGMENTS_JSONL, segment_lines)
        _write_jsonl(tmp / PAIRS_JSONL, pair_lines)
        _write_jsonl(tmp / LABELS_JSONL, label_lines)
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "created_at": time.time(),
            "created_by": _prefloop_version(),
            "source": {"run_name": run_name, "backend": make_url(store_url).get_backend_name()},
            "include_retracted": bool(include_retracted),
            "env_spec": env_spec,
            "render_fps": render_fps,
            "guideline": meta.get("guideline"),
            "guideline_page": meta.get("guideline_page"),
            "config": scrub_config(_json_or_none(meta.get("config"))),  # stores of older versions kept the password
            "segment_length": int(arrays["true_rewards"].shape[1]) if segments else None,
            "counts": counts,
            "checksums": {name: _sha256(tmp / name) for name in DATA_FILES},
            "files": FILE_DESCRIPTIONS,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return DatasetSummary(
        path=out,
        run_name=run_name,
        segments=counts["segments"],
        pairs=counts["pairs"],
        labels=counts["labels"],
        retracted_labels=counts["retracted_labels"],
        raters=sorted({line["rater_id"] for line in label_lines}),
    )


def _check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(
            f"export folder {out} already exists and is not empty; nothing was written. Choose a "
            "new --out folder (or delete that one yourself if it is an old export)."
        )


def _publish(tmp: Path, out: Path) -> None:
    if out.exists():
        out.rmdir()  # empty (checked before); a non-empty folder makes rmdir fail, never lose files
    tmp.rename(out)


def _open_for_export(store_url: str, run_name: str) -> PreferenceStore:
    """The store opened read-only (works on an archived, read-only run folder; creates nothing);
    a missing store or run is a DatasetError, a locked or unreadable one says so."""
    try:
        return PreferenceStore(store_url, run_name=run_name, read_only=True)
    except (NoSuchStoreError, NoSuchRunError) as exc:
        raise DatasetError(f"{exc}; pass the run folder (--run-dir) or the URL of the store that holds the run") from None


@contextmanager
def _transaction(store: PreferenceStore, *, write: bool) -> Iterator[Connection]:
    """One transaction on the store's own engine, with its backend settings (SQLite: WAL,
    foreign keys, ``BEGIN IMMEDIATE`` for writes)."""
    manager = store.write_transaction() if write else store.read_transaction()
    with manager as conn:
        yield conn


def _read_snapshot(
    conn: Connection, run_id: int, include_retracted: bool
) -> tuple[list, list, list, dict[str, str]]:
    """The run's segment, pair and label rows (by id) and its meta, read in one transaction."""
    s, p, lab, m = segments_table, pairs_table, labels_table, run_meta_table
    segment_rows = conn.execute(select(s).where(s.c.run_id == run_id).order_by(s.c.id)).all()
    pair_rows = conn.execute(select(p).where(p.c.run_id == run_id).order_by(p.c.id)).all()
    query = select(lab).join(p, p.c.id == lab.c.pair_id).where(p.c.run_id == run_id)
    if not include_retracted:
        query = query.where(lab.c.retracted_at.is_(None))
    label_rows = conn.execute(query.order_by(lab.c.id)).all()
    meta = dict(
        conn.execute(select(m.c.key, m.c.value).where(m.c.run_id == run_id, m.c.key.in_(_META_KEYS))).all()
    )
    return segment_rows, pair_rows, label_rows, meta


def _segment_arrays(segments: Sequence[Segment], run_name: str) -> dict[str, np.ndarray]:
    """The npz arrays of ``segments``; all must share shapes and dtypes (one env, one L)."""
    if not segments:
        empty_int = np.zeros(0, dtype=np.int64)
        return {
            "segment_id": empty_int, "obs": np.zeros((0, 0), np.float32),
            "actions": np.zeros((0, 0), np.int64), "true_rewards": np.zeros((0, 0), np.float32),
            "n_valid": empty_int, "terminated": np.zeros(0, dtype=bool),
            "episode_seed": empty_int, "start_step": empty_int, "env_step": empty_int,
            "episode_actions": np.zeros(0, np.int64),
            "episode_actions_offsets": np.zeros(1, dtype=np.int64),
        }
    first = segments[0]
    for name in ("obs", "actions", "true_rewards", "episode_actions"):
        skip = 1 if name == "episode_actions" else 0  # its first dimension varies by segment
        kinds = {(getattr(s, name).dtype.str, getattr(s, name).shape[skip:]) for s in segments}
        if len(kinds) > 1:
            raise DatasetError(
                f"run {run_name!r} holds segments whose {name} differ in shape or dtype "
                f"({sorted(kinds)[:3]}); a dataset holds one env's segments of one length"
            )
    lengths = [s.episode_actions.shape[0] for s in segments]
    offsets = np.zeros(len(segments) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths)
    episode_actions = (
        np.concatenate([s.episode_actions for s in segments])
        if offsets[-1] > 0
        else np.zeros((0, *first.episode_actions.shape[1:]), first.episode_actions.dtype)
    )
    return {
        "segment_id": np.array([s.id for s in segments], dtype=np.int64),
        "obs": np.stack([s.obs for s in segments]),
        "actions": np.stack([s.actions for s in segments]),
        "true_rewards": np.stack([s.true_rewards for s in segments]),
        "n_valid": np.array([s.n_valid for s in segments], dtype=np.int64),
        "terminated": np.array([s.terminated for s in segments], dtype=bool),
        "episode_seed": np.array([s.episode_seed for s in segments], dtype=np.int64),
        "start_step": np.array([s.start_step for s in segments], dtype=np.int64),
        "env_step": np.array([s.env_step for s in segments], dtype=np.int64),
        "episode_actions": episode_actions,
        "episode_actions_offsets": offsets,
    }


def _counts(n_segments: int, pairs: list[dict], labels: list[dict]) -> dict[str, int]:
    retracted = sum(1 for line in labels if line["retracted_at"] is not None)
    return {
        "segments": n_segments,
        "pairs": len(pairs),
        "gold_pairs": sum(1 for line in pairs if line["gold_choice"] is not None),
        "labels": len(labels),
        "live_labels": len(labels) - retracted,
        "retracted_labels": retracted,
        "raters": len({line["rater_id"] for line in labels}),
    }


def _write_jsonl(path: Path, lines: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for line in lines:
            try:
                text = json.dumps(line, allow_nan=False, ensure_ascii=False)
            except ValueError:  # NaN or infinity: a store edited or damaged outside prefloop
                key = next(k for k, v in line.items() if isinstance(v, float) and not math.isfinite(v))
                raise DatasetError(
                    f"{path.stem} {line.get('id')} has {key} = {line[key]}, which is not a number a "
                    "dataset can hold; the store was edited or damaged outside prefloop. Set that "
                    "value in the store to a real one; nothing was exported"
                ) from None
            handle.write(text + "\n")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_or_none(text: str | None) -> Any:
    if text is None or text == "":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _prefloop_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"prefloop {version('prefloop')}"
    except PackageNotFoundError:
        return "prefloop"


# --------------------------------------------------------------------------------------------
# Load and validate
#
# A dataset may come from anyone, so loading treats every byte as hostile: files are opened
# without following links and only if they are regular files; sizes, JSON numbers, nesting and
# npy headers are bounded before anything is allocated (prefloop.untrusted); every value gets the
# checks the store would make when the data arrived through the product; and an error quotes at
# most a short excerpt of the value it is about.

DEFAULT_MAX_DATASET_BYTES = 1 << 30  # files plus uncompressed arrays; `prefloop import --max-gib`
MAX_MANIFEST_BYTES = 8 << 20
MAX_JSONL_LINE_BYTES = 64 << 10  # a label line is ~200 bytes, a segment line ~250
MAX_IMPORTED_GUIDELINE_CHARS = 20_000
MAX_SOURCE_RUN_NAME_CHARS = 200
# What one record costs once parsed (dicts, dataclasses, small arrays), so that the number of
# records is bounded by --max-gib as well as the bytes: a file of a million "{}" lines is small.
_BYTES_PER_RECORD = 1 << 10
_BYTES_PER_SEGMENT = 4 << 10
# Unix seconds a dataset may hold: from 1970 to the end of year 9999 (what datetime can show).
_TIME_RANGE = (0.0, 253_402_300_799.0)
_INT32 = (-(2**31), 2**31 - 1)  # INTEGER columns on PostgreSQL
_INT64 = (-(2**63), 2**63 - 1)  # BIGINT columns, and ids
_REEXPORT = "export it again with `prefloop export` (a dataset is only accepted as written)"


def load_dataset(
    in_dir: str | os.PathLike[str],
    *,
    verify_checksums: bool = True,
    max_bytes: int = DEFAULT_MAX_DATASET_BYTES,
) -> PreferenceDataset:
    """Read and validate a dataset folder written by :func:`export_dataset`.

    Checks the manifest's format and version, that every file is a regular file in the folder
    (symbolic links are refused, never followed), sizes and npy headers before reading, every
    file's syntax, array shapes, dtypes and finiteness, field types and ranges, choices, rater ids,
    the references between files, that no pair has more live labels than it asked for, the
    manifest's counts and (with ``verify_checksums``, required for an import) that the manifest
    holds a checksum of every file and no file changed since export.

    Args:
        max_bytes: the most the files and the uncompressed arrays may hold together.

    Raises:
        DatasetError: one line naming the file, line or array, the field, and the fix.
    """
    root = Path(in_dir)
    if root.is_file():
        if zipfile.is_zipfile(root):  # a zipped export (the dashboard's download)
            return _load_zipped(root, verify_checksums, max_bytes)
        raise DatasetError(
            f"{root} is a file but not a zip (or a truncated one); pass the folder `prefloop export "
            "--out` wrote, or the zip of it, copied again"
        )
    if not root.is_dir():
        raise DatasetError(
            f"dataset folder {root} does not exist (or is not a folder); pass the folder "
            "`prefloop export --out` wrote, or its zip"
        )
    try:
        return _load_checked(root, verify_checksums, max_bytes)
    except TooLargeError as exc:
        raise DatasetError(
            f"{exc}; nothing was read into memory beyond that. If the dataset is genuine and this "
            "machine has the memory, allow more with `prefloop import --max-gib N`"
        ) from None
    except UntrustedInputError as exc:
        raise DatasetError(f"{exc}; {_REEXPORT}") from None


def _load_zipped(path: Path, verify_checksums: bool, max_bytes: int) -> PreferenceDataset:
    """Unpack a zipped dataset into a temporary folder (checked before anything is written, see
    :func:`prefloop.untrusted.extract_zip`) and load it from there like any folder."""
    with tempfile.TemporaryDirectory(prefix="prefloop-import-") as tmp:
        try:
            with open_regular_file(path.parent, path.name, max_bytes) as handle:
                folder = extract_zip(handle, path.name, (MANIFEST, *DATA_FILES), Path(tmp), max_bytes)
        except TooLargeError as exc:
            raise DatasetError(f"{exc}; if the dataset is genuine, allow more with `prefloop import --max-gib N`") from None
        except UntrustedInputError as exc:
            raise DatasetError(f"{exc}; {_REEXPORT}") from None
        return load_dataset(folder, verify_checksums=verify_checksums, max_bytes=max_bytes)


def _load_checked(root: Path, verify_checksums: bool, max_bytes: int) -> PreferenceDataset:
    manifest = _load_manifest(root, verify_checksums)
    texts: dict[str, bytes] = {}
    for name in (SEGMENTS_JSONL, PAIRS_JSONL, LABELS_JSONL):
        texts[name] = read_regular_file(root, name, max_bytes - sum(map(len, texts.values())))
    for name, data in texts.items():
        records = data.count(b"\n") + 1
        if records * _BYTES_PER_RECORD > max_bytes:
            raise TooLargeError(
                f"{name} has {records:,} lines, which would take about {records * _BYTES_PER_RECORD:,} "
                f"bytes once read, more than the limit of {max_bytes:,}"
            )
    with open_regular_file(root, SEGMENTS_NPZ, max_bytes) as npz:
        if verify_checksums:
            checksums = manifest["checksums"]
            for name, data in texts.items():
                _verify_checksum(name, hashlib.sha256(data).hexdigest(), checksums[name])
            _verify_checksum(SEGMENTS_NPZ, _sha256_handle(npz), checksums[SEGMENTS_NPZ])
        arrays = read_npz(npz, SEGMENTS_NPZ, _NPZ_ARRAYS, max_bytes - sum(map(len, texts.values())))
    n_segments = arrays["segment_id"].shape[0] if arrays["segment_id"].ndim else 0
    if n_segments * _BYTES_PER_SEGMENT > max_bytes:
        raise TooLargeError(
            f"{SEGMENTS_NPZ} holds {n_segments:,} segments, which would take about "
            f"{n_segments * _BYTES_PER_SEGMENT:,} bytes once read, more than the limit of {max_bytes:,}"
        )
    segments = _segments_from_arrays(arrays)
    created_at = _check_segment_lines(_jsonl_objects(texts[SEGMENTS_JSONL], SEGMENTS_JSONL), segments)
    segment_ids = {int(s.id) for s in segments}  # type: ignore[arg-type]
    pairs = _pairs_from_lines(_jsonl_objects(texts[PAIRS_JSONL], PAIRS_JSONL), segment_ids)
    labels = _labels_from_lines(_jsonl_objects(texts[LABELS_JSONL], LABELS_JSONL), pairs)

    counts = manifest.get("counts")
    actual = {
        "segments": (len(segments), SEGMENTS_NPZ),
        "pairs": (len(pairs), PAIRS_JSONL),
        "labels": (len(labels), LABELS_JSONL),
    }
    if isinstance(counts, dict):
        for key, (value, file) in actual.items():
            if key in counts and counts[key] != value:
                raise DatasetError(
                    f"{file} holds {value} {key} but {MANIFEST} counts.{key} says "
                    f"{excerpt(counts[key])}; the file is incomplete or was edited -- {_REEXPORT}"
                )
    return PreferenceDataset(
        manifest=manifest, segments=segments, pairs=pairs, labels=labels, segment_created_at=created_at
    )


def _verify_checksum(name: str, actual: str, expected: str) -> None:
    if actual != expected:
        raise DatasetError(
            f"{name}: its sha256 differs from {MANIFEST} checksums.{name}: the file changed since "
            f"export (damaged in transfer, or edited); {_REEXPORT}"
        )


def _sha256_handle(handle: Any) -> str:
    digest = hashlib.sha256()
    handle.seek(0)
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    handle.seek(0)
    return digest.hexdigest()


def _storable_text(value: str) -> str | None:
    """Why ``value`` cannot be stored as text on every backend (NUL, unpaired surrogate), or None."""
    if "\x00" in value:
        return "a NUL character"
    if any("\ud800" <= ch <= "\udfff" for ch in value):
        return "an unpaired surrogate (not valid Unicode text)"
    return None


_ENV_ID = re.compile(r"[A-Za-z0-9_:./-]{1,200}")  # Gymnasium ids: [namespace/]name[-vN]


def _env_spec_problem(env_spec: dict[str, Any]) -> str | None:
    """Why a dataset's env spec cannot be used to rebuild its env here, or None. The spec is passed
    to ``gymnasium.make`` by whoever renders clips or trains on the run, so it may not name files
    on the importing machine (some envs read a model file named in their keyword arguments)."""
    env_id = env_spec.get("env_id")
    if not isinstance(env_id, str) or not _ENV_ID.fullmatch(env_id) or ".." in env_id:
        return f"must name its env in 'env_id' (a Gymnasium id such as 'CartPole-v1'), got {excerpt(env_id)}"
    kwargs = env_spec.get("env_kwargs", {})
    if not isinstance(kwargs, dict):
        return f"has 'env_kwargs' {excerpt(kwargs)}; it must be a JSON object"
    stack: list[tuple[str, Any]] = [(f"env_kwargs.{k}", v) for k, v in kwargs.items()]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{where}.{k}", v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, str) and (
            "/" in value or "\\" in value or value.startswith(("~", ".")) or _storable_text(value)
            or any(unicodedata.category(ch) == "Cc" for ch in value)
        ):
            return (
                f"has {excerpt(where, 60)} = {excerpt(value)}; a dataset may not name files or paths on "
                "the machine that imports it (nor hold control characters)"
            )
    return None


def _load_manifest(root: Path, require_checksums: bool) -> dict[str, Any]:
    try:
        data = read_regular_file(root, MANIFEST, MAX_MANIFEST_BYTES)
    except UntrustedInputError as exc:
        if not (root / MANIFEST).exists() and not (root / MANIFEST).is_symlink():
            raise DatasetError(
                f"{MANIFEST} is missing from {root}: this is not a prefloop preference dataset (or "
                "its export was interrupted); export it again with `prefloop export`"
            ) from None
        raise DatasetError(f"{exc}; {_REEXPORT}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{MANIFEST} is not UTF-8 text (byte {exc.start}); {_REEXPORT}") from None
    manifest = parse_json(text, MANIFEST)

    def bad(key: str, problem: str) -> DatasetError:
        return DatasetError(f"{MANIFEST}: field {key!r} {problem}; {_REEXPORT}")

    if not isinstance(manifest, dict):
        raise DatasetError(f"{MANIFEST} must hold a JSON object, got {type(manifest).__name__}; {_REEXPORT}")
    if manifest.get("format") != FORMAT_NAME:
        raise DatasetError(
            f"{MANIFEST}: field 'format' is {excerpt(manifest.get('format'))}, expected "
            f"{FORMAT_NAME!r}; this folder is not a prefloop preference dataset"
        )
    version = manifest.get("version")
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise DatasetError(
            f"{MANIFEST}: field 'version' is {excerpt(version)}; this prefloop reads version "
            f"{FORMAT_VERSION}. Use the prefloop version that wrote it"
        )
    for key, kind in (("env_spec", dict), ("config", dict), ("guideline", str), ("guideline_page", str), ("counts", dict)):
        value = manifest.get(key)
        if value is not None and not isinstance(value, kind):
            raise bad(key, f"must be a JSON {'object' if kind is dict else 'string'} or null, got {type(value).__name__}")
    env_spec = manifest.get("env_spec")
    if env_spec is not None:
        problem = _env_spec_problem(env_spec)
        if problem:
            raise bad("env_spec", problem)
    for key in ("guideline", "guideline_page"):
        text = manifest.get(key)
        if text is not None:
            if len(text) > MAX_IMPORTED_GUIDELINE_CHARS:
                raise bad(key, f"is {len(text):,} characters long; at most {MAX_IMPORTED_GUIDELINE_CHARS:,}")
            if _storable_text(text):
                raise bad(key, f"contains {_storable_text(text)}")
    fps = manifest.get("render_fps")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 1000):
        raise bad("render_fps", f"must be a number from 0 to 1000 (frames per second) or null, got {excerpt(fps)}")
    source = manifest.get("source")
    name = source.get("run_name") if isinstance(source, dict) else None
    if not isinstance(name, str):
        raise bad("source", "must be an object with a string 'run_name'")
    if len(name) > MAX_SOURCE_RUN_NAME_CHARS or _storable_text(name) or not name.strip():
        raise bad("source", f"has the run_name {excerpt(name)}; a run name is 1 to 200 characters of text")
    for file in DATA_FILES:
        if not os.path.lexists(root / file):
            raise DatasetError(f"{file} is missing from {root}; the dataset is incomplete -- {_REEXPORT}")
    if require_checksums:
        checksums = manifest.get("checksums")
        if not isinstance(checksums, dict):
            raise DatasetError(
                f"{MANIFEST} has no 'checksums' object, so the files cannot be verified and the "
                f"dataset is refused; {_REEXPORT} (it writes the sha256 of every file)"
            )
        for file in DATA_FILES:
            value = checksums.get(file)
            if not (isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)):
                raise DatasetError(
                    f"{MANIFEST}: checksums.{file} is {'missing' if value is None else excerpt(value)}; "
                    f"every file needs its sha256 (64 hex digits) or the dataset is refused; {_REEXPORT}"
                )
    return manifest


_NPZ_ARRAYS = (
    "segment_id", "obs", "actions", "true_rewards", "n_valid", "terminated", "episode_seed",
    "start_step", "env_step", "episode_actions", "episode_actions_offsets",
)


def _segments_from_arrays(a: dict[str, np.ndarray]) -> list[Segment]:
    def bad(name: str, problem: str) -> DatasetError:
        return DatasetError(f"{SEGMENTS_NPZ}: array {name!r} {problem}; {_REEXPORT}")

    for name, arr in a.items():
        if arr.dtype.hasobject or arr.dtype.kind not in "biuf":
            raise bad(name, f"has dtype {arr.dtype}; only numeric and bool arrays are allowed")
        if not check_finite(arr):
            raise bad(name, "holds NaN or infinite values; a recorded segment holds finite numbers only")
    ids = a["segment_id"]
    if ids.ndim != 1:
        raise bad("segment_id", f"must have shape (N,), got {ids.shape}")
    n = ids.shape[0]
    for name in (*_INT_ARRAYS, "terminated"):
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
    for name in (*_INT_ARRAYS, "episode_actions_offsets"):
        arr = a[name]
        if arr.size and (int(arr.max()) > _INT64[1] or int(arr.min()) < _INT64[0]):
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
            raise DatasetError(f"{SEGMENTS_NPZ}: {exc}; {_REEXPORT}") from None
        segments.append(segment)
    return segments


def _jsonl_objects(data: bytes, name: str) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-empty line of a JSON Lines file's bytes."""
    out = []
    for number, obj in iter_jsonl(data, name, MAX_JSONL_LINE_BYTES):
        if not isinstance(obj, dict):
            raise DatasetError(f"{name} line {number} must be a JSON object, got {type(obj).__name__}; {_REEXPORT}")
        out.append((number, obj))
    return out


class _Fields:
    """Typed field access on one JSON Lines object, with errors naming file, line and field and
    quoting at most a short excerpt of the value."""

    def __init__(self, file: str, number: int, obj: dict[str, Any]):
        self.file, self.number, self.obj = file, number, obj

    def error(self, name: str, problem: str) -> DatasetError:
        return DatasetError(f"{self.file} line {self.number}: field {name!r} {problem}; {_REEXPORT}")

    def _get(self, name: str) -> Any:
        if name not in self.obj:
            raise self.error(name, "is missing")
        return self.obj[name]

    def int(self, name: str, low: int = _INT64[0], high: int = _INT64[1]) -> int:
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
        if value is not None and not _TIME_RANGE[0] <= value <= _TIME_RANGE[1]:
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
            allowed = _CHOICES + (["null"] if optional else [])
            raise self.error(name, f"is {excerpt(value)}; it must be one of {allowed}") from None

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


def _check_segment_lines(
    lines: list[tuple[int, dict[str, Any]]], segments: list[Segment]
) -> dict[int, float]:
    """Check segments.jsonl against the npz; returns each segment's ``created_at`` (if given)."""
    if len(lines) != len(segments):
        raise DatasetError(
            f"{SEGMENTS_JSONL} has {len(lines)} lines but {SEGMENTS_NPZ} holds {len(segments)} "
            f"segments; one of them is incomplete -- {_REEXPORT}"
        )
    created_at: dict[int, float] = {}
    for (number, obj), seg in zip(lines, segments):
        f = _Fields(SEGMENTS_JSONL, number, obj)
        if f.int("id") != seg.id:
            raise f.error("id", f"is {obj['id']} but row {number - 1} of {SEGMENTS_NPZ} is segment {seg.id}; keep both files in the same order")
        for name in ("episode_seed", "start_step", "n_valid", "env_step"):
            if f.int(name) != getattr(seg, name):
                raise f.error(name, f"is {obj[name]} but {SEGMENTS_NPZ} says {getattr(seg, name)}")
        if f.bool("terminated") != seg.terminated:
            raise f.error("terminated", f"is {obj['terminated']} but {SEGMENTS_NPZ} says {seg.terminated}")
        if obj.get("created_at") is not None:
            created_at[int(seg.id)] = f.time("created_at")  # type: ignore[arg-type, assignment]
    return created_at


def _pairs_from_lines(lines: list[tuple[int, dict[str, Any]]], segment_ids: set[int]) -> list[DatasetPair]:
    pairs: list[DatasetPair] = []
    seen: set[int] = set()
    for number, obj in lines:
        f = _Fields(PAIRS_JSONL, number, obj)
        pair_id = f.int("id")
        if pair_id in seen:
            raise f.error("id", f"{pair_id} appears twice; pair ids must be unique")
        seen.add(pair_id)
        sides = {}
        for side in ("left_segment_id", "right_segment_id"):
            sides[side] = f.int(side)
            if sides[side] not in segment_ids:
                raise f.error(side, f"is {sides[side]}, which is not a segment of {SEGMENTS_JSONL}")
        labels_per_pair = f.int("labels_per_pair", 1, _INT32[1])
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


def _labels_from_lines(lines: list[tuple[int, dict[str, Any]]], pairs: list[DatasetPair]) -> list[Label]:
    asked = {p.id: p.labels_per_pair for p in pairs}
    labels: list[Label] = []
    seen: set[int] = set()
    live: set[tuple[int, str]] = set()
    live_per_pair: Counter[int] = Counter()
    for number, obj in lines:
        f = _Fields(LABELS_JSONL, number, obj)
        label_id = f.int("id")
        if label_id in seen:
            raise f.error("id", f"{label_id} appears twice; label ids must be unique")
        seen.add(label_id)
        pair_id = f.int("pair_id")
        if pair_id not in asked:
            raise f.error("pair_id", f"is {pair_id}, which is not a pair of {PAIRS_JSONL}")
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


# --------------------------------------------------------------------------------------------
# Import


def import_dataset(in_dir: str | os.PathLike[str], store_url: str, run_name: str) -> DatasetSummary:
    """Write a dataset folder into run ``run_name`` of the store at ``store_url``, in one transaction.

    Segments, pairs and labels get new ids; every label keeps its rater id, choice, response time,
    timestamps and retracted state. Pair statuses are recomputed from the live labels (``answered``
    once a pair has ``labels_per_pair`` of them, else ``withdrawn`` if it was, else ``pending``); leases are not carried. The
    run's meta gets the dataset's env_spec, render_fps, guideline and config, and ``import_source``.

    The dataset is fully validated before the store is opened, so a bad dataset leaves it
    unchanged; a failure during the write rolls everything back.

    Raises:
        DatasetError: the dataset is malformed, or the run already has pairs (labels are never
            mixed or overwritten) or meta from another env.
        prefloop.store.StoreError: the store cannot be opened.
    """
    return import_loaded_dataset(load_dataset(in_dir), Path(in_dir), store_url, run_name)


def import_loaded_dataset(dataset: PreferenceDataset, in_dir: Path, store_url: str, run_name: str) -> DatasetSummary:
    new_run = not _run_exists(store_url, run_name)
    with PreferenceStore(store_url, run_name=run_name) as store:
        try:
            with _transaction(store, write=True) as conn:
                ids = _write_dataset(conn, store.run_id, run_name, dataset)
        except BaseException as exc:
            # The write rolled back; a run this import created is removed again (all or nothing).
            if new_run:
                _drop_empty_run(store)
            if isinstance(exc, DBAPIError):
                reason = (str(exc.orig).strip().splitlines() or ["unknown error"])[0]
                raise DatasetError(
                    f"the store refused the dataset ({excerpt(reason, 200)}); nothing was imported. "
                    "Check the store with `prefloop doctor`"
                ) from None
            raise
    return DatasetSummary(
        path=in_dir,
        run_name=run_name,
        segments=len(dataset.segments),
        pairs=len(dataset.pairs),
        labels=len(dataset.labels),
        retracted_labels=sum(1 for lab in dataset.labels if lab.retracted_at is not None),
        raters=sorted({lab.rater_id for lab in dataset.labels}),
        segment_ids=ids[0],
        pair_ids=ids[1],
        label_ids=ids[2],
    )


def _run_exists(store_url: str, run_name: str) -> bool:
    """Whether the store already has a run of that name (True when that cannot be told, so a
    failed import never removes a run it did not create)."""
    try:
        url = make_url(store_url)
        if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
            return False
        engine = create_engine(url)
    except (ArgumentError, ValueError, TypeError, ImportError):
        return True
    try:
        with engine.connect() as conn:
            if runs_table.name not in inspect(conn).get_table_names():
                return False
            return conn.scalar(select(runs_table.c.id).where(runs_table.c.name == run_name)) is not None
    except DBAPIError:
        return True
    finally:
        engine.dispose()


def _drop_empty_run(store: PreferenceStore) -> None:
    """Remove the store's run if nothing refers to it (what a failed import into a new run leaves)."""
    r = runs_table
    used = [
        exists().where(table.c.run_id == r.c.id)
        for table in (segments_table, pairs_table, run_meta_table)
    ]
    try:
        with _transaction(store, write=True) as conn:
            conn.execute(delete(r).where(r.c.id == store.run_id, *[~u for u in used]))
    except DBAPIError:
        pass  # an empty run row is harmless; the import error is what the user must see


def _write_dataset(
    conn: Connection, run_id: int, run_name: str, dataset: PreferenceDataset
) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
    s, p, lab, m = segments_table, pairs_table, labels_table, run_meta_table
    # Lock the run row (PostgreSQL) so two imports into one run cannot both pass the check below;
    # on SQLite the write transaction (BEGIN IMMEDIATE) already excludes every other writer.
    conn.execute(select(runs_table.c.id).where(runs_table.c.id == run_id).with_for_update())
    n_pairs = conn.scalar(select(func.count()).select_from(p).where(p.c.run_id == run_id))
    if n_pairs:
        raise DatasetError(
            f"run {run_name!r} already has {n_pairs} pairs; an import never mixes or overwrites "
            "labels. Import into a new run (another --run-name or --run-dir)"
        )
    meta_values = _meta_values(dataset)
    existing = dict(conn.execute(select(m.c.key, m.c.value).where(m.c.run_id == run_id)).all())
    if "env_spec" in existing and "env_spec" in meta_values:
        if _json_or_none(existing["env_spec"]) != dataset.env_spec:
            raise DatasetError(
                f"run {run_name!r} is set up for env {existing['env_spec']} but the dataset was "
                f"recorded in {json.dumps(dataset.env_spec)}; import into a new run"
            )

    now = time.time()
    segment_ids: dict[int, int] = {}
    for seg in dataset.segments:
        row = {
            "run_id": run_id,
            "obs": array_to_bytes(seg.obs),
            "actions": array_to_bytes(seg.actions),
            "true_rewards": array_to_bytes(seg.true_rewards),
            "episode_actions": array_to_bytes(seg.episode_actions),
            "n_valid": seg.n_valid,
            "terminated": seg.terminated,
            "episode_seed": seg.episode_seed,
            "start_step": seg.start_step,
            "env_step": seg.env_step,
            "length": seg.length,
            "created_at": dataset.segment_created_at.get(int(seg.id), now),  # type: ignore[arg-type]
        }
        segment_ids[int(seg.id)] = int(conn.execute(insert(s).values(**row)).inserted_primary_key[0])  # type: ignore[arg-type]

    live = Counter(lab.pair_id for lab in dataset.labels if lab.retracted_at is None)
    pair_ids: dict[int, int] = {}
    for pair in dataset.pairs:
        result = conn.execute(
            insert(p).values(
                run_id=run_id,
                left_segment_id=segment_ids[pair.left_segment_id],
                right_segment_id=segment_ids[pair.right_segment_id],
                status=ANSWERED if live[pair.id] >= pair.labels_per_pair else WITHDRAWN if pair.status == WITHDRAWN else PENDING,
                claimed_by=None,
                lease_expires_at=None,
                labels_per_pair=pair.labels_per_pair,
                gold_choice=None if pair.gold_choice is None else pair.gold_choice.value,
                score=pair.score,
                created_at=pair.created_at,
            )
        )
        pair_ids[pair.id] = int(result.inserted_primary_key[0])

    label_ids: dict[int, int] = {}
    for label in dataset.labels:
        result = conn.execute(
            insert(lab).values(
                pair_id=pair_ids[label.pair_id],
                rater_id=label.rater_id,
                choice=label.choice.value,
                response_time_s=label.response_time_s,
                created_at=label.created_at,
                retracted_at=label.retracted_at,
            )
        )
        label_ids[int(label.id)] = int(result.inserted_primary_key[0])  # type: ignore[arg-type]

    meta_values[_IMPORT_META_KEY] = json.dumps({
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "source_run_name": dataset.run_name,
        "dataset_created_at": dataset.manifest.get("created_at"),
        "imported_at": now,
    })
    for key, value in meta_values.items():
        if key in existing:
            conn.execute(update(m).where(m.c.run_id == run_id, m.c.key == key).values(value=value))
        else:
            conn.execute(insert(m).values(run_id=run_id, key=key, value=value))
    return segment_ids, pair_ids, label_ids


def _meta_values(dataset: PreferenceDataset) -> dict[str, str]:
    manifest = dataset.manifest
    values: dict[str, str] = {}
    if manifest.get("env_spec") is not None:
        values["env_spec"] = json.dumps(manifest["env_spec"])
    if manifest.get("render_fps") is not None:
        values["render_fps"] = str(float(manifest["render_fps"]))
    if manifest.get("guideline") is not None:
        values["guideline"] = manifest["guideline"]
    if manifest.get("guideline_page") is not None:
        values["guideline_page"] = manifest["guideline_page"]
    if manifest.get("config") is not None:
        values["config"] = json.dumps(manifest["config"])
    return values


def store_of_run_dir(run_dir: Path, db_url: str | None, run_name: str | None) -> tuple[str, str]:
    """(store URL, run name) of a run folder (see :func:`prefloop.store.run_folder.store_of_run_folder`)."""
    try:
        return store_of_run_folder(run_dir, db_url, run_name)
    except ConfigError as exc:
        raise DatasetError(str(exc)) from None
