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

Here: :func:`check_run` and the command line. The checks: ``run_folder.py`` (config, imported
runs, checkpoints), ``database.py`` (reachable, intact, schema, runs), ``rows.py`` (each run's
rows, and the repairs); ``report.py`` holds the findings and prints them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefloop.ops.doctor.database import check_store
from prefloop.ops.doctor.report import (
    ERROR,
    INFO,
    SEVERITIES,
    WARNING,
    DoctorReport,
    Finding,
    repair_command,
    safe_url,
)
from prefloop.ops.doctor.run_folder import TMP_GRACE_S, check_checkpoints, check_config, imported_run
from prefloop.serialization import strict_json
from prefloop.store import sqlite_url

__all__ = [
    "ERROR", "INFO", "SEVERITIES", "TMP_GRACE_S", "WARNING", "DoctorReport", "Finding", "add_doctor_parser",
    "check_run", "cmd_doctor",
]


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
    report = DoctorReport(target=str(run_dir) if run_dir is not None else safe_url(db_url or ""),
                          repair_command=repair_command(run_dir, db_url, run_name))
    expects_store = True
    name_given = run_name is not None
    config: dict[str, Any] | None = None
    imported = False
    if run_dir is not None:
        run_path = Path(run_dir)
        imported_name = imported_run(run_path, run_name, report)
        imported = imported_name is not None
        config = None if imported else check_config(run_path, report)
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
        live_labels = check_store(db_url, run_name, repair, clock(), report, missing_ok=run_dir is not None,
                                   config=config, name_given=name_given)
    if run_dir is not None and not (imported and not (Path(run_dir) / "checkpoints").exists()):
        labels_in_store = None if live_labels is None or run_name is None else live_labels.get(run_name)
        # file times are real time, whatever clock the leases are judged by
        check_checkpoints(Path(run_dir), repair, time.time(), report, expects_store, labels_in_store, config)
    return report


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
