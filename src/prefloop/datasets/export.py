"""Export: one run of a store, read in one snapshot, written as a dataset folder (JSONL + npz).

Nothing in the store is changed; the folder is written under a temporary name and renamed when
complete, so a reader never sees half an export.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Connection, make_url

from prefloop.credentials import scrub_config
from prefloop.datasets.format import (
    CHECKS_JSONL,
    CHECKS_PARQUET,
    DATA_FILES,
    FILE_DESCRIPTIONS,
    FORMAT_NAME,
    FORMAT_VERSION,
    LABELS_JSONL,
    LAYOUT_PARQUET,
    MANIFEST,
    META_KEYS,
    PAIRS_JSONL,
    PARQUET_FILE_DESCRIPTIONS,
    PARQUET_FILES,
    SEGMENTS_JSONL,
    SEGMENTS_NPZ,
    DatasetError,
    DatasetSummary,
    json_or_none,
    sha256_file,
)
from prefloop.datasets.rater_checks import check_lines, read_check_rows
from prefloop.store import (
    NoSuchRunError,
    NoSuchStoreError,
    PreferenceStore,
    _segment_from_row,
    labels_table,
    pairs_table,
    run_meta_table,
    segments_table,
)
from prefloop.types import Segment


@dataclass
class RunSnapshot:
    """One run of a store as an export writes it, read in one transaction.

    ``segment_lines``, ``pair_lines``, ``label_lines`` and ``check_lines`` are the records of
    segments.jsonl, pairs.jsonl, labels.jsonl and checks.jsonl (plain JSON values, by id);
    ``arrays`` the arrays of segments.npz (see :data:`prefloop.datasets.format.FILE_DESCRIPTIONS`).
    """

    run_name: str
    backend: str
    include_retracted: bool
    meta: dict[str, str]
    segments: list[Segment]
    arrays: dict[str, np.ndarray]
    segment_lines: list[dict[str, Any]]
    pair_lines: list[dict[str, Any]]
    label_lines: list[dict[str, Any]]
    check_lines: list[dict[str, Any]] = field(default_factory=list)

    @property
    def env_spec(self) -> Any:
        return json_or_none(self.meta.get("env_spec"))

    @property
    def config(self) -> Any:
        """The run's config without the store's address: a dataset leaves the database it came
        from (its host, user and database name say nothing about the labels; stores of older
        versions even kept a password in it)."""
        config = scrub_config(json_or_none(self.meta.get("config")))
        return {**config, "db_url": None} if isinstance(config, dict) and config.get("db_url") else config

    def counts(self) -> dict[str, int]:
        return _counts(len(self.segment_lines), self.pair_lines, self.label_lines, self.check_lines)

    def manifest(self, checksums: dict[str, str], files: dict[str, Any], layout: str | None = None) -> dict[str, Any]:
        """The manifest of an export of this snapshot whose data files have ``checksums``."""
        try:
            render_fps: float | None = float(self.meta["render_fps"])
        except (KeyError, ValueError):
            render_fps = None
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            **({"layout": layout} if layout is not None else {}),
            "created_at": time.time(),
            "created_by": _prefloop_version(),
            "source": {"run_name": self.run_name, "backend": self.backend},
            "include_retracted": bool(self.include_retracted),
            "env_spec": self.env_spec,
            "render_fps": render_fps,
            "guideline": self.meta.get("guideline"),
            "guideline_page": self.meta.get("guideline_page"),
            "config": self.config,
            "segment_length": int(self.arrays["true_rewards"].shape[1]) if self.segments else None,
            "counts": self.counts(),
            "checksums": checksums,
            "files": files,
        }

    def summary(self, path: Path) -> DatasetSummary:
        counts = self.counts()
        return DatasetSummary(
            path=path,
            run_name=self.run_name,
            segments=counts["segments"],
            pairs=counts["pairs"],
            labels=counts["labels"],
            retracted_labels=counts["retracted_labels"],
            raters=sorted({line["rater_id"] for line in self.label_lines}),
            checks=counts["checks"],
        )


def export_dataset(
    store_url: str,
    run_name: str,
    out_dir: str | os.PathLike[str],
    *,
    include_retracted: bool = True,
    layout: str = "jsonl",
) -> DatasetSummary:
    """Write run ``run_name`` of the store at ``store_url`` as a dataset folder ``out_dir``.

    Reads one consistent snapshot (a single read transaction), so a run still in progress exports
    cleanly. The folder is written under a temporary name and renamed when complete. Nothing in the
    store is changed.

    Args:
        layout: ``"jsonl"`` (JSON Lines + npz, the default) or ``"parquet"`` (three Parquet tables,
            see :mod:`prefloop.datasets.parquet`; needs ``pip install 'prefloop[data]'``).

    Raises:
        DatasetError: ``out_dir`` is not empty, the store or run does not exist, the run's
            segments do not share one shape, or the layout's library is not installed.
        prefloop.store.StoreError: the store cannot be opened.
    """
    if layout not in ("jsonl", LAYOUT_PARQUET):
        raise DatasetError(f"unknown dataset layout {layout!r}; use 'jsonl' or 'parquet'")
    out = Path(out_dir)
    _check_out_dir(out)
    if layout == LAYOUT_PARQUET:
        from prefloop.datasets.parquet import (
            write_parquet_files,  # needs pyarrow: checked first
        )
    snapshot = read_run(store_url, run_name, include_retracted)
    for kind, lines in (("segments", snapshot.segment_lines), ("pairs", snapshot.pair_lines),
                        ("labels", snapshot.label_lines), ("checks", snapshot.check_lines)):
        check_finite_fields(kind, lines)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        if layout == LAYOUT_PARQUET:
            write_parquet_files(tmp, snapshot)
            manifest = snapshot.manifest(
                {name: sha256_file(tmp / name) for name in (*PARQUET_FILES, CHECKS_PARQUET)}, PARQUET_FILE_DESCRIPTIONS, layout
            )
        else:
            np.savez_compressed(tmp / SEGMENTS_NPZ, allow_pickle=False, **snapshot.arrays)
            _write_jsonl(tmp / SEGMENTS_JSONL, snapshot.segment_lines)
            _write_jsonl(tmp / PAIRS_JSONL, snapshot.pair_lines)
            _write_jsonl(tmp / LABELS_JSONL, snapshot.label_lines)
            _write_jsonl(tmp / CHECKS_JSONL, snapshot.check_lines)
            manifest = snapshot.manifest(
                {name: sha256_file(tmp / name) for name in (*DATA_FILES, CHECKS_JSONL)}, FILE_DESCRIPTIONS
            )
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return snapshot.summary(out)


def read_run(store_url: str, run_name: str, include_retracted: bool = True) -> RunSnapshot:
    """Run ``run_name`` of the store at ``store_url``, read in one transaction (store unchanged).

    Raises:
        DatasetError: the store or run does not exist, or the run's segments do not share one shape.
    """
    with _open_for_export(store_url, run_name) as store:
        with store_transaction(store, write=False) as conn:
            segment_rows, pair_rows, label_rows, meta = _read_snapshot(conn, store.run_id, include_retracted)
            check_rows = read_check_rows(conn, store.run_id)

    env_spec = json_or_none(meta.get("env_spec"))
    segments = [_segment_from_row(row) for row in segment_rows]
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
    return RunSnapshot(
        run_name=run_name,
        backend=make_url(store_url).get_backend_name(),
        include_retracted=include_retracted,
        meta=meta,
        segments=segments,
        arrays=_segment_arrays(segments, run_name),
        segment_lines=segment_lines,
        pair_lines=pair_lines,
        label_lines=label_lines,
        check_lines=check_lines(check_rows),
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
    except NoSuchStoreError as exc:
        raise DatasetError(f"{exc}; pass the run folder (--run-dir) or the URL of the store that holds the run") from None
    except NoSuchRunError as exc:  # its message lists the runs the store holds and says the fix
        raise DatasetError(str(exc)) from None


@contextmanager
def store_transaction(store: PreferenceStore, *, write: bool) -> Iterator[Connection]:
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
        conn.execute(select(m.c.key, m.c.value).where(m.c.run_id == run_id, m.c.key.in_(META_KEYS))).all()
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


def _counts(n_segments: int, pairs: list[dict], labels: list[dict], checks: list[dict]) -> dict[str, int]:
    retracted = sum(1 for line in labels if line["retracted_at"] is not None)
    return {
        "segments": n_segments,
        "pairs": len(pairs),
        "gold_pairs": sum(1 for line in pairs if line["gold_choice"] is not None),
        "labels": len(labels),
        "live_labels": len(labels) - retracted,
        "retracted_labels": retracted,
        "raters": len({line["rater_id"] for line in labels}),
        "checks": len(checks),
    }


def check_finite_fields(kind: str, lines: list[dict[str, Any]]) -> None:
    """Refuse to export a NaN or infinite number (JSON has none; a dataset holds real numbers)."""
    for line in lines:
        key = next((k for k, v in line.items() if isinstance(v, float) and not math.isfinite(v)), None)
        if key is not None:  # a store edited or damaged outside prefloop
            raise DatasetError(
                f"{kind} {line.get('id')} has {key} = {line[key]}, which is not a number a "
                "dataset can hold; the store was edited or damaged outside prefloop. Set that "
                "value in the store to a real one; nothing was exported"
            )


def _write_jsonl(path: Path, lines: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(line, allow_nan=False, ensure_ascii=False) + "\n" for line in lines)


def _prefloop_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"prefloop {version('prefloop')}"
    except PackageNotFoundError:
        return "prefloop"

