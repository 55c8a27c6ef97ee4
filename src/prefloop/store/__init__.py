"""The preference store: segments, the pairs shown to raters, and their labels, on SQLAlchemy.

One database URL, one code path: SQLite (a file in the run folder, see :func:`sqlite_url`) is the
embedded default and PostgreSQL works by passing its URL instead. Several runs may share one
database; every row belongs to the run named when the store is opened.

Labels are the expensive data, so:

- every method that writes commits before it returns (``answer`` returns only once the label is
  durable: SQLite runs in WAL mode with ``synchronous=FULL``);
- labels are never deleted or overwritten: ``undo_last`` only sets ``retracted_at``;
- a pair is handed to one rater at a time through a lease (``claim_next``), taken with a
  compare-and-set ``UPDATE ... WHERE <still claimable>`` so many processes can claim at once on
  either backend; a unique index keeps one live label per (pair, rater) even under races.

SQLite specifics (applied only when the URL is SQLite, through engine events): WAL journal,
``synchronous=FULL``, ``busy_timeout``, ``foreign_keys=ON``, and SQLAlchemy emits ``BEGIN`` itself
(``BEGIN IMMEDIATE`` for writing transactions) so a read-then-write transaction cannot fail halfway
with "database is locked" but waits for the writer ahead of it instead.

Clips (the encoded videos raters watch) live in the store too, one per segment, so every app
instance and worker sees the same ones on SQLite and PostgreSQL alike, and no file path ever comes
from a request. The ``clips`` table was added after schema version 1 without changing it: opening an
older version-1 store creates the table.

Not safe to share across ``fork``: open a new :class:`PreferenceStore` in each process.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import random
import sqlite3
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    event,
    exists,
    func,
    insert,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.pool import NullPool

from prefloop.credentials import ENV_DB_PASSWORD, CredentialsError, connect_url
from prefloop.serialization import array_from_bytes, array_to_bytes
from prefloop.types import Choice, Label, LabeledPair, Segment, SegmentPair

SCHEMA_VERSION = 1
APP_MARKER = "prefloop"
META_TABLE = "prefloop_meta"

PENDING = "pending"
CLAIMED = "claimed"
ANSWERED = "answered"
# Asked but no longer wanted: the trainer stopped using labels before anyone answered it. Kept (never
# deleted, its partial labels too), never served again; see PreferenceStore.withdraw_unanswered.
WITHDRAWN = "withdrawn"

MAX_RATER_ID_CHARS = 200
MAX_META_KEY_CHARS = 200
MAX_MIME_CHARS = 100
MAX_CLIP_ERROR_CHARS = 2000
SQLITE_BUSY_TIMEOUT_S = 30.0

_WRITE_OPTION = "prefloop_write"
_IN_CHUNK = 500  # ids per IN (...) list; far below SQLite's bound-parameter limit
_CLAIM_BATCH = 16
_SEGMENT_CACHE_SIZE = 4096  # decoded segments kept per store instance (read-only, shared)
_MAX_CLAIM_ROUNDS = 1000
_SQLITE_HEADER = b"SQLite format 3\x00"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1  # INTEGER columns (ids) on PostgreSQL
# PostgreSQL aborts one of two transactions that lock rows in opposite orders (deadlock_detected)
# or that cannot be serialised; the aborted one only has to run again. SQLite never reports these.
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
CLAIM_ATTEMPTS = 5
_CLAIM_RETRY_SLEEP_S = 0.02  # times the attempt number, jittered
_LABEL_HAS_RETRACTED_AT = "retracted_at" in {f.name for f in fields(Label)}


class StoreError(Exception):
    """Something is wrong with the store or with what was asked of it; the message says the fix."""


class NotAPreferenceStoreError(StoreError):
    """The database is not a prefloop store (corrupt file, not SQLite, or another app's tables)."""


class NoSuchStoreError(StoreError):
    """A store opened read-only does not exist (nothing is created)."""


class NoSuchRunError(StoreError):
    """A store opened read-only has no run of the name asked for (nothing is created)."""


class StoreBusyError(StoreError):
    """Another process holds the store's lock longer than the busy timeout; nothing is damaged."""


class StoreReadOnlyError(StoreError):
    """The store cannot be written (read-only mount, file permissions, read-only database or
    user); nothing is damaged, and reading it (export, doctor) works."""


class LeaseError(StoreError):
    """The rater does not (or no longer) hold the lease on the pair they tried to answer."""


# --------------------------------------------------------------------------------------------
# Schema. Portable types only: BLOB/BYTEA for arrays, double precision for unix-second times,
# plain strings with CHECK constraints for enums (no PostgreSQL ENUM types to migrate).

metadata = MetaData()

_STATUSES = (PENDING, CLAIMED, ANSWERED, WITHDRAWN)
_CHOICES = tuple(c.value for c in Choice)


def _in_check(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


meta_table = Table(
    META_TABLE,
    metadata,
    Column("key", String(MAX_META_KEY_CHARS), primary_key=True),
    Column("value", Text, nullable=False),
)

runs_table = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("created_at", Double, nullable=False),
)

run_meta_table = Table(
    "run_meta",
    metadata,
    Column("run_id", Integer, ForeignKey("runs.id"), primary_key=True),
    Column("key", String(MAX_META_KEY_CHARS), primary_key=True),
    Column("value", Text, nullable=False),
)

segments_table = Table(
    "segments",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("runs.id"), nullable=False, index=True),
    Column("obs", LargeBinary, nullable=False),
    Column("actions", LargeBinary, nullable=False),
    Column("true_rewards", LargeBinary, nullable=False),
    Column("episode_actions", LargeBinary, nullable=False),
    Column("n_valid", Integer, nullable=False),
    Column("terminated", Boolean, nullable=False),
    Column("episode_seed", BigInteger, nullable=False),
    Column("start_step", BigInteger, nullable=False),
    Column("env_step", BigInteger, nullable=False),
    Column("length", Integer, nullable=False),
    Column("created_at", Double, nullable=False),
)

