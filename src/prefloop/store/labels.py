"""Labels: a rater's answer on a pair they hold, undo, flags, and reading labels back.

Labels are the expensive data: ``answer`` commits before it returns, a label is never deleted or
overwritten (``undo_last`` only sets ``retracted_at``), and a unique index keeps one live label
per (pair, rater) even under races.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import fields
from typing import Any

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from prefloop.store.checks import (
    as_choice,
    as_id,
    bad_text,
    check_lease,
    check_rater,
    check_response_time,
    short,
)
from prefloop.store.engine import IN_CHUNK, chunks
from prefloop.store.errors import LeaseError, StoreError
from prefloop.store.queue import MAX_CLAIM_ROUNDS, QueueMixin
from prefloop.store.schema import (
    ANSWERED,
    CLAIMED,
    PENDING,
    WITHDRAWN,
    label_flags_table,
    labels_table,
    pairs_table,
)
from prefloop.types import Choice, Label, LabeledPair

_LABEL_HAS_RETRACTED_AT = "retracted_at" in {f.name for f in fields(Label)}


class LabelsMixin(QueueMixin):
    """Answering leased pairs, undoing answers, flagging labels, and reading them."""

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
        pair_id = as_id(pair_id, "pair_id")
        rater_id = check_rater(rater_id)
        choice = as_choice(choice, "choice")
        response_time_s = check_response_time(response_time_s)
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
                    return make_label(
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
        return None if row is None else label_from_row(row)

    @staticmethod
    def _count_live_labels(conn: Connection, pair_id: int) -> int:
        return int(
            conn.scalar(
                select(func.count())
                .select_from(labels_table)
                .where(labels_table.c.pair_id == pair_id, labels_table.c.retracted_at.is_(None))
            )
        )

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
        rater_id = check_rater(rater_id)
        lease_seconds = check_lease(lease_seconds)
        allowed = None if among is None else sorted({as_id(i, "label id") for i in among})
        if allowed is not None and not allowed:
            return None
        p, lab = pairs_table, labels_table
        with self._write() as conn:
            for _ in range(MAX_CLAIM_ROUNDS):
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
                    query = query.where(lab.c.id.in_(allowed[-IN_CHUNK:]))
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
                label = label_from_row(row)
                return make_label(**{**label_kwargs(label), "retracted_at": now})
        raise StoreError(f"could not undo for {rater_id!r}: too much contention; try again")

    def flag_label(self, label_id: int, flag: str, value: float | None = None) -> None:
        """Attach ``flag`` (a short name, e.g. ``too_fast``) with an optional number to a label of
        this run. Flags are data for the dashboard and the loss; the label itself is unchanged.
        Flagging twice keeps the first value."""
        label_id = as_id(label_id, "label_id")
        if not isinstance(flag, str) or not flag or len(flag) > 32 or bad_text(flag):
            raise StoreError(f"flag must be a short printable name (at most 32 characters), got {short(flag)}")
        number = None if value is None else float(value)
        if number is not None and not math.isfinite(number):
            raise StoreError(f"flag value must be a finite number or None, got {short(value)}")
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
            for chunk in chunks([row.id for row in rows], IN_CHUNK):
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
            for chunk in chunks(sorted(targets), IN_CHUNK):
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
            query = query.where(lab.c.rater_id == check_rater(rater_id))
        if not include_retracted:
            query = query.where(lab.c.retracted_at.is_(None))
        with self._read() as conn:
            return [label_from_row(row) for row in conn.execute(query.order_by(lab.c.id))]


def make_label(*, retracted_at: float | None, **kwargs: Any) -> Label:
    # Label carries retracted_at only if the shared type has that field.
    if _LABEL_HAS_RETRACTED_AT:
        kwargs["retracted_at"] = retracted_at
    return Label(**kwargs)


def label_kwargs(label: Label) -> dict[str, Any]:
    kwargs = {f.name: getattr(label, f.name) for f in fields(Label)}
    kwargs.pop("retracted_at", None)
    return kwargs


def label_from_row(row: Any) -> Label:
    return make_label(
        id=int(row.id),
        pair_id=int(row.pair_id),
        rater_id=row.rater_id,
        choice=Choice(row.choice),
        response_time_s=float(row.response_time_s),
        created_at=float(row.created_at),
        retracted_at=None if row.retracted_at is None else float(row.retracted_at),
    )
