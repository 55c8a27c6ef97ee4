"""The pair queue: pairs waiting for labels, handed to one rater at a time through leases.

A pair is ``pending`` until a rater claims it (``claimed``, with a lease that expires), becomes
``answered`` once it has all the labels it asked for, and ``withdrawn`` when the run stops using
labels before anyone answered it. A lease is taken with a compare-and-set
``UPDATE ... WHERE <still claimable>``, so many processes can claim at once on either backend.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import and_, exists, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from prefloop.store.checks import as_choice, as_id, check_lease, check_rater, validate_segment
from prefloop.store.engine import is_retryable_conflict
from prefloop.store.errors import StoreError
from prefloop.store.schema import (
    ANSWERED,
    CLAIMED,
    PENDING,
    WITHDRAWN,
    labels_table,
    pairs_table,
    segments_table,
)
from prefloop.store.segments import SegmentsMixin
from prefloop.types import Choice, Segment, SegmentPair

CLAIM_ATTEMPTS = 5  # runs of one claim when PostgreSQL aborts it (deadlock victim, serialization)
_CLAIM_RETRY_SLEEP_S = 0.02  # times the attempt number, jittered
_CLAIM_BATCH = 16  # claimable pairs tried per round once every one is row-locked by others
MAX_CLAIM_ROUNDS = 1000  # compare-and-set rounds lost to other raters before giving up


class QueueMixin(SegmentsMixin):
    """Queueing pairs, leasing them to raters, giving them back and withdrawing them."""

    def add_pairs(
        self,
        pairs: Sequence[SegmentPair],
        labels_per_pair: int = 1,
        gold_choice: Choice | str | None = None,
        *,
        gold_choices: Sequence[Choice | str | None] | None = None,
    ) -> list[int]:
        """Queue pairs for labelling, saving their unsaved segments first, in one transaction.

        Sets ``pair.id`` (and ``seg.id`` for newly saved segments) once committed.

        Args:
            pairs: the pairs; a segment object used by several pairs is saved once.
            labels_per_pair: how many different raters must label each pair (>= 1).
            gold_choice: the known right answer, for gold (rater-check) questions.
            gold_choices: or one per pair (None: not gold), so a round's gold pairs appear in the
                same transaction as its other pairs (a rater never sees the queue's pairs before
                the gold pairs that check them).
        """
        pairs = list(pairs)
        labels_per_pair = as_id(labels_per_pair, "labels_per_pair")
        if labels_per_pair < 1:
            raise StoreError(f"labels_per_pair must be >= 1, got {labels_per_pair}")
        if gold_choices is not None and (gold_choice is not None or len(gold_choices) != len(pairs)):
            raise StoreError("give either gold_choice or one gold_choices entry per pair")
        golds = [gold_choice] * len(pairs) if gold_choices is None else list(gold_choices)
        golds = [None if g is None else as_choice(g, "gold_choice") for g in golds]
        if Choice.CANT_TELL in golds:
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
                        validate_segment(seg, f"pair {index}.{side}")
                        unsaved[id(seg)] = seg
                else:
                    saved_ids.add(as_id(seg.id, f"pair {index}.{side}.id"))
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
            for pair, score, gold in zip(pairs, scores, golds):
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

    def get_pair(self, pair_id: int) -> SegmentPair:
        """Load one pair of this run with its segments."""
        pair_id = as_id(pair_id, "pair_id")
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
        rater_id = check_rater(rater_id)
        lease_seconds = check_lease(lease_seconds)
        excluded = sorted({as_id(i, "excluded pair id") for i in exclude})
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

            for _ in range(MAX_CLAIM_ROUNDS):
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
            f"could not claim a pair for {rater_id!r} after {MAX_CLAIM_ROUNDS} rounds of "
            "contention; try again"
        )

    def queue_stalled_for(self, rater_id: str) -> float:
        """Seconds the queue has stood still for ``rater_id``: since the later of the newest live
        label by anyone else in the run and the oldest pair ``rater_id`` may claim now; 0 when there
        is no such pair."""
        rater_id = check_rater(rater_id)
        p, lab = pairs_table, labels_table
        with self._read() as conn:
            now = self._now()
            oldest = conn.scalar(select(func.min(p.c.created_at)).where(p.c.run_id == self._run_id, self._claimable(rater_id, now)))
            if oldest is None:
                return 0.0
            newest_label = conn.scalar(
                select(func.max(lab.c.created_at)).join(p, p.c.id == lab.c.pair_id)
                .where(p.c.run_id == self._run_id, lab.c.retracted_at.is_(None), lab.c.rater_id != rater_id)
            )
        return max(0.0, now - max(float(oldest), float(newest_label or 0.0)))

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
        pair_id = as_id(pair_id, "pair_id")
        rater_id = check_rater(rater_id)
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
