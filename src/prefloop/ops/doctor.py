"""``prefloop doctor``: check a run's preference store and checkpoints, and repair what is safe.

:func:`check_run` looks at

- the database file itself (SQLite ``PRAGMA integrity_check``), and that it is a prefloop store of
  the schema version this prefloop reads;
- every run in it (or the one named): pairs whose segments are missing, segments whose arrays do
  not load, pairs whose status disagrees with their live labels, leases that expired but are
  still held, labels on pairs that do not exist, more live labels than a pair asked for;
- the run folder: ``config.json``, leftover ``step-*.tmp`` checkpoint folders, and whether the
  newest checkpoint loads (``state.json``, ``policy.zip``, the reward model) and was trained on no
  more labels than the store still has.

With ``repair=True`` it fixes only what can be fixed without losing anything: a pair's status is
recomputed from its labels, an expired lease is released, a leftover ``.tmp`` checkpoint folder
(never a complete checkpoint) is removed. **It never deletes or changes a label or a segment.**
Repairs are compare-and-set updates, so they are safe next to a live rater app, but stop
``prefloop train`` first: a ``.tmp`` folder younger than two minutes is left alone in case a
running trainer is writing it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import and_, create_engine, func, inspect, select, update
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from prefloop.credentials import ENV_DB_PASSWORD, CredentialsError, connect_url
from prefloop.serialization import array_from_bytes, strict_json
from prefloop.store import engine as store_engine  # read at call time: tests shorten the busy timeout
from prefloop.store import (
    ANSWERED,
    APP_MARKER,
    CLAIMED,
    META_TABLE,
    PENDING,
    SCHEMA_VERSION,
    WITHDRAWN,
    StoreError,
    StoreReadOnlyError,
    labels_table,
    meta_table,
    open_sqlite_read_only,
    pairs_table,
    run_meta_table,
    runs_table,
    segments_table,
    sqlite_url,
    store_problem_kind,
)
from prefloop.training.checkpoints import checkpoint_problems
from prefloop.training.config import config_differences
from prefloop.training.rundir import lock_holder
from prefloop.untrusted import excerpt

ERROR = "error"  # data is damaged or unusable
WARNING = "warning"  # the run works, but something needs attention (or a repair)
INFO = "info"  # routine, not a problem (e.g. leases left by a stopped app: the next claim takes them over)
SEVERITIES = (ERROR, WARNING, INFO)
TMP_GRACE_S = 120.0  # a younger .tmp checkpoint folder may still be written by a running trainer
_SEGMENT_CHUNK = 200
_MAX_LISTED = 10
_CHECKPOINT_NAME = re.compile(r"step-\d+")  # what RunDir takes for a complete checkpoint
# The tables every version-1 store has; later additions (clips) are created when a store opens.
_CORE_TABLES = (runs_table, run_meta_table, segments_table, pairs_table, labels_table)


@dataclass
class Finding:
    """One problem.

    Attributes:
        severity: ``"error"`` (damaged or unusable data) or ``"warning"`` (needs attention).
        check: which check found it, e.g. ``"pair_status"``.
        what: what is wrong, naming the rows or files.
        repaired: ``--repair`` fixed it.
        fix: how to fix it otherwise (empty when repaired).
    """

    severity: str
    check: str
    what: str
    repaired: bool = False
    fix: str = ""


@dataclass
class DoctorReport:
    """What :func:`check_run` found. ``healthy`` when no finding is left unrepaired."""

    target: str
    checks: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the run is, when that is not obvious
    repair_command: str = "prefloop doctor --repair"  # with the --run-dir / --db-url it was given

    @property
    def remaining(self) -> list[Finding]:
        """The problems left: neither repaired nor merely informational."""
        return [f for f in self.findings if not f.repaired and f.severity != INFO]

    @property
    def healthy(self) -> bool:
        return not self.remaining

    def add(self, severity: str, check: str, what: str, fix: str = "", repaired: bool = False) -> Finding:
        finding = Finding(severity, check, what, repaired, "" if repaired else fix)
        self.findings.append(finding)
        return finding

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "healthy": self.healthy,
            "checks": self.checks,
            "notes": self.notes,
            "findings": [asdict(f) for f in self.findings],
        }

    def to_text(self) -> str:
        lines = [f"prefloop doctor: {self.target}", f"checks: {', '.join(self.checks)}"]
        lines += [f"  note: {note}" for note in self.notes]
        for f in self.findings:
            mark = "  [repaired]" if f.repaired else ""
            lines.append(f"  {f.severity.upper():7} {f.check}: {f.what}{mark}")
            if f.fix:
                lines.append(f"          fix: {f.fix}")
        repaired = sum(f.repaired for f in self.findings)
        if self.healthy:
            lines.append(f"healthy ({repaired} repaired)" if repaired else "healthy: no problems found")
        else:
            lines.append(f"{len(self.remaining)} problem(s) remain, {repaired} repaired")
        return "\n".join(lines)


def check_run(
    run_dir: str | os.PathLike[str] | None = None,
    *,
    db_url: str | None = None,
    run_name: str | None = None,
    repair: bool = False,
    clock: Callable[[], float] = time.time,
) -> DoctorReport:
    """Check a run folder and/or a preference store; with ``repair``, fix what is safe to fix.

    Args:
        run_dir: the run folder (its ``config.json`` gives the store URL and run name). None:
            check only the database at ``db_url``.
        db_url: the store's SQLAlchemy URL; overrides the run folder's (``--db-url`` runs).
        run_name: the run inside the store; default: the run folder's config, or, with only a
            ``db_url``, every run in the database.
        repair: recompute wrong pair statuses, release expired leases, remove leftover ``.tmp``
            checkpoint folders. Never deletes a label or a segment.
        clock: unix seconds, to decide which leases have expired.

    Returns:
        The report; ``report.healthy`` is False when a problem remains.

    Raises:
        ValueError: neither ``run_dir`` nor ``db_url`` was given.
    """
    if run_dir is None and db_url is None:
        raise ValueError("check_run needs a run folder (run_dir) or a database URL (db_url)")
    report = DoctorReport(target=str(run_dir) if run_dir is not None else _safe_url(db_url or ""),
                          repair_command=_repair_command(run_dir, db_url, run_name))
    expects_store = True
    config: dict[str, Any] | None = None
    imported = False
    if run_dir is not None:
        run_path = Path(run_dir)
        imported_name = _imported_run(run_path, run_name, report)
        imported = imported_name is not None
        config = None if imported else _check_config(run_path, report)
        run_name = run_name or imported_name
        if config is None and not run_path.is_dir():
            return report
        if config is not None:
            expects_store = config.get("reward_source", "preferences") == "preferences"
            db_url = db_url or config.get("db_url")
            run_name = run_name or config.get("run_name")
        run_name = run_name or run_path.name
        if db_url is None:
            store_file = run_path / "prefs.sqlite"
            if store_file.exists() or expects_store:
                db_url = sqlite_url(store_file)
    live_labels: dict[str, int] | None = None
    if db_url is not None and (expects_store or run_dir is None):
        live_labels = _check_store(db_url, run_name, repair, clock(), report, missing_ok=run_dir is not None,
                                   config=config)
    if run_dir is not None and not (imported and not (Path(run_dir) / "checkpoints").exists()):
        labels_in_store = None if live_labels is None or run_name is None else live_labels.get(run_name)
        # file times are real time, whatever clock the leases are judged by
        _check_checkpoints(Path(run_dir), repair, time.time(), report, expects_store, labels_in_store, config)
    return report


# ---------------------------------------------------------------------------------------------
# Run folder


def _check_config(run_dir: Path, report: DoctorReport) -> dict[str, Any] | None:
    report.checks.append("config")
    if not run_dir.is_dir():
        report.add(ERROR, "config", f"run folder {run_dir} does not exist", "pass the --run-dir of an existing run")
        return None
    path = run_dir / "config.json"
    if not path.is_file():
        report.add(
            ERROR, "config", f"{path} is missing",
            "a run killed before its config was written cannot be resumed: start it again in a new --run-dir",
        )
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        report.add(ERROR, "config", f"{path} is not valid JSON ({exc})",
                   "restore config.json from a backup (a checkpoint does not hold it); labels are in the store")
        return None
    if not isinstance(config, dict):
        report.add(ERROR, "config", f"{path} does not hold a JSON object", "restore config.json from a backup")
        return None
    from prefloop.training.config import ConfigError, TrainConfig

    try:  # the same checks --resume makes, so doctor says "healthy" only when resume can start
        TrainConfig.load(path)
    except (ConfigError, ValueError, TypeError) as exc:
        report.add(ERROR, "config", f"{path} cannot be used to resume: {exc}",
                   "fix the named setting in config.json (or restore it from a backup); labels are in the store")
    return config


def _imported_run(run_dir: Path, run_name: str | None, report: DoctorReport) -> str | None:
    """The name of the run ``prefloop import`` wrote into ``run_dir`` (which then has no
    config.json: it was never trained here), noted in the report; None for any other folder."""
    store_file = run_dir / "prefs.sqlite"
    if (run_dir / "config.json").exists() or not store_file.is_file():
        return None
    try:
        with closing(sqlite3.connect(f"{store_file.resolve().as_uri()}?mode=ro", uri=True, timeout=30)) as raw:
            rows = raw.execute(
                "SELECT runs.name, run_meta.value FROM runs JOIN run_meta ON run_meta.run_id = runs.id "
                "WHERE run_meta.key = 'import_source' ORDER BY runs.id"
            ).fetchall()
            n_runs = raw.execute("SELECT count(*) FROM runs").fetchone()[0]
    except sqlite3.Error:
        return None  # the store checks report what is wrong with the file
    wanted = run_name or run_dir.resolve().name
    match = [row for row in rows if row[0] == wanted] or (rows if n_runs == 1 and run_name is None else [])
    if not match:
        return None
    name, raw_source = match[0]
    try:
        source = json.loads(raw_source)
    except ValueError:
        source = {}
    source = source if isinstance(source, dict) else {}
    when = source.get("imported_at")
    when_text = (
        time.strftime(" on %Y-%m-%d", time.gmtime(when))
        if isinstance(when, (int, float)) and 0 <= when < 253_402_300_800 else ""
    )
    report.checks.append("config")
    report.notes.append(
        f"run {excerpt(name)} was imported{when_text} by `prefloop import` from a dataset of run "
        f"{excerpt(source.get('source_run_name'))}; an imported run has labels but was never trained "
        "here, so it has no config.json or checkpoints and nothing to resume. Rate it "
        f"(`prefloop rate --run-dir {run_dir}`), export it, or replay its labels in a new run "
        f"(`prefloop train --teacher recorded:{run_dir} ...` with the settings in its config meta)"
    )
    return name


def _check_checkpoints(
    run_dir: Path, repair: bool, now: float, report: DoctorReport, expects_store: bool, labels_in_store: int | None,
    config: dict[str, Any] | None,
) -> None:
    algo = config.get("algo") if config is not None and isinstance(config.get("algo"), str) else None
    report.checks.append("checkpoints")
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        report.add(WARNING, "checkpoints", f"{folder} does not exist",
                   f"create it (mkdir {folder}); --resume then starts the policy from scratch, labels are kept")
        return
    complete: list[Path] = []
    trainer = lock_holder(run_dir)
    for path in sorted(folder.glob("step-*")):
        if path.suffix == ".tmp":
            if trainer is None:  # a running trainer's .tmp folder is its checkpoint being written
                _leftover_tmp(path, repair, now, report)
        elif path.suffix == ".damaged":
            report.add(WARNING, "checkpoints", f"{path.name} was set aside by --resume because it does not load",
                       f"inspect or delete {path}; the run continues from the checkpoints next to it")
        elif path.is_dir() and _CHECKPOINT_NAME.fullmatch(path.name) and (path / "state.json").is_file():
            complete.append(path)
        elif path.is_dir():
            report.add(WARNING, "checkpoints", f"{path.name} is not a complete checkpoint (no state.json, or "
                       "not named step-<N>), so --resume ignores it", f"move {path} out of {folder}")
    if not complete:
        return
    latest = complete[-1]
    problems = checkpoint_problems(latest, reward_model=expects_store, algo=algo)
    if problems:
        usable = next((c for c in reversed(complete[:-1])
                       if not checkpoint_problems(c, reward_model=expects_store, algo=algo)), None)
        older = (f"--resume skips it and continues from {usable.name} (it sets {latest.name} aside as "
                 f"{latest.name}.damaged)") if usable is not None else (
            "no checkpoint loads: --resume then starts the policy from scratch; labels are kept")
        report.add(ERROR, "checkpoint_loads", f"latest checkpoint {latest.name}: {'; '.join(problems)}", older)
        return
    state = json.loads((latest / "state.json").read_text())
    for difference in config_differences(state.get("config"), config or {}):
        report.add(ERROR, "config_matches_run", f"config.json differs from checkpoint {latest.name}: {difference}",
                   "put the run's value back into config.json (--resume refuses it as it is)")
    if labels_in_store is not None:
        history = state.get("fit_history") or []
        trained_on = history[-1].get("labels") if history and isinstance(history[-1], dict) else None
        if isinstance(trained_on, (int, float)) and math.isfinite(trained_on) and trained_on > labels_in_store:
            report.add(
                ERROR, "labels_vs_checkpoint",
                f"checkpoint {latest.name} was trained on {int(trained_on)} labels but the store holds only "
                f"{labels_in_store} usable ones: labels were lost or the store was replaced",
                "restore the store (prefs.sqlite or the --db-url database) from a backup",
            )


def _leftover_tmp(path: Path, repair: bool, now: float, report: DoctorReport) -> None:
    what = f"incomplete checkpoint folder {path.name} (a crash while writing a checkpoint)"
    fix = f"remove {path}; the complete checkpoints next to it are not affected"
    try:
        age = now - path.stat().st_mtime
    except OSError:
        return
    if repair and age < TMP_GRACE_S:
        report.add(WARNING, "checkpoint_tmp", what + f", written {age:.0f} s ago: maybe a running trainer's",
                   f"stop `prefloop train` and run `{report.repair_command}` again")
        return
    if repair:
        shutil.rmtree(path, ignore_errors=True)
    report.add(WARNING, "checkpoint_tmp", what, fix, repaired=repair and not path.exists())


# ---------------------------------------------------------------------------------------------
# Store


def _check_store(
    url: str, run_name: str | None, repair: bool, now: float, report: DoctorReport, *, missing_ok: bool,
    config: dict[str, Any] | None = None,
) -> dict[str, int] | None:
    """Run the store checks; returns live usable labels per run name, or None if unreadable."""
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
            runs = _runs(conn, run_name, report, from_config=config is not None)
            if config is not None and runs:
                _config_matches_store(conn, runs[0][0], config, report)
        live: dict[str, int] = {}
        _labels_on_unknown_pairs(engine, report)
        for run_id, name in runs:
            _pairs_missing_segments(engine, run_id, name, report)
            _broken_segments(engine, run_id, name, report)
            _pair_status(engine, run_id, name, repair, report)
            _expired_leases(engine, run_id, name, repair, now, report)
            live[name] = _usable_labels(engine, run_id)
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
                   f"${ENV_DB_PASSWORD} or --db-password-file, never from files")
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


def _repair_command(run_dir: str | os.PathLike[str] | None, db_url: str | None, run_name: str | None) -> str:
    """``prefloop doctor ... --repair`` for what this check was given, ready to paste (no password)."""
    import shlex

    words = ["prefloop", "doctor"]
    if run_dir is not None:
        words += ["--run-dir", str(run_dir)]
    if db_url is not None:
        words += ["--db-url", _safe_url(db_url)]
    if run_name is not None:
        words += ["--run-name", run_name]
    return shlex.join([*words, "--repair"])


def _safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"


def _engine(url: str, is_sqlite: bool, repair: bool) -> Engine:
    """Read-only unless repairing (a SQLite file then opens on a read-only mount, too). Each
    repair is one UPDATE, atomic on its own; SQLite waits for a busy writer instead of failing."""
    parsed = make_url(connect_url(url))
    if is_sqlite and not repair:
        path = Path(parsed.database or "")
        return create_engine("sqlite://", creator=lambda: open_sqlite_read_only(path), poolclass=NullPool)
    return create_engine(parsed, connect_args={"timeout": store_engine.SQLITE_BUSY_TIMEOUT_S} if is_sqlite
                         else store_engine.wait_limit_args(parsed))


@contextmanager
def _write(engine: Engine) -> Iterator[Connection]:
    with engine.begin() as conn:
        yield conn


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


def _runs(conn: Connection, run_name: str | None, report: DoctorReport, from_config: bool = False) -> list[tuple[int, str]]:
    query = select(runs_table.c.id, runs_table.c.name).order_by(runs_table.c.id)
    if run_name is not None:
        query = query.where(runs_table.c.name == run_name)
    runs = [(int(i), str(n)) for i, n in conn.execute(query).all()]
    if run_name is not None and not runs:
        names = list(conn.scalars(select(runs_table.c.name).limit(_MAX_LISTED)))
        if from_config and names:  # a trainer creates its run as it creates the store: the name changed
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


def _ids(ids: list[int]) -> str:
    head = ", ".join(str(i) for i in ids[:_MAX_LISTED])
    return head + (f" and {len(ids) - _MAX_LISTED} more" if len(ids) > _MAX_LISTED else "")


def _labels_on_unknown_pairs(engine: Engine, report: DoctorReport) -> None:
    report.checks.append("labels_on_unknown_pairs")
    lab, p = labels_table, pairs_table
    with engine.connect() as conn:
        ids = list(conn.scalars(
            select(lab.c.id).outerjoin(p, p.c.id == lab.c.pair_id).where(p.c.id.is_(None)).order_by(lab.c.id)
        ))
    if ids:
        report.add(ERROR, "labels_on_unknown_pairs", f"{len(ids)} labels point at pairs that do not exist (label ids {_ids(ids)})",
                   "restore the pairs table from a backup; the labels themselves are kept and never deleted")


def _pairs_missing_segments(engine: Engine, run_id: int, name: str, report: DoctorReport) -> None:
    report.checks.append("pair_segments")
    p, s = pairs_table, segments_table
    found: list[int] = []
    with engine.connect() as conn:
        for side in (p.c.left_segment_id, p.c.right_segment_id):
            seg = s.alias()
            found += conn.scalars(
                select(p.c.id)
                .outerjoin(seg, and_(seg.c.id == side, seg.c.run_id == p.c.run_id))
                .where(p.c.run_id == run_id, seg.c.id.is_(None))
            ).all()
    ids = sorted(set(found))
    if ids:
        report.add(ERROR, "pair_segments", f"run {name!r}: {len(ids)} pairs use segments that are missing (pair ids {_ids(ids)})",
                   "restore the segments from a backup; until then reward-model training fails on these pairs")


def _broken_segments(engine: Engine, run_id: int, name: str, report: DoctorReport) -> None:
    report.checks.append("segment_arrays")
    s = segments_table
    broken: list[tuple[int, str]] = []
    last = -1
    with engine.connect() as conn:
        while True:
            rows = conn.execute(
                select(s).where(s.c.run_id == run_id, s.c.id > last).order_by(s.c.id).limit(_SEGMENT_CHUNK)
            ).all()
            if not rows:
                break
            for row in rows:
                problem = _segment_problem(row)
                if problem:
                    broken.append((int(row.id), problem))
            last = int(rows[-1].id)
    if broken:
        detail = "; ".join(f"segment {i}: {why}" for i, why in broken[:3])
        report.add(ERROR, "segment_arrays",
                   f"run {name!r}: {len(broken)} segments do not load ({detail})",
                   "restore them from a backup; they are kept as they are (doctor never deletes data), "
                   "and training fails on pairs that use them")


def _segment_problem(row: Any) -> str | None:
    arrays = {}
    for column in ("obs", "actions", "true_rewards", "episode_actions"):
        try:
            arrays[column] = array_from_bytes(row._mapping[column])
        except Exception as exc:  # any decoding failure is the finding itself
            return f"{column} does not decode ({type(exc).__name__}: {exc})"
    length = int(row.length)
    if arrays["true_rewards"].shape != (length,):
        return f"true_rewards has shape {arrays['true_rewards'].shape}, expected ({length},)"
    for column in ("obs", "actions"):
        if arrays[column].ndim < 1 or arrays[column].shape[0] != length:
            return f"{column} has shape {arrays[column].shape}, expected first dimension {length}"
    if not 1 <= int(row.n_valid) <= length:
        return f"n_valid {row.n_valid} outside 1..{length}"
    if arrays["episode_actions"].ndim < 1 or arrays["episode_actions"].shape[0] != int(row.start_step) + int(row.n_valid):
        return f"episode_actions has {arrays['episode_actions'].shape[:1]} steps, expected start_step + n_valid"
    return None


def _live_count(pair_id_column: Any) -> Any:
    lab = labels_table
    return (
        select(func.count())
        .select_from(lab)
        .where(lab.c.pair_id == pair_id_column, lab.c.retracted_at.is_(None))
        .scalar_subquery()
    )


def _pair_status(engine: Engine, run_id: int, name: str, repair: bool, report: DoctorReport) -> None:
    report.checks.append("pair_status")
    p = pairs_table
    live = _live_count(p.c.id)
    with engine.connect() as conn:
        rows = conn.execute(
            select(p.c.id, p.c.status, p.c.claimed_by, p.c.lease_expires_at, p.c.labels_per_pair, live.label("live"))
            .where(p.c.run_id == run_id)
            .order_by(p.c.id)
        ).all()
    over = [r.id for r in rows if r.live > r.labels_per_pair]
    if over:
        report.add(ERROR, "pair_status",
                   f"run {name!r}: {len(over)} pairs have more live labels than they asked for (pair ids {_ids(over)})",
                   "inspect them; retract the label given in error (undo), none is deleted automatically")
    wrong: list[tuple[Any, str]] = []
    for r in rows:
        if r.live >= r.labels_per_pair:
            if r.status != ANSWERED:
                wrong.append((r, f"pair {r.id} is {r.status!r} with {r.live}/{r.labels_per_pair} live labels (should be answered)"))
        elif r.status == ANSWERED:
            wrong.append((r, f"pair {r.id} is 'answered' with only {r.live}/{r.labels_per_pair} live labels"))
        elif r.status == CLAIMED and (r.claimed_by is None or r.lease_expires_at is None):
            wrong.append((r, f"pair {r.id} is 'claimed' by nobody"))
        elif r.status in (PENDING, WITHDRAWN) and (r.claimed_by is not None or r.lease_expires_at is not None):
            wrong.append((r, f"pair {r.id} is {r.status} but still names a lease holder"))
    fixed = 0
    if repair:
        for r, _ in wrong:
            fixed += _repair_status(engine, r)
    if wrong:
        detail = "; ".join(why for _, why in wrong[:3])
        report.add(ERROR, "pair_status",
                   f"run {name!r}: {len(wrong)} pairs have a status their labels disagree with ({detail})",
                   f"run `{report.repair_command}` to recompute the status from the labels",
                   repaired=repair and fixed == len(wrong))


def _repair_status(engine: Engine, row: Any) -> int:
    """Recompute one pair's status, only if nothing about it changed since it was read."""
    p = pairs_table
    # A withdrawn pair stays withdrawn (its run no longer wants labels) unless its labels are complete.
    target = ANSWERED if row.live >= row.labels_per_pair else WITHDRAWN if row.status == WITHDRAWN else PENDING
    unchanged = [p.c.id == row.id, p.c.status == row.status, _live_count(p.c.id) == row.live]
    unchanged.append(p.c.claimed_by.is_(None) if row.claimed_by is None else p.c.claimed_by == row.claimed_by)
    with _write(engine) as conn:
        result = conn.execute(update(p).where(*unchanged).values(status=target, claimed_by=None, lease_expires_at=None))
    return int(result.rowcount == 1)


