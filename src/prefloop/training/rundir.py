"""The run folder: where one run keeps its config, store, checkpoints, logs and results.

    run_dir/
      config.json          the resolved TrainConfig
      prefs.sqlite         the preference store (segments, pairs, labels) unless --db-url is given
      checkpoints/         step-<N>/ {policy.zip, reward_model/, state.json}, the newest two kept
      tb/                  TensorBoard logs
      summary.json         the result, written at the end
      learning_curve.png   true (and learned) episode return vs. env steps
      .trainer.lock        held (``flock``) by the one trainer writing the folder; holds its PID

One trainer at a time: ``train``/``run`` (new or ``--resume``) hold an OS lock on ``.trainer.lock``
for as long as they run; the kernel drops it when the process ends, however it ends, so there is
never a stale lock to remove. A second trainer is refused with the holder's PID.

A checkpoint is written into a fresh ``step-<N>.tmp`` folder, flushed to disk, and renamed to
``step-<N>`` only when complete (an atomic rename), so a crash mid-write never hides or damages the
previous checkpoint. Folders are only ever deleted after being renamed to ``*.tmp`` (which
``--resume`` ignores), so a crash mid-delete cannot leave a half-deleted checkpoint that looks
complete; ``*.tmp`` leftovers of crashes are removed at the next checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import logging
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefloop.config_files import ConfigError
from prefloop.serialization import strict_json
from prefloop.store.engine import open_sqlite_read_only
from prefloop.store.errors import StoreError
from prefloop.store.run_folder import read_store_settings
from prefloop.store.run_folder import store_of_run_folder  # noqa: F401 -- its old home; callers import it from here

if TYPE_CHECKING:
    from prefloop.training.config import TrainConfig

KEEP_CHECKPOINTS = 2
_COMPLETE_NAME = re.compile(r"step-\d+")
LOCK_NAME = ".trainer.lock"
_LEFTOVERS_OF_CREATE = {"config.json.tmp", "checkpoints", LOCK_NAME}
STORE_NAME = "prefs.sqlite"
# The folder's store with SQLite's side files, moved together (side files first): a stale -wal
# left beside a new prefs.sqlite would be replayed into it.
_STORE_FILES = (f"{STORE_NAME}-wal", f"{STORE_NAME}-shm", f"{STORE_NAME}-journal", STORE_NAME)
# Where a failed start's config, store and logs are moved when a new run starts in its folder:
# never deleted, so that an answer a rater app still serving it wrote at that moment is not lost.
FAILED_STARTS_NAME = "failed-starts"
# What a run that failed before its first label and checkpoint leaves besides create's leftovers.
_LEFTOVERS_OF_FAILED_START = {"config.json", "tb", FAILED_STARTS_NAME, *_STORE_FILES}
# Rows that cost people's time: a store holding any of them is never replaced.
_VALUABLE_TABLES = ("labels", "raters", "rater_checks")

log = logging.getLogger(__name__)


class RunDirError(RuntimeError):
    """The run folder is not in the state the command needs; the message says what to do."""


class RunDirBusyError(RunDirError):
    """Another process is training in this run folder (it holds the folder's lock)."""


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._owning = False  # inside owned(): create() takes the lock

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_NAME

    @contextmanager
    def owned(self, *, existing: bool) -> Iterator["RunDir"]:
        """Hold the folder's trainer lock for the ``with`` block.

        ``existing=True`` (resume): taken at once, before anything in the folder is read.
        ``existing=False`` (a new run): :meth:`create` takes it once the folder exists.

        Raises:
            RunDirBusyError: another trainer holds it (the message names its PID).
            RunDirError: the folder is read-only (a resume has to write checkpoints there).
        """
        if existing and self.config_path.is_file():  # else load_config says what is wrong
            self._acquire_lock()
        self._owning = True
        try:
            yield self
        finally:
            self._owning = False
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing releases the flock
                self._lock_fd = None

    def _acquire_lock(self) -> None:
        if self._lock_fd is not None:
            return
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise RunDirError(
                    f"run folder {self.path} is read-only ({exc.strerror}): training writes checkpoints "
                    "there. Copy the folder somewhere writable to continue it; `prefloop export` and "
                    "`prefloop doctor` work on it as it is"
                ) from None
            raise RunDirError(f"cannot open {self.lock_path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = lock_holder(self.path)
            who = f"PID {holder}" if holder and holder > 0 else "another process"
            raise RunDirBusyError(
                f"run folder {self.path} is in use by another trainer ({who}); nothing was changed. "
                "Wait for it to finish (or stop it), then continue with --resume; or choose a new --run-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def store_path(self) -> Path:
        return self.path / STORE_NAME

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tb"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    def create(self, config: "TrainConfig") -> None:
        """Make the folder for a new run; refuse one that already holds anything of value.

        A folder holding only what an interrupted ``create`` leaves (no ``config.json`` yet) counts
        as empty, and so does one whose run failed before it stored a label or wrote a checkpoint
        (its settings were impossible, say): its config and store are replaced, so that fixing the
        settings and starting again works instead of leaving a folder nothing can continue.
        """
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(
                f"--run-dir {self.path} is a file, not a folder; choose another --run-dir (nothing was changed)"
            )
        if self.path.is_dir() and lock_holder(self.path) is not None:
            self._acquire_lock()  # raises RunDirBusyError naming the trainer
        if self.path.exists() and not self.replaceable():
            raise _already_exists(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        if self._owning:
            self._acquire_lock()
        if not self.replaceable():  # another trainer created it between the check and the lock
            raise _already_exists(self.path)
        if not self._unstarted():
            aside = self._move_failed_start_aside()
            log.warning("run folder %s held a run that stopped before storing any label or checkpoint; starting "
                        "afresh there (its config.json, prefs.sqlite and logs are kept in %s)", self.path, aside)
        # config.json first and atomically: once it exists the folder is a resumable run.
        tmp = self.path / "config.json.tmp"
        config.save(tmp)
        os.replace(tmp, self.config_path)
        self.checkpoints_dir.mkdir(exist_ok=True)

    def _unstarted(self) -> bool:
        return self._holds_only(_LEFTOVERS_OF_CREATE)

    def replaceable(self) -> bool:
        """Nothing in this folder would be lost by starting a new run in it: create's leftovers,
        or a run that never stored a label, rater or check and never wrote a checkpoint, in the
        folder's own store (a store elsewhere, named in config.json, is not this folder's to
        replace). False for a folder that does not exist."""
        if not self.path.is_dir() or not os.access(self.path, os.R_OK | os.X_OK):
            return False
        if self._unstarted():
            return True
        if not self._holds_only(_LEFTOVERS_OF_CREATE | _LEFTOVERS_OF_FAILED_START):
            return False
        try:
            db_url, _ = read_store_settings(self.config_path)
        except ConfigError:
            return False  # a damaged config.json: someone should look at it
        return db_url is None and not _holds_answers(self.store_path)

    def _holds_only(self, names: set[str]) -> bool:
        if any(entry.name not in names for entry in self.path.iterdir()):
            return False
        return not (self.checkpoints_dir.is_dir() and any(self.checkpoints_dir.iterdir()))

    def _move_failed_start_aside(self) -> Path:
        """Move the failed start's store, logs and config into ``failed-starts/<time>/``; returns it."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = next(path for n in itertools.count()
                     if not (path := self.path / FAILED_STARTS_NAME / (stamp if n == 0 else f"{stamp}-{n}")).exists())
        aside.mkdir(parents=True)
        # The config last: until the store is gone the folder still reads as that failed run.
        for name in (*_STORE_FILES, self.tensorboard_dir.name, self.config_path.name):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.path / name, aside / name)
        return aside

    def load_config(self) -> "TrainConfig":
        from prefloop.training.config import TrainConfig

        if not self.config_path.is_file():
            raise RunDirError(
                f"cannot resume: {self.config_path} does not exist. --resume continues a run folder made "
                "by an earlier `prefloop train`; to start a new run, leave out --resume."
            )
        return TrainConfig.load(self.config_path)

    def new_checkpoint_dir(self, env_step: int) -> Path:
        target = self.checkpoints_dir / f"step-{env_step:09d}.tmp"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        return target

    def publish_checkpoint(self, tmp_dir: Path) -> Path:
        """Make a fully written ``step-<N>.tmp`` folder the checkpoint ``step-<N>``; keep the newest
        :data:`KEEP_CHECKPOINTS` and remove leftovers of crashed checkpoint writes.

        Only one trainer writes a run folder, so any other ``*.tmp`` folder is such a leftover.
        """
        final = tmp_dir.with_suffix("")
        _fsync_tree(tmp_dir)
        if final.exists():  # the same step again (e.g. the last one, after a resume)
            self._discard(final)
        tmp_dir.rename(final)
        _fsync_dir(self.checkpoints_dir)
        for old in self.complete_checkpoints()[:-KEEP_CHECKPOINTS]:
            self._discard(old)
        for leftover in self.checkpoints_dir.glob("*.tmp"):
            shutil.rmtree(leftover, ignore_errors=True)
        return final

    def _discard(self, checkpoint: Path) -> None:
        # Renamed first (atomic) so a crash mid-delete leaves a *.tmp folder, never a checkpoint
        # that still has its state.json but lost its policy.
        trash = checkpoint.with_name(checkpoint.name + ".old.tmp")
        shutil.rmtree(trash, ignore_errors=True)
        checkpoint.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint, or None when the run has none yet."""
        complete = self.complete_checkpoints()
        return complete[-1] if complete else None

    def complete_checkpoints(self) -> list[Path]:
        if not self.checkpoints_dir.is_dir():
            return []
        found = [
            p for p in self.checkpoints_dir.glob("step-*")
            if _COMPLETE_NAME.fullmatch(p.name) and (p / "state.json").is_file()
        ]
        return sorted(found)

    def write_result(self, result: dict[str, Any]) -> None:
        write_atomic(self.summary_path, strict_json(result, indent=2))


def _already_exists(path: Path) -> RunDirError:
    return RunDirError(
        f"run folder {path} already exists. Pass --resume to continue that run, "
        "or choose a new --run-dir (nothing in it was changed)."
    )


def _holds_answers(store_path: Path) -> bool:
    """Whether the SQLite store at ``store_path`` holds any label, registered rater or check
    (retracted ones too); one that cannot be read counts as holding them (never guess it away)."""
    if not store_path.exists():
        return False
    try:
        with contextlib.closing(open_sqlite_read_only(store_path)) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            return any(conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0]
                       for table in _VALUABLE_TABLES if table in tables) or bool(tables) and "labels" not in tables
    except (sqlite3.Error, StoreError, OSError):  # not SQLite, damaged, locked, another app's: keep it
        return True


def lock_holder(run_dir: Path) -> int | None:
    """PID of the trainer holding ``run_dir``'s lock, or None when no process holds it."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = os.read(fd, 32).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` and the folders themselves to disk (power-loss safety)."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step: readers see the old file or the new, never half."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
