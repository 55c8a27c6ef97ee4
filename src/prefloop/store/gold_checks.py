"""Gold checks: a rater answers a gold pair (one whose answer is known) only to show how reliable they are.

A check is not a label. It never trains the reward model, never counts toward the run's label
budget or ``counts()["labels"]``, and never changes the gold pair's place in the queue: the pair
is labelled as usual by whoever takes it from the queue. Checks are evidence about the rater only:
the reliability model's E-step counts them as gold answers (a mistake or not is known).

Any gold pair of the run can serve as a check to a rater who has neither labelled it nor checked
it before, so a handful of gold pairs measure every rater. A check on the rater's screen
(``choice`` NULL) holds no lease: it blocks nobody, and comes back first on the rater's next
claim. When a rater gets checks instead of pairs from the queue is decided above the store
(:mod:`prefloop.training.rater_checks`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import and_, exists, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from prefloop.store.checks import as_choice, as_id, check_rater, check_response_time
from prefloop.store.errors import StoreError
from prefloop.store.queue import QueueMixin
from prefloop.store.schema import clips_table, gold_checks_table, labels_table, pairs_table
from prefloop.types import Choice, SegmentPair


@dataclass(frozen=True)
class GoldCheck:
    """One answered check: who, which gold pair, what they answered and the known answer."""

    rater_id: str
    pair_id: int
    choice: Choice
    gold_choice: Choice
    response_time_s: float
    answered_at: float

    @property
    def correct(self) -> bool:
        return self.choice is self.gold_choice


class GoldChecksMixin(QueueMixin):
    """Serving gold pairs to raters as checks, recording and undoing their answers, reading them."""

    def claim_check(
        self, rater_id: str, *, exclude: Iterable[int] = (), with_clips: bool = False
    ) -> SegmentPair | None:
        """A gold pair for ``rater_id`` to answer as a check, or None if none is left for them.

        The check the rater has open (served, not answered) comes back first. Otherwise the
        oldest gold pair of the run (any status) that the rater has neither labelled nor
        checked is served and recorded as open. ``exclude`` skips pair ids; ``with_clips``
        serves only pairs whose two clips are in the store (the rater app).
        """
        rater_id = check_rater(rater_id)
        excluded = sorted({as_id(i, "excluded pair id") for i in exclude})
        p, g, lab, c = pairs_table, gold_checks_table, labels_table, clips_table
        for _ in range(2):  # a concurrent claim of the same check loses on the unique index once
            try:
                with self._write() as conn:
                    held = select(g.c.pair_id).where(
                        g.c.run_id == self._run_id, g.c.rater_id == rater_id, g.c.choice.is_(None)
                    )
                    if excluded:
                        held = held.where(g.c.pair_id.not_in(excluded))
                    pair_id = conn.scalar(held.order_by(g.c.served_at.desc()).limit(1))
                    if pair_id is None:
                        query = select(p.c.id).where(
                            p.c.run_id == self._run_id,
                            p.c.gold_choice.is_not(None),
                            ~exists().where(lab.c.pair_id == p.c.id, lab.c.rater_id == rater_id),
                            ~exists().where(g.c.pair_id == p.c.id, g.c.rater_id == rater_id),
                        )
                        if with_clips:
                            for column in (p.c.left_segment_id, p.c.right_segment_id):
                                query = query.where(exists().where(c.c.segment_id == column, c.c.error.is_(None)))
                        if excluded:
                            query = query.where(p.c.id.not_in(excluded))
                        pair_id = conn.scalar(query.order_by(p.c.id).limit(1))
                        if pair_id is None:
                            return None
                        conn.execute(insert(g).values(
                            run_id=self._run_id, pair_id=pair_id, rater_id=rater_id, served_at=self._now()
                        ))
                    return self._load_pair(conn, int(pair_id))
            except IntegrityError:
                continue
        return None

    def is_open_check(self, pair_id: int, rater_id: str) -> bool:
        """Whether ``pair_id`` is on ``rater_id``'s screen as a check (served, not answered)."""
        g = gold_checks_table
        with self._read() as conn:
            return conn.scalar(select(g.c.id).where(
                g.c.run_id == self._run_id, g.c.pair_id == as_id(pair_id, "pair_id"),
                g.c.rater_id == check_rater(rater_id), g.c.choice.is_(None),
            )) is not None

    def answer_check(self, pair_id: int, rater_id: str, choice: Choice | str, response_time_s: float) -> GoldCheck:
        """Record the rater's answer to a check they were served; committed before returning.

        Idempotent: an answered check is returned as it is (a double submit counts once).

        Raises:
            StoreError: the rater was never served this pair as a check, or bad arguments.
        """
        pair_id = as_id(pair_id, "pair_id")
        rater_id = check_rater(rater_id)
        choice = as_choice(choice, "choice")
        response_time_s = check_response_time(response_time_s)
        g = gold_checks_table
        with self._write() as conn:
            conn.execute(
                update(g)
                .where(g.c.run_id == self._run_id, g.c.pair_id == pair_id, g.c.rater_id == rater_id,
                       g.c.choice.is_(None))
                .values(choice=choice.value, response_time_s=response_time_s, answered_at=self._now())
            )
            checks = self._checks(conn, rater_id=rater_id, pair_id=pair_id)
        if not checks:
            raise StoreError(
                f"pair {pair_id} was not served to {rater_id!r} as a check; answer it with answer() "
                "if it was claimed from the queue"
            )
        return checks[0]

    def undo_check(self, pair_id: int, rater_id: str) -> GoldCheck | None:
        """Take back the rater's answer to a check: it is open again (on their screen). Returns
        the answer taken back, or None if there was none."""
        pair_id = as_id(pair_id, "pair_id")
        rater_id = check_rater(rater_id)
        g = gold_checks_table
        with self._write() as conn:
            before = self._checks(conn, rater_id=rater_id, pair_id=pair_id)
            if before:
                conn.execute(
                    update(g)
                    .where(g.c.run_id == self._run_id, g.c.pair_id == pair_id, g.c.rater_id == rater_id)
                    .values(choice=None, response_time_s=None, answered_at=None, served_at=self._now())
                )
        return before[0] if before else None

    def gold_checks(self, rater_id: str | None = None) -> list[GoldCheck]:
        """This run's answered checks (of one rater, or all), in the order they were answered."""
        with self._read() as conn:
            return self._checks(conn, rater_id=None if rater_id is None else check_rater(rater_id))

    def _checks(self, conn: Connection, *, rater_id: str | None = None, pair_id: int | None = None) -> list[GoldCheck]:
        g, p = gold_checks_table, pairs_table
        query = (
            select(g.c.rater_id, g.c.pair_id, g.c.choice, p.c.gold_choice, g.c.response_time_s, g.c.answered_at)
            .join(p, and_(p.c.id == g.c.pair_id, p.c.run_id == g.c.run_id))
            .where(g.c.run_id == self._run_id, g.c.choice.is_not(None))
        )
        if rater_id is not None:
            query = query.where(g.c.rater_id == rater_id)
        if pair_id is not None:
            query = query.where(g.c.pair_id == pair_id)
        return [
            GoldCheck(row.rater_id, int(row.pair_id), Choice(row.choice), Choice(row.gold_choice),
                      float(row.response_time_s), float(row.answered_at))
            for row in conn.execute(query.order_by(g.c.answered_at, g.c.id))
        ]

    def count_gold_pairs(self) -> int:
        """How many gold pairs (known answer) this run has asked, any status."""
        p = pairs_table
        with self._read() as conn:
            return int(conn.scalar(
                select(func.count()).select_from(p).where(p.c.run_id == self._run_id, p.c.gold_choice.is_not(None))
            ) or 0)
