"""The run's raters: names claimed with a secret's hash, onboarding, and what the rater app asks
about them (gold pairs for practice, how many labels a rater gave lately). Who may claim which
name is decided in :mod:`prefloop.store.identity`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import exists, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from prefloop.store.base import StoreBase
from prefloop.store.checks import check_rater
from prefloop.store.errors import StoreError
from prefloop.store.schema import clips_table, rater_checks_table, labels_table, pairs_table, raters_table
from prefloop.types import Choice


class RatersMixin(StoreBase):
    """Registering raters and reading them back."""

    def add_rater(self, name: str, skeleton: str, secret_hash: str, *, replace_secret: bool = False) -> bool:
        """Claim ``name`` in this run for the holder of the secret whose hash is ``secret_hash``.

        Returns True if the name is now bound to this hash: it was free (or ``replace_secret``:
        the admin issues a new invite, and the old link stops working). False if someone else
        claimed it first (race-safe: the unique index decides).
        """
        name = check_rater(name)
        skeleton = check_rater(skeleton)
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
        name = check_rater(name)
        r = raters_table
        with self._read() as conn:
            row = conn.execute(
                select(r.c.name, r.c.skeleton, r.c.secret_hash, r.c.created_at, r.c.onboarded_at)
                .where(r.c.run_id == self._run_id, r.c.name == name)
            ).first()
        return None if row is None else dict(row._mapping)

    def set_onboarded(self, name: str) -> None:
        """Record that rater ``name`` passed onboarding (their labels count from now on)."""
        name = check_rater(name)
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
        """Every rater name of this run: registered ones and those with labels or checks, sorted."""
        r, p, lab = raters_table, pairs_table, labels_table
        with self._read() as conn:
            names = set(conn.scalars(select(r.c.name).where(r.c.run_id == self._run_id)))
            names.update(conn.scalars(
                select(lab.c.rater_id).distinct().join(p, p.c.id == lab.c.pair_id)
                .where(p.c.run_id == self._run_id)
            ))
            if rater_checks_table.name in self._tables:  # a rater who has answered only checks so far
                names.update(conn.scalars(
                    select(rater_checks_table.c.rater_id).distinct().where(rater_checks_table.c.run_id == self._run_id)
                ))
        return sorted(names)

    def count_labels(self, rater_id: str) -> int:
        """How many live labels ``rater_id`` has in this run."""
        rater_id = check_rater(rater_id)
        p, lab = pairs_table, labels_table
        with self._read() as conn:
            return int(conn.scalar(
                select(func.count()).select_from(lab).join(p, p.c.id == lab.c.pair_id)
                .where(p.c.run_id == self._run_id, lab.c.rater_id == rater_id, lab.c.retracted_at.is_(None))
            ) or 0)

    def count_labels_since(self, rater_id: str, since: float) -> int:
        """How many labels (retracted ones too) ``rater_id`` gave in this run at or after ``since``."""
        rater_id = check_rater(rater_id)
        p, lab = pairs_table, labels_table
        with self._read() as conn:
            return int(conn.scalar(
                select(func.count()).select_from(lab).join(p, p.c.id == lab.c.pair_id)
                .where(p.c.run_id == self._run_id, lab.c.rater_id == rater_id, lab.c.created_at >= float(since))
            ) or 0)