pairs_table = Table(
    "pairs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
    Column("left_segment_id", Integer, ForeignKey("segments.id"), nullable=False),
    Column("right_segment_id", Integer, ForeignKey("segments.id"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("claimed_by", String(MAX_RATER_ID_CHARS), nullable=True),
    Column("lease_expires_at", Double, nullable=True),
    Column("labels_per_pair", Integer, nullable=False),
    Column("gold_choice", String(16), nullable=True),
    Column("score", Double, nullable=False),
    Column("created_at", Double, nullable=False),
    CheckConstraint(_in_check("status", _STATUSES), name="ck_pairs_status"),
    CheckConstraint(
        "gold_choice IS NULL OR " + _in_check("gold_choice", _CHOICES), name="ck_pairs_gold"
    ),
    CheckConstraint("labels_per_pair >= 1", name="ck_pairs_labels_per_pair"),
)
Index("ix_pairs_queue", pairs_table.c.run_id, pairs_table.c.status, pairs_table.c.id)
Index("ix_pairs_claimed_by", pairs_table.c.claimed_by)

labels_table = Table(
    "labels",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("pair_id", Integer, ForeignKey("pairs.id"), nullable=False),
    Column("rater_id", String(MAX_RATER_ID_CHARS), nullable=False),
    Column("choice", String(16), nullable=False),
    Column("response_time_s", Double, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("retracted_at", Double, nullable=True),
    CheckConstraint(_in_check("choice", _CHOICES), name="ck_labels_choice"),
)
Index("ix_labels_rater", labels_table.c.rater_id, labels_table.c.id)
# One live (non-retracted) label per rater and pair, enforced by the database itself so that it
# holds under concurrent double submits. Partial unique indexes exist on SQLite and PostgreSQL.
Index(
    "uq_labels_live",
    labels_table.c.pair_id,
    labels_table.c.rater_id,
    unique=True,
    sqlite_where=labels_table.c.retracted_at.is_(None),
    postgresql_where=labels_table.c.retracted_at.is_(None),
)


# One encoded clip per segment (rendered by the clip worker). A segment whose replay failed gets a
# row with ``error`` set and empty ``data``, so the worker does not retry it forever and the app
# can skip its pairs.
clips_table = Table(
    "clips",
    metadata,
    Column("segment_id", Integer, ForeignKey("segments.id"), primary_key=True),
    Column("mime", String(MAX_MIME_CHARS), nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("error", Text, nullable=True),
    Column("created_at", Double, nullable=False),
)

# The run's raters: a name is claimed once per run, bound to the SHA-256 hash of that rater's
# secret (an invite link or a browser key; the secret itself is never stored). ``skeleton`` is
# the name reduced to how it looks (see prefloop.store.identity), so look-alike names can be refused.
raters_table = Table(
    "raters",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
    Column("name", String(MAX_RATER_ID_CHARS), nullable=False),
    Column("skeleton", String(MAX_RATER_ID_CHARS), nullable=False),
    Column("secret_hash", String(128), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("onboarded_at", Double, nullable=True),
)
Index("uq_raters_name", raters_table.c.run_id, raters_table.c.name, unique=True)

# Flags on labels (data, never deletions): e.g. ``too_fast`` (answered before the clips could be
# watched, value: the server-measured seconds), ``time_cut`` (the browser claimed a longer time
# than the server saw, value: the claimed seconds). One row per (label, flag).
label_flags_table = Table(
    "label_flags",
    metadata,
    Column("label_id", Integer, ForeignKey("labels.id"), primary_key=True),
    Column("flag", String(32), primary_key=True),
    Column("value", Double, nullable=True),
    Column("created_at", Double, nullable=False),
)

# Tables added to schema version 1 later; a version-1 store without them gets them on open.
_ADDED_TABLES = (clips_table, raters_table, label_flags_table)


# --------------------------------------------------------------------------------------------


def sqlite_url(path: str | os.PathLike[str]) -> str:
    """The SQLAlchemy URL of the SQLite file at ``path`` (made absolute; any characters allowed)."""
    absolute = Path(path).expanduser().resolve()
    return URL.create("sqlite", database=str(absolute)).render_as_string(hide_password=False)


class PreferenceStore:
    """Segments, pairs and labels of one run in a SQL database (SQLite file or PostgreSQL).

    Args:
        url: SQLAlchemy database URL, e.g. ``sqlite_url(run_dir / "prefs.sqlite")`` or
            ``"postgresql+psycopg://user@host/db"``.
        run_name: the run whose rows this store reads and writes; created if new.
        clock: returns the time in unix seconds; every timestamp and lease uses it (inject a
            fake clock to test lease expiry).
        read_only: only read (export, doctor): nothing is created, not even the run (a missing
            one raises :class:`NoSuchRunError`); a SQLite file on a read-only mount is opened
            ``immutable``. Write methods then fail.

    A URL without a password takes it from ``$PREFLOOP_DB_PASSWORD`` or the file named by
    ``$PREFLOOP_DB_PASSWORD_FILE`` (see :mod:`prefloop.credentials`); :attr:`url` never shows it.

    Thread-safe: every call takes its own pooled connection. Do not share across ``fork``.
    Segments it returns may be shared between calls (decoded ones are cached): treat them as
    read-only.

    Raises:
        NotAPreferenceStoreError: the file is not SQLite, is corrupt, or the database holds
            another application's tables; nothing is written to it.
        StoreBusyError: another process holds the database locked for longer than the busy timeout.
        StoreReadOnlyError: opened for writing where nothing may be written.
        StoreError: bad URL, missing folder, or a schema from another prefloop version.
    """

    def __init__(
        self,
        url: str,
        run_name: str = "default",
        *,
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
    ) -> None:
        if (
            not isinstance(run_name, str)
            or not run_name.strip()
            or len(run_name) > 200
            or _bad_text(run_name)
        ):
            raise StoreError(
                "run_name must be a non-empty string of at most 200 printable characters, got "
                f"{_short(run_name)}"
            )
        parsed = _parse_url(url)
        self._clock = clock
        self._run_name = run_name
        self._url = parsed
        self._read_only = read_only
        self._is_sqlite = parsed.get_backend_name() == "sqlite"
        if self._is_sqlite:
            _preflight_sqlite_file(parsed.database, must_exist=read_only)
            if not read_only:
                self._check_writable()

        try:
            if self._is_sqlite and read_only and parsed.database not in (None, "", ":memory:"):
                path = Path(str(parsed.database))
                self._engine: Engine = create_engine(
                    "sqlite://", creator=lambda: open_sqlite_read_only(path), poolclass=NullPool
                )
            else:
                self._engine = create_engine(parsed, connect_args=wait_limit_args(parsed))
        except (ArgumentError, ImportError) as exc:
            raise StoreError(
                f"cannot use database URL {self.url} ({exc}); prefloop stores work on SQLite "
                "(sqlite:///path) and PostgreSQL (postgresql+psycopg://...)"
            ) from None
        if self._is_sqlite:
            event.listen(self._engine, "connect", _on_sqlite_connect_read_only if read_only else _on_sqlite_connect)
            event.listen(self._engine, "begin", _on_sqlite_begin)
        # Same pool and events; the option only tells SQLite to take the write lock up front.
        self._write_engine = self._engine.execution_options(**{_WRITE_OPTION: True})
        self._closed = False
        self._segment_cache: OrderedDict[int, Segment] = OrderedDict()
        self._cache_lock = threading.Lock()
        try:
            if read_only:
                with self._read() as conn:
                    self._check_or_create_schema(conn, create=False)
                self._run_id = self._find_run(run_name)
            else:
                self._ensure_schema()
                self._run_id = self._get_or_create_run(run_name)
                if not self._is_sqlite:
                    self._check_writable()
        except DBAPIError as exc:
            self._engine.dispose()
            raise store_open_error(exc, self.url, parsed.database if self._is_sqlite else None) from exc
        except BaseException:
            self._engine.dispose()
            raise

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def run_id(self) -> int:
        return self._run_id

    @property
    def run_name(self) -> str:
        return self._run_name

    @property
    def url(self) -> str:
        """The database URL with any password hidden."""
        return self._url.render_as_string(hide_password=True)

    def close(self) -> None:
        """Release all database connections. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._engine.dispose()

    def __enter__(self) -> PreferenceStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PreferenceStore({self.url!r}, run_name={self._run_name!r})"

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        self._check_open()
        with self._engine.begin() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        self._check_open()
        with self._write_engine.begin() as conn:
            yield conn

    def _check_writable(self) -> None:
        """Refuse a store that cannot be written now, not when the first label is written: a
        SQLite file or folder that may not be written (a read-only mount; SQLite would open it
        read-only without a word), a read-only PostgreSQL database or a user who may not insert."""
        if self._is_sqlite:
            database = str(self._url.database or "")
            if database not in ("", ":memory:") and not database.startswith("file:") and _sqlite_not_writable(Path(database)):
                raise read_only_error(database, "the file or its folder may not be written")
            return
        if self._url.get_backend_name() != "postgresql":
            return
        with self._read() as conn:
            read_only, may_insert = conn.exec_driver_sql(
                "SELECT current_setting('transaction_read_only'), has_table_privilege('labels', 'INSERT')"
            ).one()
        if read_only == "on" or not may_insert:
            why = "the database is read-only" if read_only == "on" else "the database user may not insert labels"
            raise read_only_error(self.url, why)

    def read_transaction(self) -> "contextlib.AbstractContextManager[Connection]":
        """One consistent read transaction on this store's database (for bulk readers like export)."""
        return self._read()

    def write_transaction(self) -> "contextlib.AbstractContextManager[Connection]":
        """One write transaction with the store's locking (SQLite: ``BEGIN IMMEDIATE``), for bulk
        writers like import; use the table objects of this module, and filter by ``run_id``."""
        return self._write()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("this PreferenceStore is closed; open a new one")

    def _ensure_schema(self) -> None:
        # Two processes may open a brand-new database at once. On SQLite the write transaction
        # serialises them; on PostgreSQL the loser's CREATE fails and it re-checks once.
        for attempt in range(2):
            try:
                with self._write() as conn:
                    self._check_or_create_schema(conn)
                return
            except DBAPIError:
                if attempt == 1:
                    raise

    def _check_or_create_schema(self, conn: Connection, create: bool = True) -> None:
        tables = set(inspect(conn).get_table_names())
        if not tables and not create:
            raise StoreError(f"database {self.url} is empty: it holds no prefloop store yet; nothing was changed")
        if not tables:
            metadata.create_all(conn)
            conn.execute(
                insert(meta_table),
                [
                    {"key": "app", "value": APP_MARKER},
                    {"key": "schema_version", "value": str(SCHEMA_VERSION)},
                ],
            )
            return
        if META_TABLE not in tables:
            raise NotAPreferenceStoreError(
                f"database {self.url} already holds tables ({', '.join(sorted(tables)[:5])}) but "
                f"no '{META_TABLE}' table, so it belongs to another application; nothing was "
                "changed. Point prefloop at a new file or an empty database."
            )
        meta = dict(conn.execute(select(meta_table.c.key, meta_table.c.value)).all())
        if meta.get("app") != APP_MARKER:
            raise NotAPreferenceStoreError(
                f"database {self.url} has a '{META_TABLE}' table without app={APP_MARKER!r}; "
                "it is not a prefloop store. Use a new file or an empty database."
            )
        if meta.get("schema_version") != str(SCHEMA_VERSION):
            raise StoreError(
                f"database {self.url} has preference-store schema version "
                f"{meta.get('schema_version')!r}, this prefloop reads version {SCHEMA_VERSION}; "
                "open it with the prefloop version that wrote it, or start a new store."
            )
        if create:  # a reader never changes the schema
            _allow_withdrawn_status(conn)
        added = [t for t in _ADDED_TABLES if t.name not in tables] if create else []
        for table in added:
            table.create(conn)
        tables |= {t.name for t in added}
        missing = sorted(
            t.name for t in metadata.sorted_tables if t.name not in tables and (create or t not in _ADDED_TABLES)
        )
        if missing:
            raise StoreError(
                f"database {self.url} is a damaged prefloop store: tables {missing} are missing; "
                "restore it from a backup or start a new store"
            )

    def _find_run(self, name: str) -> int:
        with self._read() as conn:
            run_id = conn.scalar(select(runs_table.c.id).where(runs_table.c.name == name))
            if run_id is None:
                names = list(conn.scalars(select(runs_table.c.name).order_by(runs_table.c.id).limit(10)))
        if run_id is None:
            raise NoSuchRunError(
                f"the store {self.url} has no run named {_short(name)} (its runs: {', '.join(map(_short, names)) or 'none'}); "
                "pass the run's --run-name, or check that config.json names the run the store holds"
            )
        return int(run_id)

    def _get_or_create_run(self, name: str) -> int:
        for attempt in range(2):
            try:
                with self._write() as conn:
                    run_id = conn.scalar(select(runs_table.c.id).where(runs_table.c.name == name))
                    if run_id is None:
                        result = conn.execute(
                            insert(runs_table).values(name=name, created_at=self._now())
                        )
                        run_id = result.inserted_primary_key[0]
                    return int(run_id)
            except IntegrityError:
                if attempt == 1:  # another process created the same run just now; read it
                    raise
        raise AssertionError("unreachable")

    def _now(self) -> float:
        now = float(self._clock())
        if not math.isfinite(now):
            raise StoreError(f"the store's clock returned {now}; it must return unix seconds")
        return now

    # -- segments -------------------------------------------------------------------------------

    def add_segments(self, segments: Sequence[Segment]) -> list[int]:
        """Save new segments in one transaction; sets ``seg.id`` on each and returns the ids.

        Raises:
            StoreError: a segment is already saved (has an id) or is malformed (shapes, n_valid).
        """
        segments = list(segments)
        for index, seg in enumerate(segments):
            if seg.id is not None:
                raise StoreError(
                    f"segment {index} is already saved (id {seg.id}); do not add it twice "
                    "(add_pairs accepts saved segments directly)"
                )
            _validate_segment(seg, f"segment {index}")
        rows = [self._segment_row(seg) for seg in segments]
        with self._write() as conn:
            ids = [self._insert_segment(conn, row) for row in rows]
        for seg, seg_id in zip(segments, ids):
            seg.id = seg_id
        return ids

    def get_segments(self, ids: Sequence[int]) -> list[Segment]:
        """Load segments by id, in the order of ``ids`` (repeats allowed).

        Raises:
            StoreError: some id is not a segment of this run.
        """
        wanted = [_as_id(i, "segment id") for i in ids]
        with self._read() as conn:
            found = self._load_segments(conn, wanted)
        return [found[i] for i in wanted]

    def _segment_row(self, seg: Segment) -> dict[str, Any]:
        return {
            "run_id": self._run_id,
            "obs": array_to_bytes(seg.obs),
            "actions": array_to_bytes(seg.actions),
            "true_rewards": array_to_bytes(seg.true_rewards),
            "episode_actions": array_to_bytes(seg.episode_actions),
            "n_valid": int(seg.n_valid),
            "terminated": bool(seg.terminated),
            "episode_seed": int(seg.episode_seed),
            "start_step": int(seg.start_step),
            "env_step": int(seg.env_step),
            "length": seg.length,
            "created_at": self._now(),
        }

    @staticmethod
    def _insert_segment(conn: Connection, row: dict[str, Any]) -> int:
        return int(conn.execute(insert(segments_table).values(**row)).inserted_primary_key[0])

    def _load_segments(self, conn: Connection, ids: Iterable[int]) -> dict[int, Segment]:
        # Segments never change once stored, so decoded ones are kept in a bounded per-process
        # cache: the trainer re-reads every labelled pair's segments at each reward update.
        unique = sorted(set(ids))
        cache = self._segment_cache
        with self._cache_lock:
            found: dict[int, Segment] = {i: cache[i] for i in unique if i in cache}
            for i in found:
                cache.move_to_end(i)
        for chunk in _chunks([i for i in unique if i not in found], _IN_CHUNK):
            rows = conn.execute(
                select(segments_table).where(
                    segments_table.c.run_id == self._run_id, segments_table.c.id.in_(chunk)
                )
            ).all()
            for row in rows:
                found[row.id] = _segment_from_row(row)
        with self._cache_lock:
            cache.update((i, seg) for i, seg in found.items() if i not in cache)
            while len(cache) > _SEGMENT_CACHE_SIZE:
                cache.popitem(last=False)
        missing = [i for i in unique if i not in found]
        if missing:
            raise StoreError(
                f"segment ids {missing[:10]} are not segments of run {self._run_name!r}; "
                "use ids returned by add_segments/add_pairs of this run"
            )
        return found

    # -- pairs ----------------------------------------------------------------------------------

    def add_pairs(
        self,
        pairs: Sequence[SegmentPair],
        labels_per_pair: int = 1,
        gold_choice: Choice | str | None = None,
    ) -> list[int]:
        """Queue pairs for labelling, saving their unsaved segments first, in one transaction.

        Sets ``pair.id`` (and ``seg.id`` for newly saved segments) once committed.

        Args:
            pairs: the pairs; a segment object used by several pairs is saved once.
            labels_per_pair: how many different raters must label each pair (>= 1).
            gold_choice: the known right answer, for gold (rater-check) questions.
        """
        pairs = list(pairs)
        labels_per_pair = _as_id(labels_per_pair, "labels_per_pair")
        if labels_per_pair < 1:
            raise StoreError(f"labels_per_pair must be >= 1, got {labels_per_pair}")
        gold = None if gold_choice is None else _as_choice(gold_choice, "gold_choice")
        if gold is Choice.CANT_TELL:
            raise StoreError("gold_choice cannot be cant_tell; use left, right, equal or None")

        unsaved: dict[int, Segment] = {}  # by object identity: a shared segment is saved once
        saved_ids: set[int] = set()
        scores: list[float] = []
        for index, pair in enumerate(pairs):
            if pair.id is not None:
                raise StoreError(f"pair {index} is already saved (id {pair.id}); add it only once")
            for side in ("left", "right"):
                seg = getattr(pair, side)
                if not isinstance(seg, Segment):
                    raise StoreError(f"pair {index}.{side} is {type(seg).__name__}, not a Segment")
                if seg.id is None:
                    if id(seg) not in unsaved:
                        _validate_segment(seg, f"pair {index}.{side}")
                        unsaved[id(seg)] = seg
                else:
                    saved_ids.add(_as_id(seg.id, f"pair {index}.{side}.id"))
            score = float(pair.score)
            if not math.isfinite(score):
                raise StoreError(
                    f"pair {index} has score {score}; the query selector must give a finite score"
                )
            scores.append(score)

        segment_rows = {key: self._segment_row(seg) for key, seg in unsaved.items()}
        with self._write() as conn:
            if saved_ids:
                self._check_segments_exist(conn, saved_ids)
            new_segment_ids = {
                key: self._insert_segment(conn, row) for key, row in segment_rows.items()
            }

            def segment_id(seg: Segment) -> int:
                return new_segment_ids[id(seg)] if seg.id is None else int(seg.id)

            now = self._now()
            pair_ids = []
            for pair, score in zip(pairs, scores):
                result = conn.execute(
                    insert(pairs_table).values(
                        run_id=self._run_id,
                        left_segment_id=segment_id(pair.left),
                        right_segment_id=segment_id(pair.right),
                        status=PENDING,
                        labels_per_pair=labels_per_pair,
                        gold_choice=None if gold is None else gold.value,
                        score=score,
                        created_at=now,
                    )
                )
                pair_ids.append(int(result.inserted_primary_key[0]))
        for key, seg in unsaved.items():
            seg.id = new_segment_ids[key]
        for pair, pair_id in zip(pairs, pair_ids):
            pair.id = pair_id
        return pair_ids

    def _check_segments_exist(self, conn: Connection, ids: set[int]) -> None:
        present: set[int] = set()
        for chunk in _chunks(sorted(ids), _IN_CHUNK):
            present.update(
                conn.scalars(
                    select(segments_table.c.id).where(
                        segments_table.c.run_id == self._run_id, segments_table.c.id.in_(chunk)
                    )
                )
            )
        missing = sorted(ids - present)
        if missing:
            raise StoreError(
                f"segments {missing[:10]} have ids but are not saved in run {self._run_name!r}; "
                "were they saved by another store or run? Set seg.id = None to save them here"
            )

    def get_pair(self, pair_id: int) -> SegmentPair:
        """Load one pair of this run with its segments."""
        pair_id = _as_id(pair_id, "pair_id")
        with self._read() as conn:
            return self._load_pair(conn, pair_id)

    def _load_pair(self, conn: Connection, pair_id: int) -> SegmentPair:
        row = conn.execute(
            select(
                pairs_table.c.left_segment_id, pairs_table.c.right_segment_id, pairs_table.c.score
            ).where(pairs_table.c.id == pair_id, pairs_table.c.run_id == self._run_id)
        ).first()
        if row is None:
            raise StoreError(self._no_such_pair(pair_id))
        segs = self._load_segments(conn, [row.left_segment_id, row.right_segment_id])
        return SegmentPair(
            left=segs[row.left_segment_id],
            right=segs[row.right_segment_id],
            id=pair_id,
            score=float(row.score),
        )

    def _no_such_pair(self, pair_id: int) -> str:
        return (
            f"pair {pair_id} does not exist in run {self._run_name!r}; "
            "use a pair id returned by claim_next or add_pairs of this run"
        )

    # -- leases and labels ----------------------------------------------------------------------

    def _claimable(self, rater_id: str, now: float) -> Any:
        """SQL condition: the pair may be leased to ``rater_id`` now."""
        p, lab = pairs_table, labels_table
        return and_(
            or_(p.c.status == PENDING, and_(p.c.status == CLAIMED, p.c.lease_expires_at <= now)),
            ~exists().where(
                lab.c.pair_id == p.c.id, lab.c.rater_id == rater_id, lab.c.retracted_at.is_(None)
            ),
        )

    def claim_next(
        self, rater_id: str, lease_seconds: float = 120.0, *, exclude: Iterable[int] = ()
    ) -> SegmentPair | None:
        """Lease the oldest pair ``rater_id`` may label for ``lease_seconds``; None if none is left.

        A pair the rater still holds (a refreshed page, or one given back by ``undo_last``) comes
        back first, with its lease renewed. Otherwise the lowest-id pair that is pending, or
        claimed with an expired lease, and not yet labelled by this rater, is taken. ``exclude``
        skips pair ids (e.g. the one the rater just released with "skip").

        When PostgreSQL aborts the claim's transaction as a deadlock victim (SQLSTATE 40P01) or a
        serialization failure (40001), nothing of it was committed and the whole claim runs
        again, up to :data:`CLAIM_ATTEMPTS` times with a short jittered pause; other errors (and
        every SQLite error) are raised at once.
        """
        rater_id = _check_rater(rater_id)
        lease_seconds = _check_lease(lease_seconds)
        excluded = sorted({_as_id(i, "excluded pair id") for i in exclude})
        for attempt in range(1, CLAIM_ATTEMPTS + 1):
            try:
                return self._claim_next_once(rater_id, lease_seconds, excluded)
            except OperationalError as exc:
                if attempt == CLAIM_ATTEMPTS or not is_retryable_conflict(exc):
                    raise
            time.sleep(_CLAIM_RETRY_SLEEP_S * attempt * random.uniform(0.5, 1.5))
        raise AssertionError("unreachable")

    def _claim_next_once(
        self, rater_id: str, lease_seconds: float, excluded: list[int]
    ) -> SegmentPair | None:
        """One attempt of :meth:`claim_next` in one transaction (arguments already validated)."""
        p = pairs_table
        with self._write() as conn:
            now = self._now()
            lease = {"lease_expires_at": now + lease_seconds}
            held_query = select(p.c.id).where(
                p.c.run_id == self._run_id, p.c.status == CLAIMED, p.c.claimed_by == rater_id
            )
            if excluded:
                held_query = held_query.where(p.c.id.not_in(excluded))
            held_query = held_query.order_by(p.c.lease_expires_at.desc(), p.c.id.desc())
            for pair_id in conn.scalars(held_query).all():
                renewed = conn.execute(
                    update(p)
                    .where(p.c.id == pair_id, p.c.status == CLAIMED, p.c.claimed_by == rater_id)
                    .values(**lease)
                )
                if renewed.rowcount == 1:
                    return self._load_pair(conn, pair_id)

            for _ in range(_MAX_CLAIM_ROUNDS):
                query = select(p.c.id).where(
                    p.c.run_id == self._run_id, self._claimable(rater_id, now)
                )
                if excluded:
                    query = query.where(p.c.id.not_in(excluded))
                query = query.order_by(p.c.id)
                # PostgreSQL: first take a claimable row nobody has locked, so concurrent raters
                # do not all queue behind the row lock on the pair at the head of the queue. Only
                # when every claimable row is locked, wait for them, so None still means "nothing
                # left". SQLite renders no FOR UPDATE (its write transaction excludes all others).
                candidates = conn.scalars(
                    query.limit(1).with_for_update(of=p, skip_locked=True)
                ).all() or conn.scalars(query.limit(_CLAIM_BATCH)).all()
                if not candidates:
                    return None
                for pair_id in candidates:
                    # Compare-and-set: only succeeds if nobody took the pair since we looked.
                    claimed = conn.execute(
                        update(p)
                        .where(p.c.id == pair_id, self._claimable(rater_id, now))
                        .values(status=CLAIMED, claimed_by=rater_id, **lease)
                    )
                    if claimed.rowcount == 1:
                        return self._load_pair(conn, pair_id)
        raise StoreError(
            f"could not claim a pair for {rater_id!r} after {_MAX_CLAIM_ROUNDS} rounds of "
            "contention; try again"
        )

    def answer(
        self, pair_id: int, rater_id: str, choice: Choice | str, response_time_s: float
    ) -> Label:
        """Record ``rater_id``'s choice on a pair they hold, committed before returning.

        The pair becomes ``answered`` once it has ``labels_per_pair`` live labels, else pending
        for the next rater. Idempotent: if this rater already has a live label on the pair, that
        label is returned and nothing is written (a double-submitted form counts once).

        Raises:
            LeaseError: the rater does not hold the pair: never claimed, released, or their lease
                expired and another rater claimed (or completed) it since.
            StoreError: bad arguments or unknown pair.
        """
        pair_id = _as_id(pair_id, "pair_id")
        rater_id = _check_rater(rater_id)
        choice = _as_choice(choice, "choice")
        response_time_s = _check_response_time(response_time_s)
        p = pairs_table
        for attempt in range(2):
            try:
                with self._write() as conn:
                    labels_per_pair = conn.scalar(
                        select(p.c.labels_per_pair).where(
                            p.c.id == pair_id, p.c.run_id == self._run_id
                        )
                    )
                    if labels_per_pair is None:
                        raise StoreError(self._no_such_pair(pair_id))
                    existing = self._live_label(conn, pair_id, rater_id)
                    if existing is not None:
                        return existing
                    now = self._now()
                    # Compare-and-set on the lease; it also row-locks the pair on PostgreSQL so
                    # the label count below cannot race with another answer to the same pair.
                    taken = conn.execute(
                        update(p)
                        .where(p.c.id == pair_id, p.c.status == CLAIMED, p.c.claimed_by == rater_id)
                        .values(status=PENDING, claimed_by=None, lease_expires_at=None)
                    )
                    if taken.rowcount != 1:
                        # A concurrent double submit may have committed the label meanwhile.
                        existing = self._live_label(conn, pair_id, rater_id)
                        if existing is not None:
                            return existing
                        raise LeaseError(self._lease_problem(conn, pair_id, rater_id))
                    result = conn.execute(
                        insert(labels_table).values(
                            pair_id=pair_id,
                            rater_id=rater_id,
                            choice=choice.value,
                            response_time_s=response_time_s,
                            created_at=now,
                        )
                    )
                    n_labels = self._count_live_labels(conn, pair_id)
                    if n_labels >= labels_per_pair:
                        conn.execute(update(p).where(p.c.id == pair_id).values(status=ANSWERED))
                    return _make_label(
                        id=int(result.inserted_primary_key[0]),
                        pair_id=pair_id,
                        rater_id=rater_id,
                        choice=choice,
                        response_time_s=response_time_s,
                        created_at=now,
                        retracted_at=None,
                    )
            except IntegrityError:
                # The live-label unique index rejected a concurrent double submit: the other
                # submit's label stands; the next attempt returns it.
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def _live_label(self, conn: Connection, pair_id: int, rater_id: str) -> Label | None:
        row = conn.execute(
            select(labels_table).where(
                labels_table.c.pair_id == pair_id,
                labels_table.c.rater_id == rater_id,
                labels_table.c.retracted_at.is_(None),
            )
        ).first()
        return None if row is None else _label_from_row(row)

    @staticmethod
    def _count_live_labels(conn: Connection, pair_id: int) -> int:
        return int(
            conn.scalar(
                select(func.count())
                .select_from(labels_table)
                .where(labels_table.c.pair_id == pair_id, labels_table.c.retracted_at.is_(None))
            )
        )

    def _lease_problem(self, conn: Connection, pair_id: int, rater_id: str) -> str:
        row = conn.execute(
            select(pairs_table.c.status, pairs_table.c.claimed_by).where(
                pairs_table.c.id == pair_id
            )
        ).first()
        head = f"rater {rater_id!r} cannot answer pair {pair_id}: "
        tail = "; call claim_next to get a pair to label"
        if row is None:
            return head + "it does not exist" + tail
        if row.status == ANSWERED:
            return head + "it is already completed (it has all the labels it needs)" + tail
        if row.status == WITHDRAWN:
            return head + "it was withdrawn: the run no longer uses labels (training is over)" + tail
        if row.status == CLAIMED:
            return (
                head + "it is leased to another rater (if it was yours, your lease expired and "
                "they claimed it)" + tail
            )
        return head + "it is not leased to this rater (never claimed, or released)" + tail

    def release(self, pair_id: int, rater_id: str) -> None:
        """Give back the lease ``rater_id`` holds on a pair, making it pending again.

        A no-op if the rater does not hold it (anymore): the end state is the same.

        Raises:
            StoreError: the pair does not exist in this run.
        """
        pair_id = _as_id(pair_id, "pair_id")
        rater_id = _check_rater(rater_id)
        p = pairs_table
        with self._write() as conn:
            released = conn.execute(
                update(p)
                .where(
                    p.c.id == pair_id,
                    p.c.run_id == self._run_id,
                    p.c.status == CLAIMED,
                    p.c.claimed_by == rater_id,
                )
                .values(status=PENDING, claimed_by=None, lease_expires_at=None)
            )
            if released.rowcount == 0:
                known = conn.scalar(
                    select(p.c.id).where(p.c.id == pair_id, p.c.run_id == self._run_id)
                )
                if known is None:
                    raise StoreError(self._no_such_pair(pair_id))

    def undo_last(
        self, rater_id: str, lease_seconds: float = 120.0, *, among: Iterable[int] | None = None
    ) -> Label | None:
        """Retract ``rater_id``'s latest live label (kept, with ``retracted_at`` set).

        The pair is leased back to the rater for ``lease_seconds`` so ``claim_next`` returns it
        and they can answer again -- unless another rater holds a live lease on it right now, in
        which case it stays theirs. Calling again retracts the label before. Returns the
        retracted label, or None if the rater has no live label.

        ``among``: only labels with these ids may be retracted (the rater app passes the labels
        given in the same browser session, so undo never reaches older answers).
        """
        rater_id = _check_rater(rater_id)
        lease_seconds = _check_lease(lease_seconds)
        allowed = None if among is None else sorted({_as_id(i, "label id") for i in among})
        if allowed is not None and not allowed:
            return None
        p, lab = pairs_table, labels_table
        with self._write() as conn:
            for _ in range(_MAX_CLAIM_ROUNDS):
                query = (
                    select(lab)
                    .join(p, p.c.id == lab.c.pair_id)
                    .where(
                        p.c.run_id == self._run_id,
                        lab.c.rater_id == rater_id,
                        lab.c.retracted_at.is_(None),
                    )
                )
                if allowed is not None:
                    query = query.where(lab.c.id.in_(allowed[-_IN_CHUNK:]))
                row = conn.execute(query.order_by(lab.c.id.desc()).limit(1)).first()
                if row is None:
                    return None
                # Lock the pair row before retracting: answer() counts a pair's live labels
                # under that lock, so it cannot count this label as live while it is being
                # retracted (PostgreSQL; on SQLite the write transaction excludes all others).
                conn.execute(select(p.c.id).where(p.c.id == row.pair_id).with_for_update())
                now = self._now()
                retracted = conn.execute(
                    update(lab)
                    .where(lab.c.id == row.id, lab.c.retracted_at.is_(None))
                    .values(retracted_at=now)
                )
                if retracted.rowcount != 1:
                    continue  # a concurrent undo took this one; retract the next
                conn.execute(
                    update(p)
                    .where(
                        p.c.id == row.pair_id,
                        p.c.status != WITHDRAWN,  # the run is over for this pair; the label is retracted all the same
                        or_(
                            p.c.status != CLAIMED,
                            p.c.claimed_by == rater_id,
                            p.c.lease_expires_at <= now,
                        ),
                    )
                    .values(
                        status=CLAIMED, claimed_by=rater_id, lease_expires_at=now + lease_seconds
                    )
                )
                label = _label_from_row(row)
                return _make_label(**{**_label_kwargs(label), "retracted_at": now})
        raise StoreError(f"could not undo for {rater_id!r}: too much contention; try again")

    # -- raters and label flags -----------------------------------------------------------------

    def add_rater(self, name: str, skeleton: str, secret_hash: str, *, replace_secret: bool = False) -> bool:
        """Claim ``name`` in this run for the holder of the secret whose hash is ``secret_hash``.

        Returns True if the name is now bound to this hash: it was free (or ``replace_secret``:
        the admin issues a new invite, and the old link stops working). False if someone else
        claimed it first (race-safe: the unique index decides).
        """
        name = _check_rater(name)
        skeleton = _check_rater(skeleton)
        if not isinstance(secret_hash, str) or not 16 <= len(secret_hash) <= 128:
            raise StoreError("secret_hash must be a hex digest (prefloop.store.identity.hash_secret)")
        r = raters_table
        try:
            with self._write() as conn:
                if replace_secret:
                    changed = conn.execute(
                        update(r).where(r.c.run_id == self._run_id, r.c.name == name)
                        .values(secret_hash=secret_hash)
                    )
                    if changed.rowcount == 1:
                        return True
                conn.execute(insert(r).values(
                    run_id=self._run_id, name=name, skeleton=skeleton, secret_hash=secret_hash,
                    created_at=self._now(), onboarded_at=None,
                ))
                return True
        except IntegrityError:
            return False

    def raters(self) -> list[dict[str, Any]]:
        """This run's registered raters, oldest first: ``name``, ``skeleton``, ``secret_hash``,
        ``created_at``, ``onboarded_at`` (None until they passed onboarding)."""
        r = raters_table
        with self._read() as conn:
            rows = conn.execute(
                select(r.c.name, r.c.skeleton, r.c.secret_hash, r.c.created_at, r.c.onboarded_at)
                .where(r.c.run_id == self._run_id).order_by(r.c.id)
            ).all()
        return [dict(row._mapping) for row in rows]

    def rater(self, name: str) -> dict[str, Any] | None:
        """The registered rater ``name`` (see :meth:`raters`), or None."""
        name = _check_rater(name)
        r = raters_table
        with self._read() as conn:
            row = conn.execute(
                select(r.c.name, r.c.skeleton, r.c.secret_hash, r.c.created_at, r.c.onboarded_at)
                .where(r.c.run_id == self._run_id, r.c.name == name)
            ).first()
        return None if row is None else dict(row._mapping)

    def set_onboarded(self, name: str) -> None:
        """Record that rater ``name`` passed onboarding (their labels count from now on)."""
        name = _check_rater(name)
        r = raters_table
        with self._write() as conn:
            conn.execute(
                update(r).where(r.c.run_id == self._run_id, r.c.name == name, r.c.onboarded_at.is_(None))
                .values(onboarded_at=self._now())
            )

    def gold_pairs(self) -> list[tuple[int, Choice]]:
        """This run's gold pairs (known answer) whose two clips can be shown, oldest first, with
        their answers; any status (onboarding shows them to each new rater as practice)."""
        p, c = pairs_table, clips_table

        def has_clip(column: Any) -> Any:
            return exists().where(c.c.segment_id == column, c.c.error.is_(None))

        with self._read() as conn:
            rows = conn.execute(
                select(p.c.id, p.c.gold_choice)
                .where(p.c.run_id == self._run_id, p.c.gold_choice.is_not(None),
                       has_clip(p.c.left_segment_id), has_clip(p.c.right_segment_id))
                .order_by(p.c.id)
            ).all()
        return [(int(row.id), Choice(row.gold_choice)) for row in rows]

    def rater_ids(self) -> list[str]:
        """Every rater name of this run: registered ones and those with labels, sorted."""
        r, p, lab = raters_table, pairs_table, labels_table
        with self._read() as conn:
            names = set(conn.scalars(select(r.c.name).where(r.c.run_id == self._run_id)))
            names.update(conn.scalars(
                select(lab.c.rater_id).distinct().join(p, p.c.id == lab.c.pair_id)
                .where(p.c.run_id == self._run_id)
            ))
        return sorted(names)

    def count_labels_since(self, rater_id: str, since: float) -> int:
        """How many labels (retracted ones too) ``rater_id`` gave in this run at or after ``since``."""
        rater_id = _check_rater(rater_id)
        p, lab = pairs_table, labels_table
        with self._read() as conn:
            return int(conn.scalar(
                select(func.count()).select_from(lab).join(p, p.c.id == lab.c.pair_id)
                .where(p.c.run_id == self._run_id, lab.c.rater_id == rater_id, lab.c.created_at >= float(since))
            ) or 0)

    def flag_label(self, label_id: int, flag: str, value: float | None = None) -> None:
        """Attach ``flag`` (a short name, e.g. ``too_fast``) with an optional number to a label of
        this run. Flags are data for the dashboard and the loss; the label itself is unchanged.
        Flagging twice keeps the first value."""
        label_id = _as_id(label_id, "label_id")
        if not isinstance(flag, str) or not flag or len(flag) > 32 or _bad_text(flag):
            raise StoreError(f"flag must be a short printable name (at most 32 characters), got {_short(flag)}")
        number = None if value is None else float(value)
        if number is not None and not math.isfinite(number):
            raise StoreError(f"flag value must be a finite number or None, got {_short(value)}")
        f, p, lab = label_flags_table, pairs_table, labels_table
        with self._write() as conn:
            known = conn.scalar(
                select(lab.c.id).join(p, p.c.id == lab.c.pair_id)
                .where(lab.c.id == label_id, p.c.run_id == self._run_id)
            )
            if known is None:
                raise StoreError(f"label {label_id} is not a label of run {self._run_name!r}")
            present = conn.scalar(select(f.c.label_id).where(f.c.label_id == label_id, f.c.flag == flag))
            if present is None:
                conn.execute(insert(f).values(label_id=label_id, flag=flag, value=number, created_at=self._now()))

    def label_flags(self) -> dict[int, dict[str, float | None]]:
        """Flags of this run's labels: ``{label_id: {flag: value}}`` (labels without flags left out)."""
        f, p, lab = label_flags_table, pairs_table, labels_table
        with self._read() as conn:
            rows = conn.execute(
                select(f.c.label_id, f.c.flag, f.c.value)
                .join(lab, lab.c.id == f.c.label_id).join(p, p.c.id == lab.c.pair_id)
                .where(p.c.run_id == self._run_id).order_by(f.c.label_id)
            ).all()
        flags: dict[int, dict[str, float | None]] = {}
        for row in rows:
            flags.setdefault(int(row.label_id), {})[row.flag] = row.value
        return flags

    def withdraw_unanswered(self) -> int:
        """Withdraw every pair of this run still waiting for labels (pending or claimed): the
        trainer no longer uses labels. Rows are kept, with any partial labels; ``claim_next``
        never serves them again and ``answer`` refuses them with a :class:`LeaseError`.
        Returns how many pairs were withdrawn."""
        p = pairs_table
        with self._write() as conn:
            result = conn.execute(
                update(p)
                .where(p.c.run_id == self._run_id, p.c.status.in_((PENDING, CLAIMED)))
                .values(status=WITHDRAWN, claimed_by=None, lease_expires_at=None)
            )
        return int(result.rowcount)

    # -- reading --------------------------------------------------------------------------------

    def labeled_pairs(self) -> list[LabeledPair]:
        """Every pair with at least one usable label, ordered by pair id, segments loaded.

        Usable: not retracted and not ``cant_tell``. ``target`` is the mean of the labels'
        ``Choice.target`` (probability that RIGHT is better). ``extra`` holds ``n_labels``,
        ``votes`` (one ``(rater_id, target, flags)`` per label, in the order given; ``flags`` are
        the names :meth:`flag_label` attached, e.g. ``("too_fast",)``), ``gold_choice`` (a Choice or None) and ``score``. A segment shared by several pairs is
        one shared object.
        """
        p, lab = pairs_table, labels_table
        with self._read() as conn:
            rows = conn.execute(
                select(lab.c.id, lab.c.pair_id, lab.c.choice, lab.c.rater_id)
                .join(p, p.c.id == lab.c.pair_id)
                .where(
                    p.c.run_id == self._run_id,
                    lab.c.retracted_at.is_(None),
                    lab.c.choice != Choice.CANT_TELL.value,
                )
                .order_by(lab.c.pair_id, lab.c.id)
            ).all()
            flags: dict[int, list[str]] = {}
            for chunk in _chunks([row.id for row in rows], _IN_CHUNK):
                for flag_row in conn.execute(
                    select(label_flags_table.c.label_id, label_flags_table.c.flag)
                    .where(label_flags_table.c.label_id.in_(chunk))
                    .order_by(label_flags_table.c.label_id, label_flags_table.c.flag)
                ):
                    flags.setdefault(int(flag_row.label_id), []).append(flag_row.flag)
            targets: dict[int, list[float]] = {}
            votes: dict[int, list[tuple[str, float, tuple[str, ...]]]] = {}
            for row in rows:
                target = Choice(row.choice).target
                assert target is not None  # cant_tell is filtered out in SQL
                targets.setdefault(row.pair_id, []).append(target)
                votes.setdefault(row.pair_id, []).append((row.rater_id, target, tuple(flags.get(row.id, ()))))
            pair_rows = []
            for chunk in _chunks(sorted(targets), _IN_CHUNK):
                pair_rows.extend(
                    conn.execute(
                        select(
                            p.c.id,
                            p.c.left_segment_id,
                            p.c.right_segment_id,
                            p.c.gold_choice,
                            p.c.score,
                        ).where(p.c.id.in_(chunk))
                    ).all()
                )
            segment_ids = [r.left_segment_id for r in pair_rows] + [
                r.right_segment_id for r in pair_rows
            ]
            segs = self._load_segments(conn, segment_ids)
        result = []
        for row in sorted(pair_rows, key=lambda r: r.id):
            values = targets[row.id]
            result.append(
                LabeledPair(
                    left=segs[row.left_segment_id],
                    right=segs[row.right_segment_id],
                    target=sum(values) / len(values),
                    pair_id=row.id,
                    extra={
                        "n_labels": len(values),
                        "votes": votes[row.id],
                        "gold_choice": None if row.gold_choice is None else Choice(row.gold_choice),
                        "score": float(row.score),
                    },
                )
            )
        return result

    def labels(self, rater_id: str | None = None, include_retracted: bool = False) -> list[Label]:
        """This run's labels in the order they were given, optionally of one rater only."""
        p, lab = pairs_table, labels_table
        query = select(lab).join(p, p.c.id == lab.c.pair_id).where(p.c.run_id == self._run_id)
        if rater_id is not None:
            query = query.where(lab.c.rater_id == _check_rater(rater_id))
        if not include_retracted:
            query = query.where(lab.c.retracted_at.is_(None))
        with self._read() as conn:
            return [_label_from_row(row) for row in conn.execute(query.order_by(lab.c.id))]

    def counts(self) -> dict[str, int]:
        """Sizes of this run: ``segments``, ``pairs``, pairs by status (``pending``, ``claimed``,
        ``answered``, ``withdrawn``), live ``labels`` and how many of those are ``cant_tell``."""
        p, lab = pairs_table, labels_table
        with self._read() as conn:
            n_segments = conn.scalar(
                select(func.count())
                .select_from(segments_table)
                .where(segments_table.c.run_id == self._run_id)
            )
            by_status = dict(
                conn.execute(
                    select(p.c.status, func.count())
                    .where(p.c.run_id == self._run_id)
                    .group_by(p.c.status)
                )
                .all()
            )
            by_choice = dict(
                conn.execute(
                    select(lab.c.choice, func.count())
                    .join(p, p.c.id == lab.c.pair_id)
                    .where(p.c.run_id == self._run_id, lab.c.retracted_at.is_(None))
                    .group_by(lab.c.choice)
                )
                .all()
            )
        return {
            "segments": int(n_segments or 0),
            "pairs": int(sum(by_status.values())),
            "pending": int(by_status.get(PENDING, 0)),
            "claimed": int(by_status.get(CLAIMED, 0)),
            "answered": int(by_status.get(ANSWERED, 0)),
            "withdrawn": int(by_status.get(WITHDRAWN, 0)),
            "labels": int(sum(by_choice.values())),
            "cant_tell": int(by_choice.get(Choice.CANT_TELL.value, 0)),
        }

    # -- clips ----------------------------------------------------------------------------------

    def put_clip(self, segment_id: int, data: bytes, mime: str) -> bool:
        """Store the encoded clip of one segment of this run; the first clip stored wins.

        Args:
            segment_id: a segment of this run.
            data: the encoded video (non-empty bytes).
            mime: its MIME type, e.g. ``prefloop.envs.clips.CLIP_MIME``.

        Returns:
            True if this call stored it; False if the segment already had a clip (idempotent:
            several workers may render the same segment). A recorded render failure
            (:meth:`put_clip_error`) is replaced by a clip.

        Raises:
            StoreError: empty data, bad MIME type, or a segment that is not in this run.
        """
        segment_id = _as_id(segment_id, "segment_id")
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
            raise StoreError(
                f"clip data for segment {segment_id} must be non-empty bytes, got "
                f"{type(data).__name__} of length {len(data) if hasattr(data, '__len__') else '?'}"
            )
        mime = _check_mime(mime)
        return self._put_clip_row(segment_id, bytes(data), mime, None)

    def put_clip_error(self, segment_id: int, message: str) -> bool:
        """Record that the clip of a segment cannot be rendered (e.g. the replay diverged).

        The segment then no longer needs a clip (:meth:`segments_needing_clips`) and its pairs are
        listed by :meth:`pairs_missing_clips`, so raters are never shown them. Returns False (and
        changes nothing) when the segment already has a clip or a recorded failure.
        """
        segment_id = _as_id(segment_id, "segment_id")
        if not isinstance(message, str) or not message.strip():
            raise StoreError("put_clip_error needs a non-empty message saying what went wrong")
        # The message is an exception's text: keep it storable on every backend.
        message = message[:MAX_CLIP_ERROR_CHARS].replace("\x00", "\ufffd")
        message = message.encode("utf-8", "replace").decode("utf-8")
        return self._put_clip_row(segment_id, b"", "", message)

    def _put_clip_row(self, segment_id: int, data: bytes, mime: str, error: str | None) -> bool:
        c = clips_table
        for attempt in range(2):
            try:
                with self._write() as conn:
                    self._check_segments_exist(conn, {segment_id})
                    existing = conn.execute(
                        select(c.c.error).where(c.c.segment_id == segment_id)
                    ).first()
                    row = {"mime": mime, "data": data, "error": error, "created_at": self._now()}
                    if existing is None:
                        conn.execute(insert(c).values(segment_id=segment_id, **row))
                        return True
                    if existing.error is not None and error is None:
                        changed = conn.execute(
                            update(c)
                            .where(c.c.segment_id == segment_id, c.c.error.is_not(None))
                            .values(**row)
                        )
                        return changed.rowcount == 1
                    return False
            except IntegrityError:
                # Another worker inserted the same segment's clip at the same moment (PostgreSQL);
                # the next attempt sees its row.
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def get_clip(self, segment_id: int) -> tuple[bytes, str] | None:
        """The clip of a segment of this run as ``(data, mime)``; None if it has none (yet) or
        its rendering failed."""
        segment_id = _as_id(segment_id, "segment_id")
        return self.get_clips([segment_id]).get(segment_id)

    def get_clips(self, segment_ids: Iterable[int]) -> dict[int, tuple[bytes, str]]:
        """Clips of several segments of this run in one read: ``{segment_id: (data, mime)}``;
        segments without a usable clip are left out."""
        wanted = sorted({_as_id(i, "segment id") for i in segment_ids})
        c, s = clips_table, segments_table
        found: dict[int, tuple[bytes, str]] = {}
        with self._read() as conn:
            for chunk in _chunks(wanted, _IN_CHUNK):
                rows = conn.execute(
                    select(c.c.segment_id, c.c.data, c.c.mime)
                    .join(s, s.c.id == c.c.segment_id)
                    .where(
                        s.c.run_id == self._run_id,
                        c.c.segment_id.in_(chunk),
                        c.c.error.is_(None),
                    )
                ).all()
                for row in rows:
                    found[int(row.segment_id)] = (bytes(row.data), row.mime)
        return found

    def _waiting_pairs_without_clips(self) -> Any:
        """SELECT of (pair id, left id, right id) of this run's pending or claimed pairs that lack
        a clip row (a clip or a recorded failure) on either side, oldest pair first."""
        p, c = pairs_table, clips_table

        def lacks_row(column: Any) -> Any:
            return ~exists().where(c.c.segment_id == column)

        return (
            select(p.c.id, p.c.left_segment_id, p.c.right_segment_id)
            .where(
                p.c.run_id == self._run_id,
                p.c.status.in_((PENDING, CLAIMED)),
                or_(lacks_row(p.c.left_segment_id), lacks_row(p.c.right_segment_id)),
            )
            .order_by(p.c.id)
        )

    def segments_needing_clips(self, limit: int = 16) -> list[Segment]:
        """Up to ``limit`` segments of this run's pending or claimed pairs that have neither a clip
        nor a recorded failure, those of the oldest pair first (raters get the oldest pairs first).
        """
        limit = _as_int(limit, "limit")
        if limit < 1:
            raise StoreError(f"limit must be >= 1, got {limit}")
        c = clips_table
        with self._read() as conn:
            rows = conn.execute(self._waiting_pairs_without_clips().limit(limit)).all()
            ordered = list(
                dict.fromkeys(
                    seg_id for row in rows for seg_id in (row.left_segment_id, row.right_segment_id)
                )
            )
            have: set[int] = set()
            for chunk in _chunks(ordered, _IN_CHUNK):
                have.update(conn.scalars(select(c.c.segment_id).where(c.c.segment_id.in_(chunk))))
            wanted = [i for i in ordered if i not in have][:limit]
            segs = self._load_segments(conn, wanted)
        return [segs[i] for i in wanted]

    def pairs_missing_clips(self, *, failed_only: bool = False) -> list[int]:
        """Ids of this run's pending or claimed pairs that cannot be shown yet: a side has no
        clip (not rendered yet, or its rendering failed). Pass them to ``claim_next(exclude=...)``.
        With ``failed_only``, just the pairs that never can be shown (a side failed to render).
        """
        p, c = pairs_table, clips_table

        def lacks_clip(column: Any) -> Any:
            if failed_only:
                return exists().where(c.c.segment_id == column, c.c.error.is_not(None))
            return ~exists().where(c.c.segment_id == column, c.c.error.is_(None))

        with self._read() as conn:
            return [
                int(i)
                for i in conn.scalars(
                    select(p.c.id)
                    .where(
                        p.c.run_id == self._run_id,
                        p.c.status.in_((PENDING, CLAIMED)),
                        or_(lacks_clip(p.c.left_segment_id), lacks_clip(p.c.right_segment_id)),
                    )
                    .order_by(p.c.id)
                )
            ]

    def clip_errors(self) -> dict[int, str]:
        """Segments of this run whose clip could not be rendered: ``{segment_id: message}``."""
        c, s = clips_table, segments_table
        with self._read() as conn:
            rows = conn.execute(
                select(c.c.segment_id, c.c.error)
                .join(s, s.c.id == c.c.segment_id)
                .where(s.c.run_id == self._run_id, c.c.error.is_not(None))
                .order_by(c.c.segment_id)
            ).all()
        return {int(row.segment_id): row.error for row in rows}

    # -- per-run key/value ----------------------------------------------------------------------

    def set_meta(self, key: str, value: str) -> None:
        """Store ``value`` under ``key`` for this run (replacing an earlier value)."""
        key = _check_meta_key(key)
        if not isinstance(value, str):
            raise StoreError(
                f"meta value for {key!r} must be a str, got {type(value).__name__}; "
                "serialise it first (e.g. json.dumps)"
            )
        if "\x00" in value or any(unicodedata.category(ch) == "Cs" for ch in value):
            raise StoreError(
                f"meta value for {key!r} contains a NUL character or an unpaired surrogate, which "
                "PostgreSQL cannot store; remove it (json.dumps escapes both)"
            )
        m = run_meta_table
        for attempt in range(2):
            try:
                with self._write() as conn:
                    changed = conn.execute(
                        update(m)
                        .where(m.c.run_id == self._run_id, m.c.key == key)
                        .values(value=value)
                    )
                    if changed.rowcount == 0:
                        conn.execute(insert(m).values(run_id=self._run_id, key=key, value=value))
                return
            except IntegrityError:
                if attempt == 1:  # a concurrent first insert of the same key; update it now
                    raise

    def get_meta(self, key: str) -> str | None:
        """The value stored under ``key`` for this run, or None."""
        key = _check_meta_key(key)
        m = run_meta_table
        with self._read() as conn:
            return conn.scalar(
                select(m.c.value).where(m.c.run_id == self._run_id, m.c.key == key)
            )


# --------------------------------------------------------------------------------------------
# SQLite plumbing


def _allow_withdrawn_status(conn: Connection) -> None:
    """Let a store created before the ``withdrawn`` status existed hold it: widen the pairs'
    status CHECK constraint in place (every existing row still satisfies it; nothing is copied)."""
    if conn.dialect.name == "sqlite":
        sql = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type='table' AND name='pairs'").scalar()
        old = "'answered')"
        if not sql or f"'{WITHDRAWN}'" in sql or old not in sql:
            return
        # SQLite's documented way to loosen a CHECK constraint without rebuilding the table.
        version = conn.exec_driver_sql("PRAGMA schema_version").scalar()
        conn.exec_driver_sql("PRAGMA writable_schema=ON")
        try:
            conn.exec_driver_sql(
                "UPDATE sqlite_master SET sql=? WHERE type='table' AND name='pairs'",
                (sql.replace(old, f"'answered', '{WITHDRAWN}')", 1),),
            )
            conn.exec_driver_sql(f"PRAGMA schema_version={int(version) + 1}")
        finally:
            conn.exec_driver_sql("PRAGMA writable_schema=OFF")
    elif conn.dialect.name == "postgresql":
        definition = conn.exec_driver_sql(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conname = 'ck_pairs_status' AND conrelid = to_regclass('pairs')"
        ).scalar()
        if definition is None or f"'{WITHDRAWN}'" in definition:
            return
        conn.exec_driver_sql(
            "ALTER TABLE pairs DROP CONSTRAINT ck_pairs_status, "
            f"ADD CONSTRAINT ck_pairs_status CHECK ({_in_check('status', _STATUSES)})"
        )


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy emits BEGIN itself (see _on_sqlite_begin); the driver's own implicit BEGIN
    # would start SELECTs outside any transaction.
    dbapi_connection.isolation_level = None
    with closing(dbapi_connection.cursor()) as cursor:
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")


def _on_sqlite_begin(conn: Connection) -> None:
    # A writer takes the write lock at BEGIN, waiting up to busy_timeout for it. A deferred
    # transaction that reads first and writes later could instead fail at once with
    # "database is locked" when another process committed in between.
    if conn.get_execution_options().get(_WRITE_OPTION):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")



def _parse_url(url: str) -> URL:
    """The URL to connect with (password from the environment added, see :func:`connect_url`)."""
    try:
        return make_url(connect_url(url))
    except CredentialsError as exc:
        raise StoreError(str(exc)) from None
    except (ArgumentError, ValueError, TypeError):
        # Neither the URL nor the parser's message (which quotes it) is echoed: it may hold a password.
        raise StoreError(
            "cannot parse the database URL; use sqlite_url(path) for a file "
            "or 'postgresql+psycopg://user@host/dbname' (password in $PREFLOOP_DB_PASSWORD)"
        ) from None


def wait_limit_args(url: URL) -> dict[str, Any]:
    """Connection arguments that bound how long a statement waits for another process's lock on
    PostgreSQL (``lock_timeout``, as SQLite's ``busy_timeout``), so a table locked elsewhere is
    reported as locked instead of hanging; a URL that sets its own ``options`` keeps them."""
    if url.get_backend_name() != "postgresql" or "options" in url.query:
        return {}
    return {"options": f"-c lock_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}"}


def check_store_url(url: str) -> None:
    """Check that ``url`` can hold a prefloop store -- reachable, and empty or a prefloop store --
    without writing anything (before a run has validated all its input).

    Raises:
        StoreError (or a subclass): the problem in one line, as :class:`PreferenceStore` says it.
    """
    parsed = _parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        _preflight_sqlite_file(parsed.database)
        return
    try:
        engine = create_engine(parsed, poolclass=NullPool, connect_args=wait_limit_args(parsed))
    except (ArgumentError, ImportError) as exc:
        raise StoreError(
            f"cannot use database URL {parsed.render_as_string(hide_password=True)} ({exc}); prefloop "
            "stores work on SQLite (sqlite:///path) and PostgreSQL (postgresql+psycopg://...)"
        ) from None
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
    except DBAPIError as exc:
        raise store_open_error(exc, parsed.render_as_string(hide_password=True), None) from exc
    finally:
        engine.dispose()
    if tables and META_TABLE not in tables:
        raise NotAPreferenceStoreError(
            f"database {parsed.render_as_string(hide_password=True)} already holds tables "
            f"({', '.join(sorted(tables)[:5])}) but no '{META_TABLE}' table, so it belongs to another "
            "application; nothing was changed. Point prefloop at a new file or an empty database."
        )


# SQLite result codes (the low byte of an extended code) and PostgreSQL SQLSTATEs of the problems
# that are not damage: another process holding a lock, and a store that may not be written.
_SQLITE_BUSY_CODES = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED
_SQLITE_READONLY = 8
_SQLITE_CANTOPEN = 14
_PG_BUSY_STATES = {"55P03", "57014"}  # lock_not_available, query_canceled (lock/statement timeout)
_PG_READONLY_STATES = {"25006", "42501"}  # read_only_sql_transaction, insufficient_privilege


def store_problem_kind(error: BaseException | None, sqlite_path: str | None = None) -> str:
    """``"busy"`` (locked by another process), ``"read_only"`` (may not be written), or
    ``"other"`` (damage, a wrong URL, a server down) for a database driver's exception."""
    code = getattr(error, "sqlite_errorcode", None)
    text = str(error).lower()
    if isinstance(code, int):
        base = code & 0xFF
        if base in _SQLITE_BUSY_CODES:
            return "busy"
        if base == _SQLITE_READONLY:
            return "read_only"
        if base == _SQLITE_CANTOPEN and sqlite_path and _sqlite_not_writable(Path(sqlite_path)):
            return "read_only"
        return "other"
    state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    if state in _PG_BUSY_STATES or "database is locked" in text:
        return "busy"
    if state in _PG_READONLY_STATES or "readonly database" in text or "read-only" in text:
        return "read_only"
    return "other"


def _sqlite_not_writable(path: Path) -> bool:
    folder = path.parent
    return path.is_file() and (not os.access(folder, os.W_OK) or not os.access(path, os.W_OK))


def store_open_error(exc: DBAPIError, shown_url: str, sqlite_path: str | None) -> StoreError:
    """The one-line error for a store that failed to open (or to be read): locked, read-only,
    damaged or unreachable, each with its own advice."""
    reason = (str(exc.orig).strip().splitlines() or ["unknown error"])[0][:300]
    where = sqlite_path or shown_url
    kind = store_problem_kind(exc.orig, sqlite_path)
    if kind == "busy":
        return _busy_error(where, reason)
    if kind == "read_only":
        return read_only_error(where, reason)
    if sqlite_path:
        return StoreError(
            f"cannot open the preference store {sqlite_path}: {reason}. The file is damaged: "
            "`prefloop doctor` shows what is wrong; restore it from a backup"
        )
    return StoreError(
        f"cannot open the preference store {shown_url}: {reason}. Check that the server runs and the "
        f"URL (host, port, user, database) is right; a password goes in ${ENV_DB_PASSWORD} or "
        "--db-password-file, never into files"
    )


def read_only_error(where: str, reason: str) -> StoreReadOnlyError:
    """The one line for a store that may not be written (a read-only mount, file permissions,
    a read-only database or user): not damage, and reading it works."""
    return StoreReadOnlyError(
        f"the preference store {where} cannot be written ({reason}): a read-only file system, or the "
        "file, its folder or the database user may not write. It is not damaged: `prefloop export` and "
        "`prefloop doctor` read it as it is; to train or rate, copy the run folder somewhere writable "
        "(or grant write access)"
    )


def _busy_error(where: str, reason: str) -> StoreBusyError:
    return StoreBusyError(
        f"the preference store {where} is locked by another process ({reason}, still after "
        f"{SQLITE_BUSY_TIMEOUT_S:.0f} s); it is not damaged. Wait until that process (a trainer, an "
        "import, a sqlite3 shell in a transaction) is done, or stop it, then run this again"
    )


def open_sqlite_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to the SQLite file at ``path`` that works on a read-only mount.

    ``mode=ro`` first: it sees a live writer's committed rows. A WAL database whose folder cannot
    be written has no ``-shm`` file SQLite could create, so there it is opened ``immutable`` --
    safe because nothing can write that file either; a non-empty ``-wal`` file left there would be
    ignored by ``immutable``, so that case is refused instead of exporting stale data.

    Raises:
        sqlite3.Error: as SQLite reports it (classify with :func:`store_problem_kind`);
        StoreReadOnlyError: the read-only folder holds uncheckpointed changes (``-wal``).
    """
    uri = path.resolve().as_uri()
    timeout = SQLITE_BUSY_TIMEOUT_S
    raw = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=timeout, check_same_thread=False)
    try:
        raw.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return raw
    except sqlite3.OperationalError as exc:
        raw.close()
        if store_problem_kind(exc, str(path)) != "read_only":
            raise
    wal = path.with_name(path.name + "-wal")
    if wal.is_file() and wal.stat().st_size > 0:
        raise StoreReadOnlyError(
            f"{path} has changes not yet written into it ({wal.name}) and its folder is read-only, so "
            "they cannot be read safely; copy the run folder somewhere writable and run this again there"
        )
    return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, timeout=timeout, check_same_thread=False)


def _on_sqlite_connect_read_only(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # BEGIN comes from _on_sqlite_begin, as for writers
    with closing(dbapi_connection.cursor()) as cursor:
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA query_only = 1")

def _preflight_sqlite_file(database: str | None, must_exist: bool = False) -> None:
    """Refuse a file that is not a prefloop SQLite store before any pragma can modify it.

    Opening an existing file read-only and only looking keeps a foreign or corrupt file
    byte-for-byte unchanged (the WAL pragma alone would rewrite a foreign database's header).
    ``must_exist``: a missing file is an error too (readers never create one).
    """
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    if "\x00" in database:
        raise StoreError("the database file name contains a NUL character; pass a real file path")
    if must_exist and not Path(database).is_file():
        raise NoSuchStoreError(f"there is no preference store at {database}; check the path (nothing was created)")
    try:
        _check_sqlite_file(Path(database))
    except OSError as exc:  # unreadable file or folder: say which, without a traceback
        raise StoreError(
            f"cannot read the database file {database}: {exc.strerror or exc}; check the path "
            "and its permissions"
        ) from None


def _check_sqlite_file(path: Path) -> None:
    if not path.parent.is_dir():
        raise StoreError(
            f"cannot create the preference store {path}: folder {path.parent} does not exist; "
            "create the run folder first"
        )
    if not path.exists():
        return
    if not path.is_file():
        raise NotAPreferenceStoreError(f"{path} is not a file; pass the path of a database file")
    if path.stat().st_size == 0:
        return
    # Only SQLite itself opens a database this process may already use: closing any other handle
    # on the file (a plain open() to read the header) drops all of this process's POSIX locks on
    # it, and another process's closing connection then deletes the WAL our writers still append
    # to -- committed labels lost. So the header is read directly only once SQLite refused the file.
    try:
        with closing(open_sqlite_read_only(path)) as raw:
            tables = {
                name
                for (name,) in raw.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                ).fetchall()
            }
    except sqlite3.DatabaseError as exc:
        kind = store_problem_kind(exc, str(path))
        if kind == "busy":
            raise _busy_error(str(path), str(exc)) from exc
        with open(path, "rb") as handle:
            header = handle.read(len(_SQLITE_HEADER))
        if header != _SQLITE_HEADER:
            raise NotAPreferenceStoreError(
                f"{path} is not a SQLite database (wrong file header), so it is not a prefloop "
                "preference store; it was left untouched. Choose another file name or move it away."
            ) from None
        raise NotAPreferenceStoreError(
            f"{path} is a corrupt SQLite file ({exc}); it was left untouched. Restore it from a "
            "backup or choose another file name."
        ) from exc
    foreign = {t for t in tables if not t.startswith("sqlite_")}
    if foreign and META_TABLE not in foreign:
        raise NotAPreferenceStoreError(
            f"{path} is a SQLite database of another application (tables: "
            f"{', '.join(sorted(foreign)[:5])}; no '{META_TABLE}' table); it was left untouched. "
            "Choose another file name for the preference store."
        )


# --------------------------------------------------------------------------------------------
# Validation and row conversion


def is_retryable_conflict(exc: BaseException) -> bool:
    """True for a database error that only asks to run the transaction again: a PostgreSQL
    deadlock victim (SQLSTATE 40P01) or serialization failure (40001). psycopg 3 names the code
    ``sqlstate``, psycopg2 ``pgcode``."""
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code in _RETRYABLE_SQLSTATES


def _short(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages about untrusted input (a
    megabyte string or a 10**5000 integer must not end up in a message or a log line whole)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 -- a hostile __repr__, or an int too long to print
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bad_text(text: str) -> str | None:
    """Why ``text`` cannot be stored as is on every backend, or None: PostgreSQL refuses NUL
    characters, no backend can encode an unpaired surrogate, and other control characters in a
    name only hide what it really says."""
    for ch in text:
        category = unicodedata.category(ch)
        if category == "Cs":
            return "an unpaired surrogate (not valid Unicode text)"
        if category == "Cc":
            return f"the control character U+{ord(ch):04X}"
    return None


def _chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _as_int(value: object, what: str, low: int = _INT64_MIN, high: int = _INT64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise StoreError(f"{what} must be an integer, got {_short(value)}")
    number = int(value)
    if not low <= number <= high:
        raise StoreError(f"{what} must be an integer from {low} to {high}, got {_short(number)}")
    return number


def _as_id(value: object, what: str) -> int:
    """An id (or count) of an INTEGER column: PostgreSQL's are 32-bit, and a larger number in a
    query is an error there rather than "no such row", so it is refused here on every backend."""
    return _as_int(value, what, _INT32_MIN, _INT32_MAX)


def _as_choice(value: object, what: str) -> Choice:
    try:
        return Choice(value)
    except ValueError:
        raise StoreError(
            f"{what} must be one of {[c.value for c in Choice]} (a prefloop.types.Choice), "
            f"got {_short(value)}"
        ) from None


def _check_rater(rater_id: object) -> str:
    if not isinstance(rater_id, str) or not rater_id.strip():
        raise StoreError(f"rater_id must be a non-empty string, got {_short(rater_id)}")
    if len(rater_id) > MAX_RATER_ID_CHARS:
        raise StoreError(
            f"rater_id is {len(rater_id)} characters long; use at most {MAX_RATER_ID_CHARS}"
        )
    problem = _bad_text(rater_id)
    if problem:
        raise StoreError(f"rater_id {_short(rater_id)} contains {problem}; use printable text")
    return rater_id


def _check_lease(lease_seconds: object) -> float:
    try:
        value = float(lease_seconds)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise StoreError(f"lease_seconds must be a positive number of seconds, got {_short(lease_seconds)}")
    return value


def _check_response_time(response_time_s: object) -> float:
    try:
        value = float(response_time_s)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(response_time_s, bool) or not (math.isfinite(value) and value >= 0):
        raise StoreError(
            f"response_time_s must be a finite number of seconds >= 0, got {_short(response_time_s)}"
        )
    return value


def _check_mime(mime: object) -> str:
    if not isinstance(mime, str) or not mime.strip() or len(mime) > MAX_MIME_CHARS:
        raise StoreError(
            f"clip MIME type must be a non-empty string of at most {MAX_MIME_CHARS} characters "
            f"(e.g. 'video/webm'), got {mime!r}"
        )
    return mime


def _check_meta_key(key: object) -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_META_KEY_CHARS or _bad_text(key):
        raise StoreError(
            f"meta key must be a non-empty string of at most {MAX_META_KEY_CHARS} printable "
            f"characters, got {_short(key)}"
        )
    return key


def _validate_segment(seg: Segment, where: str) -> None:
    """Check what the store relies on, so a bad segment fails here and not at training time."""
    if not isinstance(seg, Segment):
        raise StoreError(f"{where} is {type(seg).__name__}, not a prefloop.types.Segment")
    for name in ("obs", "actions", "true_rewards", "episode_actions"):
        array = getattr(seg, name)
        if not isinstance(array, np.ndarray):
            raise StoreError(
                f"{where}.{name} is {type(array).__name__}; it must be a numpy array"
            )
        if array.dtype.hasobject:
            raise StoreError(
                f"{where}.{name} has dtype object; use a numeric dtype (float32, int64)"
            )
    if seg.true_rewards.ndim != 1 or seg.true_rewards.shape[0] < 1:
        raise StoreError(
            f"{where}.true_rewards must have shape (L,) with L >= 1, got {seg.true_rewards.shape}"
        )
    length = seg.length
    for name in ("obs", "actions"):
        array = getattr(seg, name)
        if array.ndim < 1 or array.shape[0] != length:
            raise StoreError(
                f"{where}.{name} has shape {array.shape}; its first dimension must be the "
                f"segment length {length} (the length of true_rewards)"
            )
    n_valid = _as_int(seg.n_valid, f"{where}.n_valid")
    start_step = _as_int(seg.start_step, f"{where}.start_step")
    env_step = _as_int(seg.env_step, f"{where}.env_step")
    seed = _as_int(seg.episode_seed, f"{where}.episode_seed")
    if not 1 <= n_valid <= length:
        raise StoreError(f"{where}.n_valid is {n_valid}; it must be between 1 and {length}")
    if n_valid < length and not bool(seg.terminated):
        raise StoreError(
            f"{where}.n_valid is {n_valid} < length {length} but terminated is False; only a "
            "terminated episode may be padded with absorbing steps"
        )
    if start_step < 0 or env_step < 0:
        raise StoreError(f"{where}: start_step and env_step must be >= 0")
    if not _INT64_MIN <= seed <= _INT64_MAX:
        raise StoreError(f"{where}.episode_seed {seed} does not fit in 64 bits; use a smaller seed")
    expected = (start_step + n_valid, *seg.actions.shape[1:])
    if seg.episode_actions.shape != expected:
        raise StoreError(
            f"{where}.episode_actions has shape {seg.episode_actions.shape}, expected {expected}: "
            "every action from the episode's reset to the segment's last real step"
        )


def _segment_from_row(row: Any) -> Segment:
    return Segment(
        obs=array_from_bytes(row.obs),
        actions=array_from_bytes(row.actions),
        true_rewards=array_from_bytes(row.true_rewards),
        n_valid=int(row.n_valid),
        terminated=bool(row.terminated),
        episode_seed=int(row.episode_seed),
        start_step=int(row.start_step),
        episode_actions=array_from_bytes(row.episode_actions),
        env_step=int(row.env_step),
        id=int(row.id),
    )


def _make_label(*, retracted_at: float | None, **kwargs: Any) -> Label:
    # Label carries retracted_at only if the shared type has that field.
    if _LABEL_HAS_RETRACTED_AT:
        kwargs["retracted_at"] = retracted_at
    return Label(**kwargs)


def _label_kwargs(label: Label) -> dict[str, Any]:
    kwargs = {f.name: getattr(label, f.name) for f in fields(Label)}
    kwargs.pop("retracted_at", None)
    return kwargs


def _label_from_row(row: Any) -> Label:
    return _make_label(
        id=int(row.id),
        pair_id=int(row.pair_id),
        rater_id=row.rater_id,
        choice=Choice(row.choice),
        response_time_s=float(row.response_time_s),
        created_at=float(row.created_at),
        retracted_at=None if row.retracted_at is None else float(row.retracted_at),
    )
