"""``prefloop doctor``'s checks of a preference store's database: that it can be reached and read,
is intact (SQLite ``integrity_check``), is a prefloop store of this schema version, holds the run
asked for with the config the run folder has; then the checks of each run's rows
(:mod:`prefloop.ops.doctor.rows`). A store that is locked or read-only is reported as such, not
as damage.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, inspect, select
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from prefloop.credentials import PASSWORD_SOURCES, CredentialsError, connect_url
from prefloop.ops.doctor.report import ERROR, MAX_LISTED, WARNING, DoctorReport
from prefloop.ops.doctor.rows import (
    broken_segments,
    expired_leases,
    labels_on_unknown_pairs,
    pair_status,
    pairs_missing_segments,
    usable_labels,
)
from prefloop.store import (
    APP_MARKER,
    META_TABLE,
    SCHEMA_VERSION,
    StoreError,
    StoreReadOnlyError,
    labels_table,
    meta_table,
    open_sqlite_read_only,
    pairs_table,
    run_meta_table,
    runs_table,
    segments_table,
    store_problem_kind,
)
from prefloop.store import engine as store_engine  # read at call time: tests shorten the busy timeout
from prefloop.training.config import config_differences

# The tables every version-1 store has; later additions (clips) are created when a store opens.
_CORE_TABLES = (runs_table, run_meta_table, segments_table, pairs_table, labels_table)


def check_store(
    url: str, run_name: str | None, repair: bool, now: float, report: DoctorReport, *, missing_ok: bool,
    config: dict[str, Any] | None = None, name_given: bool = False,
) -> dict[str, int] | None:
    """Run the store checks; returns live usable labels per run name, or None if unreadable.
    ``name_given``: ``run_name`` is the user's --run-name (a store without it is their typo)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        report.add(ERROR, "store", f"cannot parse the database URL ({exc})", "pass a valid SQLAlchemy URL")
        return None
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        if not path.is_file():
            if missing_ok:
                report.add(WARNING, "store", f"no preference store at {path}",
                           "nothing to check; a run killed before its first pairs has none yet")
            else:
                report.add(ERROR, "store", f"no SQLite file at {path}", "check the path")
            return None
        if not _sqlite_integrity(path, report):
            return None
    try:
        engine = _engine(url, parsed.get_backend_name() == "sqlite", repair)
    except CredentialsError as exc:
        report.add(ERROR, "store", str(exc), "pass a readable --db-password-file")
        return None
    try:
        with engine.connect() as conn:
            if not _check_schema(conn, report):
                return None
            runs = _runs(conn, run_name, report, from_config=config is not None, name_given=name_given)
            if config is not None and runs:
                _config_matches_store(conn, runs[0][0], config, report)
        live: dict[str, int] = {}
        labels_on_unknown_pairs(engine, report)
        for run_id, name in runs:
            pairs_missing_segments(engine, run_id, name, report)
            broken_segments(engine, run_id, name, report)
            pair_status(engine, run_id, name, repair, report)
            expired_leases(engine, run_id, name, repair, now, report)
            live[name] = usable_labels(engine, run_id)
        return live
    except (SQLAlchemyError, StoreError) as exc:
        _store_failure(exc, report)
        return None
    finally:
        engine.dispose()


def _store_failure(exc: BaseException, report: DoctorReport) -> None:
    """A store that could not be read (or repaired): locked and read-only are not damage."""
    kind = "read_only" if isinstance(exc, StoreReadOnlyError) else store_problem_kind(getattr(exc, "orig", exc))
    reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if kind == "busy":
        report.add(ERROR, "store_locked", f"the store is locked by another process ({reason}); it was not checked, "
                   "and nothing suggests damage", "wait until that process is done (or stop it), then run doctor again")
    elif _is_connection_failure(exc):
        report.add(ERROR, "store_unreachable", f"cannot connect to the store ({reason}); it was not checked",
                   f"check that the server runs and the URL (host, port, user, database); the password comes from "
                   f"{PASSWORD_SOURCES}")
    elif kind == "read_only":
        report.add(ERROR, "store_read_only", f"the store cannot be written ({reason}), so --repair cannot fix it here; "
                   "it is not damaged", "run `prefloop doctor --repair` on a writable copy of the run folder")
    else:
        report.add(ERROR, "store", f"reading the store failed: {type(exc).__name__}: {reason}",
                   "restore the database from a backup; for SQLite, `sqlite3 prefs.sqlite .recover` salvages rows")


def _is_connection_failure(exc: BaseException) -> bool:
    """A server that refused or could not be reached (PostgreSQL): not a damaged store."""
    orig = getattr(exc, "orig", None)
    return orig is not None and not hasattr(orig, "sqlite_errorcode") and type(orig).__name__ == "OperationalError" and (
        "connection" in str(orig).lower())


