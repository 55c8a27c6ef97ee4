"""The store's exceptions: one base class, and a subclass for each problem a caller may handle
differently (the message of each says the fix)."""

from __future__ import annotations


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
