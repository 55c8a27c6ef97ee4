"""Which store and run a run folder holds: explicit arguments, then ``config.json``, then the
folder's own ``prefs.sqlite``. Used by every command that opens a run folder's labels (``rate``,
``export``, ``import``, a recorded teacher), below the training layer that writes the folder.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from prefloop.config_files import ConfigError, is_one_line, read_json, short
from prefloop.store import sqlite_url


def read_store_settings(config_path: Path) -> tuple[str | None, str | None]:
    """``(db_url, run_name)`` of a run folder's ``config.json``, for commands that only need to
    find the run's store (``prefloop rate``, ``prefloop export``); ``(None, None)`` when the file
    does not exist, None for a key it does not set.

    Raises:
        ConfigError: one line naming the file: unreadable, not JSON, not an object, or
            ``db_url``/``run_name`` not strings (a wrong run name would rate or export another run).
    """
    if not config_path.exists():
        return None, None
    data = read_json(config_path, "fix it, or pass --db-url and --run-name")
    if not isinstance(data, dict):
        raise ConfigError(f"{config_path} must be a JSON object, got {type(data).__name__}; fix it, or pass --db-url and --run-name")
    found: list[str | None] = []
    for key in ("db_url", "run_name"):
        value = data.get(key)
        if value is not None and not (is_one_line(value, 2000) and value.strip()):
            raise ConfigError(f"{config_path}: {key} must be a non-empty string, got {short(value)}; fix it, or pass --db-url and --run-name")
        found.append(value or None)
    return found[0], found[1]


def store_of_run_folder(run_dir: Path, db_url: str | None = None, run_name: str | None = None) -> tuple[str, str]:
    """``(store URL, run name)`` of the run a folder holds, as ``train``, ``run`` and ``import``
    name it: explicit arguments win, then ``config.json``'s ``db_url``/``run_name``, then
    ``prefs.sqlite`` in the folder and the folder's name -- or, when that store holds no run of
    that name but exactly one other (an import with its own ``--run-name``), that one.

    Raises:
        prefloop.config_files.ConfigError: a damaged ``config.json`` (a guessed name could open another
            run), or a folder store with several runs, none named after the folder.
    """
    if db_url and run_name:
        return db_url, run_name
    saved_url, saved_name = read_store_settings(Path(run_dir) / "config.json")
    url = db_url or saved_url or sqlite_url(Path(run_dir) / "prefs.sqlite")
    if run_name or saved_name:
        return url, run_name or saved_name  # type: ignore[return-value]
    name = Path(run_dir).resolve().name
    if url != sqlite_url(Path(run_dir) / "prefs.sqlite"):
        return url, name
    runs = _run_names(Path(run_dir) / "prefs.sqlite")
    if runs is None or name in runs or not runs:
        return url, name
    if len(runs) == 1:
        return url, runs[0]
    shown = ", ".join(repr(r) for r in runs[:20])
    raise ConfigError(f"{run_dir} holds several runs ({shown}) and none is named after the folder; pass --run-name")


def _run_names(store_path: Path) -> list[str] | None:
    """The run names in a SQLite store, read-only; None when there is no readable store."""
    import sqlite3

    if not store_path.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"{store_path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            return sorted(row[0] for row in conn.execute("SELECT name FROM runs"))
    except sqlite3.Error:
        return None  # not a store (yet): opening it says what is wrong
