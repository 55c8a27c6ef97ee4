"""The store's tables and schema version, and the check that a database holds this schema.

Portable types only: BLOB/BYTEA for arrays, double precision for unix-second times, plain strings
with CHECK constraints for enums (no PostgreSQL ENUM types to migrate). The ``clips``, ``raters``
and ``label_flags`` tables were added after schema version 1 without changing it: opening an older
version-1 store creates them.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    insert,
    inspect,
    select,
)
from sqlalchemy.engine import Connection

from prefloop.store.errors import NotAPreferenceStoreError, StoreError
from prefloop.types import Choice

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

# Checks (prefloop.store.rater_checks): a pair asked of a rater only to measure them -- a gold pair
# (``kind`` gold: is the rater right?) or a pair they labelled before, shown with left and right
# swapped (``kind`` repeat: do they answer the same?). Not a label: it never trains the reward model
# and never counts toward the label budget. ``expected`` is the gold answer or the rater's earlier
# one; ``choice`` (in the pair's own orientation) is NULL while the check is on the rater's screen.
CHECK_KINDS = ("gold", "repeat")
rater_checks_table = Table(
    "rater_checks",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
    Column("pair_id", Integer, ForeignKey("pairs.id"), nullable=False),
    Column("rater_id", String(MAX_RATER_ID_CHARS), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("swapped", Boolean, nullable=False),
    Column("expected", String(16), nullable=False),
    Column("served_at", Double, nullable=False),
    Column("choice", String(16), nullable=True),
    Column("response_time_s", Double, nullable=True),
    Column("answered_at", Double, nullable=True),
    CheckConstraint(_in_check("kind", CHECK_KINDS), name="ck_rater_checks_kind"),
    CheckConstraint(_in_check("expected", _CHOICES), name="ck_rater_checks_expected"),
    CheckConstraint("choice IS NULL OR " + _in_check("choice", _CHOICES), name="ck_rater_checks_choice"),
)
Index("uq_rater_checks", rater_checks_table.c.pair_id, rater_checks_table.c.rater_id, rater_checks_table.c.kind, unique=True)
Index("ix_rater_checks_rater", rater_checks_table.c.run_id, rater_checks_table.c.rater_id)

# Tables added to schema version 1 later; a version-1 store without them gets them on open.
_ADDED_TABLES = (clips_table, raters_table, label_flags_table, rater_checks_table)


def check_or_create_schema(conn: Connection, shown_url: str, create: bool = True) -> set[str]:
    """Create the schema in an empty database, or check that it holds a prefloop store of this
    schema version (``create``: adding the tables added to version 1 since; a reader never
    changes anything). ``shown_url``: the URL as messages show it (no password). Returns the
    names of the tables the database now has (a reader of an older store may lack added ones)."""
    tables = set(inspect(conn).get_table_names())
    if not tables and not create:
        raise StoreError(f"database {shown_url} is empty: it holds no prefloop store yet; nothing was changed")
    if not tables:
        metadata.create_all(conn)
        conn.execute(
            insert(meta_table),
            [
                {"key": "app", "value": APP_MARKER},
                {"key": "schema_version", "value": str(SCHEMA_VERSION)},
            ],
        )
        return {t.name for t in metadata.sorted_tables}
    if META_TABLE not in tables:
        raise NotAPreferenceStoreError(
            f"database {shown_url} already holds tables ({', '.join(sorted(tables)[:5])}) but "
            f"no '{META_TABLE}' table, so it belongs to another application; nothing was "
            "changed. Point prefloop at a new file or an empty database."
        )
    meta = dict(conn.execute(select(meta_table.c.key, meta_table.c.value)).all())
    if meta.get("app") != APP_MARKER:
        raise NotAPreferenceStoreError(
            f"database {shown_url} has a '{META_TABLE}' table without app={APP_MARKER!r}; "
            "it is not a prefloop store. Use a new file or an empty database."
        )
    if meta.get("schema_version") != str(SCHEMA_VERSION):
        raise StoreError(
            f"database {shown_url} has preference-store schema version "
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
            f"database {shown_url} is a damaged prefloop store: tables {missing} are missing; "
            "restore it from a backup or start a new store"
        )
    return tables


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
