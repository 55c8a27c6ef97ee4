"""Import: a loaded, checked dataset written into a run of a store, in one transaction.

Segments, pairs, labels and rater checks get new ids in the target store; everything else is
kept as it was.
A failure rolls everything back, and a run the import created is removed again.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

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
from prefloop.datasets.export import store_transaction
from prefloop.datasets.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    IMPORT_META_KEY,
    DatasetError,
    DatasetSummary,
    PreferenceDataset,
    json_or_none,
)
from prefloop.datasets.load import load_dataset
from prefloop.datasets.rater_checks import write_checks
from prefloop.serialization import array_to_bytes
from prefloop.stacked_frames import obs_to_bytes
from prefloop.store import (
    ANSWERED,
    PENDING,
    WITHDRAWN,
    PreferenceStore,
    labels_table,
    pairs_table,
    rater_checks_table,
    run_meta_table,
    runs_table,
    segments_table,
)
from prefloop.store.run_folder import store_of_run_folder
from prefloop.untrusted import excerpt


def import_dataset(in_dir: str | os.PathLike[str], store_url: str, run_name: str) -> DatasetSummary:
    """Write a dataset folder into run ``run_name`` of the store at ``store_url``, in one transaction.

    Segments, pairs, labels and rater checks get new ids; every label keeps its rater id, choice,
    response time, timestamps and retracted state; every check (into this run only) its rater,
    kind, expected answer, answer (or none: still open), response time and timestamps. Pair statuses are recomputed from the live labels (``answered``
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
            with store_transaction(store, write=True) as conn:
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
        checks=len(dataset.checks),
        check_ids=ids[3],
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
        for table in (segments_table, pairs_table, run_meta_table, rater_checks_table)
    ]
    try:
        with store_transaction(store, write=True) as conn:
            conn.execute(delete(r).where(r.c.id == store.run_id, *[~u for u in used]))
    except DBAPIError:
        pass  # an empty run row is harmless; the import error is what the user must see


def _write_dataset(
    conn: Connection, run_id: int, run_name: str, dataset: PreferenceDataset
) -> tuple[dict[int, int], dict[int, int], dict[int, int], dict[int, int]]:
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
        if json_or_none(existing["env_spec"]) != dataset.env_spec:
            raise DatasetError(
                f"run {run_name!r} is set up for env {existing['env_spec']} but the dataset was "
                f"recorded in {json.dumps(dataset.env_spec)}; import into a new run"
            )

    now = time.time()
    segment_ids: dict[int, int] = {}
    for seg in dataset.segments:
        row = {
            "run_id": run_id,
            "obs": obs_to_bytes(seg.obs),
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
    check_ids = write_checks(conn, run_id, dataset.checks, pair_ids)

    meta_values[IMPORT_META_KEY] = json.dumps({
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
    return segment_ids, pair_ids, label_ids, check_ids


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