def _engine(url: str, is_sqlite: bool, repair: bool) -> Engine:
    """Read-only unless repairing (a SQLite file then opens on a read-only mount, too). Each
    repair is one UPDATE, atomic on its own; SQLite waits for a busy writer instead of failing."""
    parsed = make_url(connect_url(url))
    if is_sqlite and not repair:
        path = Path(parsed.database or "")
        return create_engine("sqlite://", creator=lambda: open_sqlite_read_only(path), poolclass=NullPool)
    try:
        return create_engine(parsed, connect_args={"timeout": store_engine.SQLITE_BUSY_TIMEOUT_S} if is_sqlite
                             else store_engine.wait_limit_args(parsed))
    except (ArgumentError, ImportError) as exc:
        raise store_engine.unusable_url_error(parsed, exc) from None


def _sqlite_integrity(path: Path, report: DoctorReport) -> bool:
    report.checks.append("sqlite_integrity")
    salvage = (f"stop everything using it, keep a copy, then salvage the rows with "
               f"`sqlite3 {path} .recover > salvage.sql` or restore it from a backup")
    with open(path, "rb") as handle:
        header = handle.read(16)
    if header != b"SQLite format 3\x00":
        report.add(ERROR, "sqlite_integrity", f"{path} is not a SQLite database (wrong header)", salvage)
        return False
    try:
        with closing(open_sqlite_read_only(path)) as raw:
            rows = [r[0] for r in raw.execute("PRAGMA integrity_check(20)").fetchall()]
    except (sqlite3.DatabaseError, StoreError) as exc:
        if isinstance(exc, StoreError) or store_problem_kind(exc, str(path)) != "other":
            _store_failure(exc, report)
        else:
            report.add(ERROR, "sqlite_integrity", f"{path} is corrupt: {exc}", salvage)
        return False
    if rows != ["ok"]:
        report.add(ERROR, "sqlite_integrity", f"{path} fails integrity_check: {'; '.join(rows[:5])}", salvage)
        return False
    return True


def _check_schema(conn: Connection, report: DoctorReport) -> bool:
    report.checks.append("schema")
    tables = set(inspect(conn).get_table_names())
    if META_TABLE not in tables:
        report.add(ERROR, "schema", f"no '{META_TABLE}' table: not a prefloop store (tables: {sorted(tables)[:5]})",
                   "point --db-url at the run's store")
        return False
    meta = dict(conn.execute(select(meta_table.c.key, meta_table.c.value)).all())
    if meta.get("app") != APP_MARKER:
        report.add(ERROR, "schema", f"'{META_TABLE}' lacks app={APP_MARKER!r}: not a prefloop store",
                   "point --db-url at the run's store")
        return False
    if meta.get("schema_version") != str(SCHEMA_VERSION):
        report.add(ERROR, "schema", f"schema version {meta.get('schema_version')!r}, this prefloop reads {SCHEMA_VERSION}",
                   "use the prefloop version that wrote the store")
        return False
    missing = sorted(t.name for t in _CORE_TABLES if t.name not in tables)
    if missing:
        report.add(ERROR, "schema", f"tables {missing} are missing", "restore the database from a backup")
        return False
    return True


def _runs(
    conn: Connection, run_name: str | None, report: DoctorReport, from_config: bool = False, name_given: bool = False,
) -> list[tuple[int, str]]:
    query = select(runs_table.c.id, runs_table.c.name).order_by(runs_table.c.id)
    if run_name is not None:
        query = query.where(runs_table.c.name == run_name)
    runs = [(int(i), str(n)) for i, n in conn.execute(query).all()]
    if run_name is not None and not runs:
        names = list(conn.scalars(select(runs_table.c.name).limit(MAX_LISTED)))
        if name_given:  # the user's --run-name: a typo, not a damaged folder
            report.add(ERROR, "run_name", f"no run {run_name!r} in the store; it holds: {names or 'no runs'}",
                       "check --run-name (nothing was created)")
        elif from_config and names:  # a trainer creates its run as it creates the store: the name changed
            report.add(ERROR, "config_matches_run",
                       f"config.json names run {run_name!r}, but the store holds only runs {names}: config.json was "
                       "edited, or the store belongs to another run",
                       "put the run's name back into config.json (--resume refuses it as it is); no label is lost")
        else:
            report.add(WARNING, "store", f"the store has no run named {run_name!r} (runs: {names})",
                       "pass --run-name, or the run has not stored anything yet")
    return runs


def _config_matches_store(conn: Connection, run_id: int, config: dict[str, Any], report: DoctorReport) -> None:
    """config.json against the copy of the config the trainer kept in the store (run meta)."""
    report.checks.append("config_matches_run")
    m = run_meta_table
    recorded = conn.scalar(select(m.c.value).where(m.c.run_id == run_id, m.c.key == "config"))
    try:
        recorded_config = json.loads(recorded) if recorded else None
    except ValueError:
        recorded_config = None
    for difference in config_differences(recorded_config, config):
        report.add(ERROR, "config_matches_run", f"config.json differs from the run's record in the store: {difference}",
                   "put the run's value back into config.json (--resume refuses it as it is)")

