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

Clips (the encoded videos raters watch) live in the store too, one per segment, so every app
instance and worker sees the same ones on SQLite and PostgreSQL alike.

Not safe to share across ``fork``: open a new :class:`PreferenceStore` in each process.

How the package reads, top to bottom:

======================  ========================================================================
``schema.py``           the tables, the schema version and the check that a database holds them
``engine.py``           URLs, connecting, SQLite and PostgreSQL specifics, what a driver error means
``errors.py``           the exceptions
``checks.py``           checks on what callers pass in (ids, rater names, segments, ...)
``base.py``             opening a store: the run, transactions, the clock
``segments.py``         saving and loading segments
``queue.py``            pairs, leases, withdrawals, counts
``labels.py``           answers, undo, label flags, reading labels
``rater_checks.py``     pairs asked of a rater only to measure them: gold and repeats (not labels)
``raters.py``           registered raters and onboarding
``clips.py``            encoded clips and render failures
``runs.py``             per-run key/value meta
``identity.py``         rater names and secrets (on top of the store)
``run_folder.py``       which store a run folder holds
======================  ========================================================================

Why mixins: every concern's methods share one state -- the engine, the run id, the clock and the
cache of decoded segments -- and call one another (an answer checks the lease; clips and labelled
pairs load segments). So each concern is a mixin over :class:`~prefloop.store.base.StoreBase`
that inherits only what it uses (``LabelsMixin`` builds on ``QueueMixin``, which builds on
``SegmentsMixin``), each method reads as it did in one class, and callers still hold one object,
:class:`PreferenceStore`. Functions taking a connection would have had to pass the run id, the
clock and the cache along on every call.
"""

from __future__ import annotations

from prefloop.store.checks import check_rater as _check_rater  # noqa: F401 (see below)
from prefloop.store.checks import validate_segment as _validate_segment  # noqa: F401
from prefloop.store.clips import ClipsMixin
from prefloop.store.engine import (
    SQLITE_BUSY_TIMEOUT_S,
    check_store_url,
    is_retryable_conflict,
    open_sqlite_read_only,
    read_only_error,
    sqlite_url,
    store_open_error,
    store_problem_kind,
    wait_limit_args,
)
from prefloop.store.errors import (
    LeaseError,
    NoSuchRunError,
    NoSuchStoreError,
    NotAPreferenceStoreError,
    StoreBusyError,
    StoreError,
    StoreReadOnlyError,
)
from prefloop.store.labels import LabelsMixin
from prefloop.store.queue import CLAIM_ATTEMPTS
from prefloop.store.rater_checks import RaterCheck, RaterChecksMixin
from prefloop.store.raters import RatersMixin
from prefloop.store.runs import RunMetaMixin
from prefloop.store.schema import (
    ANSWERED,
    APP_MARKER,
    CLAIMED,
    MAX_CLIP_ERROR_CHARS,
    MAX_META_KEY_CHARS,
    MAX_MIME_CHARS,
    MAX_RATER_ID_CHARS,
    META_TABLE,
    PENDING,
    SCHEMA_VERSION,
    WITHDRAWN,
    clips_table,
    label_flags_table,
    labels_table,
    meta_table,
    metadata,
    pairs_table,
    rater_checks_table,
    raters_table,
    run_meta_table,
    runs_table,
    segments_table,
)
from prefloop.store.segments import segment_from_row as _segment_from_row  # noqa: F401

__all__ = [
    "ANSWERED",
    "APP_MARKER",
    "CLAIMED",
    "CLAIM_ATTEMPTS",
        "MAX_CLIP_ERROR_CHARS",
    "MAX_META_KEY_CHARS",
    "MAX_MIME_CHARS",
    "MAX_RATER_ID_CHARS",
    "META_TABLE",
    "PENDING",
    "SCHEMA_VERSION",
    "SQLITE_BUSY_TIMEOUT_S",
    "WITHDRAWN",
    "LeaseError",
    "NoSuchRunError",
    "NoSuchStoreError",
    "NotAPreferenceStoreError",
    "PreferenceStore",
    "RaterCheck",
    "StoreBusyError",
    "StoreError",
    "StoreReadOnlyError",
    "check_store_url",
    "clips_table",
    "is_retryable_conflict",
    "label_flags_table",
    "labels_table",
    "meta_table",
    "metadata",
    "open_sqlite_read_only",
    "pairs_table",
    "rater_checks_table",
    "raters_table",
    "read_only_error",
    "run_meta_table",
    "runs_table",
    "segments_table",
    "sqlite_url",
    "store_open_error",
    "store_problem_kind",
    "wait_limit_args",
]
# Kept importable from here for code written against the one-module store (prefloop.datasets):
# _check_rater, _segment_from_row, _validate_segment.


class PreferenceStore(LabelsMixin, RaterChecksMixin, ClipsMixin, RatersMixin, RunMetaMixin):
    """Segments, pairs and labels of one run in a SQL database (SQLite file or PostgreSQL).

    Args:
        url: SQLAlchemy database URL, e.g. ``sqlite_url(run_dir / "prefs.sqlite")`` or
            ``"postgresql+psycopg://user@host/db"``.
        run_name: the run whose rows this store reads and writes; created if new (unless
            ``create_run`` is False).
        clock: returns the time in unix seconds; every timestamp and lease uses it (inject a
            fake clock to test lease expiry).
        read_only: only read (export, doctor): nothing is created, not even the run (a missing
            one raises :class:`NoSuchRunError`); a SQLite file on a read-only mount is opened
            ``immutable``. Write methods then fail.
        create_run: False for everything that serves or reads an existing run (the rater app, its
            clip worker, ``prefloop raters``): a run (or SQLite file) that does not exist raises
            :class:`NoSuchRunError` (:class:`NoSuchStoreError`) and nothing is created, so a
            misspelt run name never gives people an empty run to rate. Only what starts a run
            (``train``, ``run``, ``import``) creates one.

    A URL without a password takes it from ``$PREFLOOP_DB_PASSWORD`` or the file named by
    ``$PREFLOOP_DB_PASSWORD_FILE`` (see :mod:`prefloop.credentials`); :attr:`url` never shows it.

    Thread-safe: every call takes its own pooled connection. Do not share across ``fork``.
    Segments it returns may be shared between calls (decoded ones are cached): treat them as
    read-only.

    What it does, by concern: segments (:class:`~prefloop.store.segments.SegmentsMixin`), the
    pair queue and leases (:class:`~prefloop.store.queue.QueueMixin`), labels
    (:class:`~prefloop.store.labels.LabelsMixin`), checks
    (:class:`~prefloop.store.rater_checks.RaterChecksMixin`), clips
    (:class:`~prefloop.store.clips.ClipsMixin`), raters
    (:class:`~prefloop.store.raters.RatersMixin`) and run meta
    (:class:`~prefloop.store.runs.RunMetaMixin`); opening and transactions are in
    :class:`~prefloop.store.base.StoreBase`.

    Raises:
        NotAPreferenceStoreError: the file is not SQLite, is corrupt, or the database holds
            another application's tables; nothing is written to it.
        StoreBusyError: another process holds the database locked for longer than the busy timeout.
        StoreReadOnlyError: opened for writing where nothing may be written.
        StoreError: bad URL, missing folder, or a schema from another prefloop version.
    """
