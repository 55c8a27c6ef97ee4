"""Database URLs, connecting, what is specific to SQLite and PostgreSQL, and which problem a driver
error means.

SQLite specifics (applied only when the URL is SQLite, through engine events): WAL journal,
``synchronous=FULL``, ``busy_timeout``, ``foreign_keys=ON``, and SQLAlchemy emits ``BEGIN`` itself
(``BEGIN IMMEDIATE`` for writing transactions) so a read-then-write transaction cannot fail halfway
with "database is locked" but waits for the writer ahead of it instead. A file is looked at before
any pragma may touch it (:func:`preflight_sqlite_file`): a foreign or corrupt file is left
byte-for-byte unchanged. On PostgreSQL ``lock_timeout`` bounds waits as ``busy_timeout`` does.

Errors are sorted into three kinds (:func:`store_problem_kind`): locked by another process,
may not be written, and everything else (damage, a wrong URL, a server down), each with its own
one-line advice (:func:`store_open_error`).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.pool import NullPool

from prefloop.credentials import PASSWORD_SOURCES, CredentialsError, connect_url
from prefloop.store.errors import (
    NoSuchStoreError,
    NotAPreferenceStoreError,
    StoreBusyError,
    StoreError,
    StoreReadOnlyError,
)
from prefloop.store.schema import META_TABLE

# How long a statement waits for another process's lock: SQLite's busy_timeout, PostgreSQL's
# lock_timeout. Read at connect time (tests shorten it).
SQLITE_BUSY_TIMEOUT_S = 30.0

WRITE_OPTION = "prefloop_write"  # execution option of a writing connection (BEGIN IMMEDIATE)
IN_CHUNK = 500  # ids per IN (...) list; far below SQLite's bound-parameter limit
_SQLITE_HEADER = b"SQLite format 3\x00"
# PostgreSQL aborts one of two transactions that lock rows in opposite orders (deadlock_detected)
# or that cannot be serialised; the aborted one only has to run again. SQLite never reports these.
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


def sqlite_url(path: str | os.PathLike[str]) -> str:
    """The SQLAlchemy URL of the SQLite file at ``path`` (made absolute; any characters allowed)."""
    absolute = Path(path).expanduser().resolve()
    return URL.create("sqlite", database=str(absolute)).render_as_string(hide_password=False)


def parse_url(url: str) -> URL:
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


def create_store_engine(url: URL, *, read_only: bool) -> Engine:
    """The engine of the store at ``url``: on SQLite with the pragmas and ``BEGIN`` handling above
    (a reader through :func:`open_sqlite_read_only`), on PostgreSQL with :func:`wait_limit_args`.
    A connection whose execution options set :data:`WRITE_OPTION` begins a writing transaction.

    Raises:
        StoreError: no driver for the URL's database.
    """
    is_sqlite = url.get_backend_name() == "sqlite"
    try:
        if is_sqlite and read_only and url.database not in (None, "", ":memory:"):
            path = Path(str(url.database))
            engine = create_engine(
                "sqlite://", creator=lambda: open_sqlite_read_only(path), poolclass=NullPool
            )
        else:
            engine = create_engine(url, connect_args=wait_limit_args(url))
    except (ArgumentError, ImportError) as exc:
        raise unusable_url_error(url, exc) from None
    if is_sqlite:
        event.listen(engine, "connect", _on_sqlite_connect_read_only if read_only else _on_sqlite_connect)
        event.listen(engine, "begin", _on_sqlite_begin)
    return engine


def unusable_url_error(url: URL, exc: BaseException) -> StoreError:
    """The one line for a URL SQLAlchemy cannot use (an unknown dialect, a driver not installed)."""
    return StoreError(
        f"cannot use database URL {url.render_as_string(hide_password=True)} ({exc}); prefloop "
        "stores work on SQLite (sqlite:///path) and PostgreSQL (postgresql+psycopg://...)"
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
    if conn.get_execution_options().get(WRITE_OPTION):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


def _on_sqlite_connect_read_only(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # BEGIN comes from _on_sqlite_begin, as for writers
    with closing(dbapi_connection.cursor()) as cursor:
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA query_only = 1")


def check_store_url(url: str) -> None:
    """Check that ``url`` can hold a prefloop store -- reachable, and empty or a prefloop store --
    without writing anything (before a run has validated all its input).

    Raises:
        StoreError (or a subclass): the problem in one line, as :class:`PreferenceStore` says it.
    """
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        preflight_sqlite_file(parsed.database)
        return
    try:
        engine = create_engine(parsed, poolclass=NullPool, connect_args=wait_limit_args(parsed))
    except (ArgumentError, ImportError) as exc:
        raise unusable_url_error(parsed, exc) from None
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



def preflight_sqlite_file(database: str | None, must_exist: bool = False) -> None:
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
            raise busy_error(str(path), str(exc)) from exc
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
        if base == _SQLITE_CANTOPEN and sqlite_path and sqlite_not_writable(Path(sqlite_path)):
            return "read_only"
        return "other"
    state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    if state in _PG_BUSY_STATES or "database is locked" in text:
        return "busy"
    if state in _PG_READONLY_STATES or "readonly database" in text or "read-only" in text:
        return "read_only"
    return "other"


def sqlite_not_writable(path: Path) -> bool:
    folder = path.parent
    return path.is_file() and (not os.access(folder, os.W_OK) or not os.access(path, os.W_OK))


def store_open_error(exc: DBAPIError, shown_url: str, sqlite_path: str | None) -> StoreError:
    """The one-line error for a store that failed to open (or to be read): locked, read-only,
    damaged or unreachable, each with its own advice."""
    reason = (str(exc.orig).strip().splitlines() or ["unknown error"])[0][:300]
    where = sqlite_path or shown_url
    kind = store_problem_kind(exc.orig, sqlite_path)
    if kind == "busy":
        return busy_error(where, reason)
    if kind == "read_only":
        return read_only_error(where, reason)
    if sqlite_path:
        return StoreError(
            f"cannot open the preference store {sqlite_path}: {reason}. The file is damaged: "
            "`prefloop doctor` shows what is wrong; restore it from a backup"
        )
    return StoreError(
        f"cannot open the preference store {shown_url}: {reason}. Check that the server runs and the "
        f"URL (host, port, user, database) is right; the password comes from {PASSWORD_SOURCES}"
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


def busy_error(where: str, reason: str) -> StoreBusyError:
    return StoreBusyError(
        f"the preference store {where} is locked by another process ({reason}, still after "
        f"{SQLITE_BUSY_TIMEOUT_S:.0f} s); it is not damaged. Wait until that process (a trainer, an "
        "import, a sqlite3 shell in a transaction) is done, or stop it, then run this again"
    )



def is_retryable_conflict(exc: BaseException) -> bool:
    """True for a database error that only asks to run the transaction again: a PostgreSQL
    deadlock victim (SQLSTATE 40P01) or serialization failure (40001). psycopg 3 names the code
    ``sqlstate``, psycopg2 ``pgcode``."""
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code in _RETRYABLE_SQLSTATES



def chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
