"""What every part of the store shares: opening the database (checks, schema, the run), its
transactions, the clock and closing.

:class:`StoreBase` holds one run's handle on one database; the per-concern mixins (segments,
queue, labels, raters, clips, run meta) build on it, and :class:`prefloop.store.PreferenceStore`
puts them together. Its arguments are documented there.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from prefloop.store.checks import bad_text, short
from prefloop.store.engine import (
    WRITE_OPTION,
    create_store_engine,
    parse_url,
    preflight_sqlite_file,
    read_only_error,
    sqlite_not_writable,
    store_open_error,
)
from prefloop.store.errors import NoSuchRunError, StoreError
from prefloop.store.schema import check_or_create_schema, runs_table
from prefloop.types import Segment

_Store = TypeVar("_Store", bound="StoreBase")  # with-blocks keep the subclass (PreferenceStore)


class StoreBase:
    """One run's connection to a store database; see :class:`prefloop.store.PreferenceStore`."""

    def __init__(
        self,
        url: str,
        run_name: str = "default",
        *,
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
        create_run: bool = True,
    ) -> None:
        if (
            not isinstance(run_name, str)
            or not run_name.strip()
            or len(run_name) > 200
            or bad_text(run_name)
        ):
            raise StoreError(
                "run_name must be a non-empty string of at most 200 printable characters, got "
                f"{short(run_name)}"
            )
        parsed = parse_url(url)
        self._clock = clock
        self._run_name = run_name
        self._url = parsed
        self._read_only = read_only
        self._is_sqlite = parsed.get_backend_name() == "sqlite"
        # A run is made only by what starts one (train, run, import); every other command opens
        # an existing one, so a misspelt run name (or store) is refused instead of made empty.
        existing_only = read_only or not create_run
        if self._is_sqlite:
            preflight_sqlite_file(parsed.database, must_exist=existing_only)
            if not read_only:
                self._check_writable()

        self._engine: Engine = create_store_engine(parsed, read_only=read_only)
        # Same pool and events; the option only tells SQLite to take the write lock up front.
        self._write_engine = self._engine.execution_options(**{WRITE_OPTION: True})
        self._closed = False
        self._tables: set[str] = set()  # filled when the schema is checked, below
        # Decoded segments, shared by every part that loads them (see segments.py).
        self._segment_cache: OrderedDict[int, Segment] = OrderedDict()
        self._cache_lock = threading.Lock()
        try:
            if existing_only:
                with self._read() as conn:
                    self._check_or_create_schema(conn, create=False)
                self._run_id = self._find_run(run_name)
            if not read_only:
                self._ensure_schema()  # a writer also adds the tables added to version 1 since
                if create_run:
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

    def __enter__(self: _Store) -> _Store:
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
            if database not in ("", ":memory:") and not database.startswith("file:") and sqlite_not_writable(Path(database)):
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
        # The tables there are: a reader of a store older than a table added to schema version 1
        # (e.g. rater_checks) finds none of its rows rather than an error.
        self._tables = check_or_create_schema(conn, self.url, create)

    def _find_run(self, name: str) -> int:
        with self._read() as conn:
            run_id = conn.scalar(select(runs_table.c.id).where(runs_table.c.name == name))
            if run_id is None:
                names = list(conn.scalars(select(runs_table.c.name).order_by(runs_table.c.id).limit(10)))
        if run_id is None:
            where = self._url.database if self._is_sqlite else self.url
            raise NoSuchRunError(
                f"no run {short(name)} in {where}; it holds: {', '.join(map(short, names)) or 'no runs'}. "
                "Check --run-name (or that config.json names the run the store holds); only train, run and import make a run"
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
