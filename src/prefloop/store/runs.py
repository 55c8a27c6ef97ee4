"""Run meta: a small key/value table per run (its config and env spec, the rating guideline, the
trainer's progress, rater reliability), values as text (JSON where structured).
"""

from __future__ import annotations

import unicodedata

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from prefloop.store.base import StoreBase
from prefloop.store.checks import check_meta_key
from prefloop.store.errors import StoreError
from prefloop.store.schema import run_meta_table


class RunMetaMixin(StoreBase):
    """Reading and writing this run's key/value meta."""

    def set_meta(self, key: str, value: str) -> None:
        """Store ``value`` under ``key`` for this run (replacing an earlier value)."""
        key = check_meta_key(key)
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
        key = check_meta_key(key)
        m = run_meta_table
        with self._read() as conn:
            return conn.scalar(
                select(m.c.value).where(m.c.run_id == self._run_id, m.c.key == key)
            )