def _expired_leases(engine: Engine, run_id: int, name: str, repair: bool, now: float, report: DoctorReport) -> None:
    report.checks.append("expired_leases")
    p = pairs_table
    expired = and_(p.c.run_id == run_id, p.c.status == CLAIMED, p.c.lease_expires_at <= now)
    with engine.connect() as conn:
        ids = list(conn.scalars(select(p.c.id).where(expired).order_by(p.c.id)))
    if not ids:
        return
    released = 0
    if repair:
        with _write(engine) as conn:
            released = conn.execute(
                update(p).where(expired, p.c.id.in_(ids)).values(status=PENDING, claimed_by=None, lease_expires_at=None)
            ).rowcount
    # Routine after a stopped app or a closed tab: the next claim takes expired leases over, so
    # this is information, not a problem (doctor still exits 0 for it).
    report.add(INFO, "expired_leases",
               f"run {name!r}: {len(ids)} pairs are still leased to raters whose lease expired (pair ids {_ids(ids)}); "
               "the next rater to ask for a pair takes them over",
               f"nothing needed; `{report.repair_command}` releases them now",
               repaired=repair and released == len(ids))


def _usable_labels(engine: Engine, run_id: int) -> int:
    lab, p = labels_table, pairs_table
    with engine.connect() as conn:
        return int(conn.scalar(
            select(func.count(func.distinct(lab.c.pair_id)))
            .join(p, p.c.id == lab.c.pair_id)
            .where(p.c.run_id == run_id, lab.c.retracted_at.is_(None), lab.c.choice != "cant_tell")
        ) or 0)


