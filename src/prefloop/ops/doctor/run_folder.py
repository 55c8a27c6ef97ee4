"""``prefloop doctor``'s checks of a run folder: ``config.json`` (as ``--resume`` reads it), a run
``prefloop import`` wrote, and the checkpoints (leftover ``.tmp`` folders, whether the newest one
loads and was trained on no more labels than the store holds).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from prefloop.ops.doctor.report import ERROR, WARNING, DoctorReport
from prefloop.training.checkpoints import checkpoint_problems
from prefloop.training.config import config_differences
from prefloop.training.rundir import lock_holder
from prefloop.untrusted import excerpt

TMP_GRACE_S = 120.0  # a younger .tmp checkpoint folder may still be written by a running trainer
_CHECKPOINT_NAME = re.compile(r"step-\d+")  # what RunDir takes for a complete checkpoint


def check_config(run_dir: Path, report: DoctorReport) -> dict[str, Any] | None:
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


def imported_run(run_dir: Path, run_name: str | None, report: DoctorReport) -> str | None:
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


def check_checkpoints(
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
