"""Checks: pairs asked of a rater only to measure them, never labels.

Two kinds:

- **gold**: a gold pair (its answer is known from the true return). Is the rater right? Any gold
  pair of the run serves every rater who has neither labelled nor checked it, so a handful of
  gold pairs measure every rater.
- **repeat**: a pair the rater labelled earlier, shown again with left and right swapped. Do they
  answer the same? (self-consistency; the expected answer is their earlier label).

A check never trains the reward model, never counts toward the run's label budget or
``counts()["labels"]``, and never changes the pair's place in the queue. A check on the rater's
screen (``choice`` NULL) holds no lease: it blocks nobody, and comes back first on the rater's next
claim. Answers are stored in the pair's own orientation (a swapped repeat is mirrored back). When a
rater gets a check instead of a pair from the queue is decided above the store
(:mod:`prefloop.training.rater_checks`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import and_, exists, func, insert, select, true, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from prefloop.store.checks import as_choice, as_id, check_rater, check_response_time
from prefloop.store.errors import StoreError
from prefloop.store.queue import QueueMixin
from prefloop.store.schema import CHECK_KINDS, clips_table, labels_table, pairs_table, rater_checks_table
from prefloop.types import Choice, SegmentPair

_MIRRORED = {Choice.LEFT: Choice.RIGHT, Choice.RIGHT: Choice.LEFT}


@dataclass(frozen=True)
class RaterCheck:
    """One answered check: who, which pair, which kind, the answer (in the pair's orientation)
    and the answer expected (the gold answer, or the rater's earlier label)."""

    rater_id: str
    pair_id: int
    kind: str
    choice: Choice
    expected: Choice
    response_time_s: float
    answered_at: float

    @property
    def agrees(self) -> bool:
        return self.choice is self.expected


class RaterChecksMixin(QueueMixin):
    """Serving checks to raters, recording and undoing their answers, reading them."""

    def claim_check(
        self, rater_id: str, kind: str = "gold", *, exclude: Iterable[int] = (), with_clips: bool = False,
        not_latest: int = 5,
    ) -> SegmentPair | None:
        """A pair for ``rater_id`` to answer as a check, or None if none is left for them.

        The check the rater has open (served, not answered; any kind) comes back first. Otherwise
        a new one of ``kind``: ``"gold"``, the oldest gold pair of the run (any status) the rater
        has neither labelled nor checked; ``"repeat"``, the oldest pair the rater labelled (left,
        right or equal, still live) and has not repeated, other than their ``not_latest`` newest
        labels, shown swapped. ``exclude`` skips pair ids; ``with_clips`` serves only pairs whose
        two clips are in the store (the rater app). The pair comes as the rater sees it (a repeat
        with left and right swapped).
        """
        rater_id = check_rater(rater_id)
        if kind not in CHECK_KINDS:
            raise StoreError(f"check kind must be one of {', '.join(CHECK_KINDS)}, got {kind!r}")
        excluded = sorted({as_id(i, "excluded pair id") for i in exclude})
        g = rater_checks_table
        for _ in range(2):  # a concurrent claim of the same check loses on the unique index once
            try:
                with self._write() as conn:
                    held = select(g.c.pair_id, g.c.swapped).where(
                        g.c.run_id == self._run_id, g.c.rater_id == rater_id, g.c.choice.is_(None)
                    )
                    if excluded:
                        held = held.where(g.c.pair_id.not_in(excluded))
                    row = conn.execute(held.order_by(g.c.served_at.desc()).limit(1)).first()
                    if row is not None:
                        return self._shown(conn, int(row.pair_id), bool(row.swapped))
                    found = self._new_check(conn, rater_id, kind, excluded, with_clips, not_latest)
                    if found is None:
                        return None
                    pair_id, expected = found
                    swapped = kind == "repeat"
                    conn.execute(insert(g).values(
                        run_id=self._run_id, pair_id=pair_id, rater_id=rater_id, kind=kind, swapped=swapped,
                        expected=expected.value, served_at=self._now(),
                    ))
                    return self._shown(conn, pair_id, swapped)
            except IntegrityError:
                continue
        return None

    def _new_check(
        self, conn: Connection, rater_id: str, kind: str, excluded: list[int], with_clips: bool, not_latest: int
    ) -> tuple[int, Choice] | None:
        """``(pair id, expected answer)`` of a new check of ``kind`` for the rater, or None."""
        p, lab, g, c = pairs_table, labels_table, rater_checks_table, clips_table
        checked = exists().where(g.c.pair_id == p.c.id, g.c.rater_id == rater_id, g.c.kind == kind)
        if kind == "gold":
            query = select(p.c.id, p.c.gold_choice.label("expected")).where(
                p.c.run_id == self._run_id, p.c.gold_choice.is_not(None), ~checked,
                ~exists().where(lab.c.pair_id == p.c.id, lab.c.rater_id == rater_id),
            ).order_by(p.c.id)
        else:
            newest = select(lab.c.id).join(p, p.c.id == lab.c.pair_id).where(
                p.c.run_id == self._run_id, lab.c.rater_id == rater_id
            ).order_by(lab.c.id.desc()).limit(max(0, not_latest))
            query = select(p.c.id, lab.c.choice.label("expected")).join(lab, lab.c.pair_id == p.c.id).where(
                p.c.run_id == self._run_id, lab.c.rater_id == rater_id, lab.c.retracted_at.is_(None),
                lab.c.choice.in_([Choice.LEFT.value, Choice.RIGHT.value, Choice.EQUAL.value]),
                lab.c.id.not_in(newest.scalar_subquery()) if not_latest > 0 else true(), ~checked,
            ).order_by(lab.c.id)
        if with_clips:
            for column in (p.c.left_segment_id, p.c.right_segment_id):
                query = query.where(exists().where(c.c.segment_id == column, c.c.error.is_(None)))
        if excluded:
            query = query.where(p.c.id.not_in(excluded))
        row = conn.execute(query.limit(1)).first()
        return None if row is None else (int(row.id), Choice(row.expected))

    def _shown(self, conn: Connection, pair_id: int, swapped: bool) -> SegmentPair:
        pair = self._load_pair(conn, pair_id)
        return SegmentPair(left=pair.right, right=pair.left, id=pair.id, score=pair.score) if swapped else pair

    def is_open_check(self, pair_id: int, rater_id: str) -> bool:
        """Whether ``pair_id`` is on ``rater_id``'s screen as a check (served, not answered)."""
        g = rater_checks_table
        if g.name not in self._tables:
            return False
        with self._read() as conn:
            return conn.scalar(select(g.c.id).where(
                g.c.run_id == self._run_id, g.c.pair_id == as_id(pair_id, "pair_id"),
                g.c.rater_id == check_rater(rater_id), g.c.choice.is_(None),
            )) is not None

    def answer_check(self, pair_id: int, rater_id: str, choice: Choice | str, response_time_s: float) -> RaterCheck:
        """Record the rater's answer (as they saw the pair) to the check they have open on
        ``pair_id``; committed before returning. Idempotent: once answered, the check is returned
        as it is (a double submit counts once).

        Raises:
            StoreError: the rater was never served this pair as a check, or bad arguments.
        """
        pair_id = as_id(pair_id, "pair_id")
        rater_id = check_rater(rater_id)
        choice = as_choice(choice, "choice")
        response_time_s = check_response_time(response_time_s)
        g = rater_checks_table
        with self._write() as conn:
            mine = and_(g.c.run_id == self._run_id, g.c.pair_id == pair_id, g.c.rater_id == rater_id)
            row = conn.execute(select(g.c.id, g.c.swapped).where(mine, g.c.choice.is_(None))).first()
            if row is not None:
                stored = _MIRRORED.get(choice, choice) if row.swapped else choice
                conn.execute(update(g).where(g.c.id == row.id).values(
                    choice=stored.value, response_time_s=response_time_s, answered_at=self._now()
                ))
            answered = self._checks(conn, mine)
        if not answered:
            raise StoreError(
                f"pair {pair_id} was not served to {rater_id!r} as a check; answer it with answer() "
                "if it was claimed from the queue"
            )
        return answered[-1]

    def undo_check(self, pair_id: int, rater_id: str) -> RaterCheck | None:
        """Take back the rater's latest answer to a check on ``pair_id``: it is open again (on
        their screen). Returns the answer taken back, or None if there was none."""
        g = rater_checks_table
        mine = and_(g.c.run_id == self._run_id, g.c.pair_id == as_id(pair_id, "pair_id"),
                    g.c.rater_id == check_rater(rater_id))
        with self._write() as conn:
            before = self._checks(conn, mine)
            if before:
                conn.execute(update(g).where(mine, g.c.answered_at == before[-1].answered_at).values(
                    choice=None, response_time_s=None, answered_at=None, served_at=self._now()
                ))
        return before[-1] if before else None

    def rater_checks(self, rater_id: str | None = None, kind: str | None = None) -> list[RaterCheck]:
        """This run's answered checks (of one rater and/or one kind, or all), in the order answered."""
        g = rater_checks_table
        if g.name not in self._tables:  # read-only, a store from before checks
            return []
        condition = g.c.run_id == self._run_id
        if rater_id is not None:
            condition = and_(condition, g.c.rater_id == check_rater(rater_id))
        if kind is not None:
            condition = and_(condition, g.c.kind == kind)
        with self._read() as conn:
            return self._checks(conn, condition)

    def count_gold_pairs(self) -> int:
        """How many gold pairs (known answer) this run has asked, any status."""
        p = pairs_table
        with self._read() as conn:
            return int(conn.scalar(
                select(func.count()).select_from(p).where(p.c.run_id == self._run_id, p.c.gold_choice.is_not(None))
            ) or 0)

    @staticmethod
    def _checks(conn: Connection, condition: object) -> list[RaterCheck]:
        g = rater_checks_table
        rows = conn.execute(
            select(g.c.rater_id, g.c.pair_id, g.c.kind, g.c.choice, g.c.expected, g.c.response_time_s, g.c.answered_at)
            .where(condition, g.c.choice.is_not(None))  # type: ignore[arg-type]
            .order_by(g.c.answered_at, g.c.id)
        )
        return [
            RaterCheck(row.rater_id, int(row.pair_id), row.kind, Choice(row.choice), Choice(row.expected),
                       float(row.response_time_s), float(row.answered_at))
            for row in rows
        ]