# ---------------------------------------------------------------------------------------------
# Command line


def add_doctor_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``prefloop doctor`` to the CLI's subparsers; its ``func`` returns the exit code."""
    parser = subparsers.add_parser(
        "doctor",
        help="check a run's store and checkpoints for damage (exit 0 healthy, 1 problems remain)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--run-dir", type=Path, default=None, help="the run folder to check")
    parser.add_argument("--db-url", default=None, help="the store's SQLAlchemy URL (default: the run folder's)")
    parser.add_argument("--run-name", default=None, help="the run in the store (default: the run folder's; all runs with only --db-url)")
    parser.add_argument("--repair", action="store_true",
                        help="recompute pair statuses, release expired leases, remove .tmp checkpoints (never deletes labels)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=cmd_doctor)
    return parser


def cmd_doctor(args: argparse.Namespace) -> int:
    if args.run_dir is None and args.db_url is None:
        from prefloop.training.rundir import RunDirError

        raise RunDirError("prefloop doctor needs --run-dir (a run folder) or --db-url (a preference store)")
    report = check_run(args.run_dir, db_url=args.db_url, run_name=args.run_name, repair=args.repair)
    print(strict_json(report.to_json(), indent=2) if args.json else report.to_text())
    sys.stdout.flush()
    return 0 if report.healthy else 1
