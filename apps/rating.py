"""What one rater's browser session does with the store, without any Streamlit: which pair is
shown, which one is ready next, answering, undoing, keeping leases alive.

The session holds two pairs: ``current`` (on screen) and ``next`` (claimed and its clips already
loaded, so the browser can switch to it the moment an answer is given). Both are always derived
from the store, never from memory alone:

- ``current`` is ``claim_next`` with the full lease: the pair the rater already holds with the
  newest lease comes back first, so a reloaded page shows the same pair again;
- ``next`` is claimed after it with half the lease, so its lease always ends before the current
  one's and a reload never puts it first.

Actions come from the browser as a list with increasing sequence numbers and are re-sent until
acknowledged (``acked_seq``), so a lost message never loses an answer and a repeated one counts
once (the store's ``answer`` is idempotent for the same rater too).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from prefloop.apps.rating_values import (
    Notice,
    NoticeLevel,
    QueueState,
    ShownPair,
    clamp_response_time,
    clip_fps,
    start_of_today,
)
from prefloop.store import LeaseError, PreferenceStore, StoreError
from prefloop.training.rater_checks import RaterRouter
from prefloop.types import Choice

log = logging.getLogger("prefloop.apps")

# The browser's outbox holds a handful of actions; a message with more is not from our player.
# The first ones (by sequence number) are handled, the rest wait for the next message.
MAX_ACTIONS_PER_MESSAGE = 50
MAX_SEQ = 2**53  # the largest integer a browser counts exactly
MAX_NOTICES = 5
UNDO_DEPTH = 20  # how many of the session's own latest answers Undo can reach
TIME_TOLERANCE_S = 1.0  # network delay between the browser's clock and the server's
WAITING_GRACE_S = 30.0  # see RaterSession.heartbeat
_SHOWN_MEMORY = 64  # pair ids this session has shown, for the wording of a rejected answer
# A session with a pair on screen but no answer for this long is paused: its pairs go back to the
# queue until the rater says they are back, so idle tabs never starve other raters or the trainer.
IDLE_RELEASE_S = 120.0
# Answers faster than this share of the clip's length are flagged ``too_fast`` (kept, counted on
# the dashboard, usable in the loss).
MIN_WATCH_FRACTION = 0.5
MAX_ANSWERS_PER_MINUTE = 30

DB_TROUBLE = (
    "The label database is not reachable right now, so nothing was saved. "
    "Wait a moment and try again; answers you gave before are safe."
)


@dataclass
class RaterSession:
    """One rater's view of the queue.

    Args:
        store: the run's store (shared by all sessions of the app process; thread-safe).
        rater_id: who answers.
        lease_seconds: how long a shown pair stays reserved for this rater without activity.
        prefetch: claim and load the next pair in advance (the browser switches instantly).
        clock: unix seconds, for the keep-alive, the server-side response times, the rate limit
            and "labels today".
        idle_release_s: a pair on screen this long without an answer pauses the session and
            gives its pairs back (see :meth:`heartbeat`).
        max_answers_per_minute: more answers than this by the rater within 60 s (all their
            sessions together) are refused, not stored.
        min_watch_fraction: answers given in less than this share of the clip's length are
            flagged ``too_fast``.
        router: who gets a gold check and who a pair from the queue (None: the run's own rules,
            :meth:`prefloop.training.rater_checks.RaterRouter.for_run`). A check looks like any
            pair to the rater; its answer measures them and is not a label.
    """

    store: PreferenceStore
    rater_id: str
    lease_seconds: float = 120.0
    prefetch: bool = True
    clock: Callable[[], float] = time.time
    current: ShownPair | None = None
    next: ShownPair | None = None
    acked_seq: int = 0
    queue: QueueState = field(default_factory=QueueState)
    notices: list[Notice] = field(default_factory=list)
    last_activity: float = 0.0
    last_refresh: float = 0.0
    shown_ids: list[int] = field(default_factory=list)
    idle_release_s: float = IDLE_RELEASE_S
    max_answers_per_minute: int = MAX_ANSWERS_PER_MINUTE
    min_watch_fraction: float = MIN_WATCH_FRACTION
    paused: bool = False
    # Server-side timing: when each pair reached the browser, and when the previous answer ended
    # (answers are given one after the other, so two answers can never overlap in time).
    served_at: dict[int, float] = field(default_factory=dict)
    answered_until: float = 0.0
    # This session's own labels, newest last: the only ones its Undo may retract.
    own_label_ids: list[int] = field(default_factory=list)
    # When the current stretch of rating began (first answer since the page opened or the last
    # break), for the break reminder.
    rating_since: float | None = None
    router: RaterRouter | None = None
    # This session's answers to gold checks (pair ids), newest last, and which of its answers
    # (labels and checks) came last, so Undo takes back the latest of either.
    own_check_ids: list[int] = field(default_factory=list)
    _undo_order: list[tuple[str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.last_activity = self.clock()
        self._fps = clip_fps(self.store)
        if self.router is None:
            self.router = RaterRouter.for_run(self.store)

    # -- the two pairs ------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Re-derive ``current`` and ``next`` from the store (renewing their leases).

        Returns:
            True if either pair changed (the browser needs new data). On a database error both
            stay as they were and a notice is queued.
        """
        before = self._shown_ids()
        try:
            self._refresh()
        except SQLAlchemyError as exc:
            log.warning("rater %s: database error while refreshing: %s", self.rater_id, exc)
            self._notify("error", DB_TROUBLE)
        self.last_refresh = self.clock()
        return self._shown_ids() != before

    def _shown_ids(self) -> tuple[int | None, int | None]:
        return tuple(p.pair_id if p else None for p in (self.current, self.next))  # type: ignore[return-value]

    def release_all(self) -> None:
        """Give the shown and the prepared pair back to the queue (the rater leaves)."""
        for pair in (self.current, self.next):
            if pair is not None:
                try:
                    self.store.release(pair.pair_id, self.rater_id)
                except (SQLAlchemyError, StoreError) as exc:  # the lease runs out by itself anyway
                    log.warning("rater %s: could not release pair %d: %s", self.rater_id, pair.pair_id, exc)
        self.current = self.next = None

    def _refresh(self) -> None:
        if self.paused:
            return
        not_ready = set(self.store.pairs_missing_clips())
        old = [p for p in (self.current, self.next) if p is not None]
        known = {p.pair_id: p for p in old}
        # Two checks held (on screen and next): the store hands back the newest open check first,
        # which is the one prepared next; the one on screen stays first unless it was answered.
        keep_order = (
            self.current is not None and self.next is not None and self.current.is_check and self.next.is_check
            and self.store.is_open_check(self.current.pair_id, self.rater_id)
        )
        first_exclude = {self.next.pair_id} if keep_order and self.next is not None else set()
        self.current = self._claim_ready(not_ready, first_exclude, self.lease_seconds, known)
        self.next = None
        if self.current is not None and self.prefetch:
            self.next = self._claim_ready(
                not_ready, {self.current.pair_id}, self.lease_seconds / 2, known
            )
        keep = {p.pair_id for p in (self.current, self.next) if p is not None}
        now = self.clock()
        for pair in (self.current, self.next):  # both go to the browser now
            if pair is not None and pair.pair_id not in self.served_at:
                self.served_at[pair.pair_id] = now
        for pair_id in [i for i in self.served_at if i not in keep]:
            del self.served_at[pair_id]
        for pair_id in sorted(keep - set(self.shown_ids)):
            self.shown_ids = [*self.shown_ids, pair_id][-_SHOWN_MEMORY:]
        for pair in old:  # a pair this session held but no longer shows goes back to the queue
            if pair.pair_id not in keep:
                self.store.release(pair.pair_id, self.rater_id)
        if self.current is None:
            assert self.router is not None
            self.queue = QueueState(
                waiting=self._waiting_pairs(), preparing=len(not_ready),
                checks_only=self.router.mode(self.rater_id) == "flagged",
            )

    def _claim_ready(
        self,
        not_ready: set[int],
        exclude: set[int],
        lease_seconds: float,
        known: dict[int, ShownPair],
    ) -> ShownPair | None:
        """Claim the rater's next pair whose clips are both in the store, loading them."""
        assert self.router is not None
        for _ in range(4):
            claimed = self.router.claim(
                self.rater_id, lease_seconds, exclude=exclude | not_ready, with_clips=True
            )
            if claimed is None:
                return None
            pair, is_check = claimed
            assert pair.id is not None and pair.left.id is not None and pair.right.id is not None
            if pair.id in known and known[pair.id].is_check == is_check:
                return known[pair.id]
            # (A gold pair the rater just answered as a check can come next from the queue, as a
            # label: it must not keep the check's ShownPair, whose answers would go to the check.)
            clips = self.store.get_clips([pair.left.id, pair.right.id])
            if pair.left.id in clips and pair.right.id in clips:
                (left, mime), (right, _) = clips[pair.left.id], clips[pair.right.id]
                seconds = max(pair.left.length, pair.right.length) / self._fps
                return ShownPair(pair.id, pair.left.id, pair.right.id, left, right, mime, seconds, is_check)
            # Its clips disappeared between the two reads (or never were): try another one.
            if not is_check:
                self.store.release(pair.id, self.rater_id)
            not_ready.add(pair.id)
        return None

    def _waiting_pairs(self) -> int:
        counts = self.store.counts()
        return counts["pending"] + counts["claimed"]

    # -- actions from the browser ---------------------------------------------------------------

    def apply(self, actions: Iterable[Any]) -> None:
        """Process the browser's unacknowledged actions in order, each sequence number once.

        Each action is a dict: ``{"seq": int, "type": "answer", "pair_id": int, "choice": str,
        "response_time_s": float}`` or ``{"seq": int, "type": "undo"}``. Malformed entries (no
        integer ``seq`` in 1..2**53, not a dict) are skipped; an unknown ``type`` is acknowledged
        and ignored. At most :data:`MAX_ACTIONS_PER_MESSAGE` actions are handled per call (the
        lowest sequence numbers; the browser re-sends the rest). ``acked_seq`` is raised past
        every action handled, including failed ones (their notice tells the rater what to do);
        after a database error it stays, so the browser sends the action again.

        The rater is always this session's; an action can only name a pair, and the store records
        an answer only for a pair leased to this rater (or returns their existing label).
        """
        items = []
        for action in actions if isinstance(actions, (list, tuple)) else []:
            if not isinstance(action, dict):
                continue
            seq = action.get("seq")
            if isinstance(seq, bool) or not isinstance(seq, int) or seq > MAX_SEQ:
                continue
            if seq > self.acked_seq:
                items.append(action)
        changed = False
        for action in sorted(items, key=lambda a: a["seq"])[:MAX_ACTIONS_PER_MESSAGE]:
            kind = action.get("type")
            try:
                if kind == "answer":
                    self._answer(action.get("pair_id"), action.get("choice"), action.get("response_time_s"))
                elif kind == "undo":
                    self._undo()
            except SQLAlchemyError as exc:
                log.warning("rater %s: database error on %s: %s", self.rater_id, kind, exc)
                self._notify("error", DB_TROUBLE)
                break
            self.acked_seq = int(action["seq"])
            changed = True
        if changed:
            self.last_activity = self.clock()
            self.refresh()

    def answer(self, pair_id: int, choice: Choice | str, response_time_s: float) -> None:
        """Answer one pair (as the browser would) and move on; problems become notices."""
        try:
            self._answer(pair_id, choice, response_time_s)
        except SQLAlchemyError as exc:
            log.warning("rater %s: database error on answer: %s", self.rater_id, exc)
            self._notify("error", DB_TROUBLE)
            return
        self.last_activity = self.clock()
        self.refresh()

    def undo(self) -> None:
        """Take back the rater's latest answer and show that pair again."""
        try:
            self._undo()
        except SQLAlchemyError as exc:
            log.warning("rater %s: database error on undo: %s", self.rater_id, exc)
            self._notify("error", DB_TROUBLE)
            return
        self.last_activity = self.clock()
        self.refresh()

    def _answer(self, pair_id: object, choice: object, response_time_s: object) -> None:
        # What the browser sent is untrusted: it is never echoed back, only checked.
        try:
            wanted = Choice(choice) if isinstance(choice, str) else None
        except ValueError:
            wanted = None
        if wanted is None:
            self._notify("error", "That answer was not one of the four choices; use the buttons or the arrow keys.")
            return
        if isinstance(pair_id, bool) or not isinstance(pair_id, int):
            self._notify("error", "That answer did not say which pair it was for; answer again.")
            return
        now = self.clock()
        shown = next((p for p in (self.current, self.next) if p is not None and p.pair_id == pair_id), None)
        if shown is not None and self._over_rate_limit(now):
            self._notify(
                "warning",
                f"That was more than {self.max_answers_per_minute} answers in a minute, so the last one "
                "was not saved. Take a breath, watch both clips, and answer this pair again.",
            )
            return
        claimed = clamp_response_time(response_time_s)
        # The server's own clock bounds the time: from when the pair reached the browser (or the
        # previous answer ended, whichever is later) to now.
        started = max(self.served_at.get(pair_id, now), self.answered_until)
        seconds = min(claimed, max(0.0, now - started))
        if shown.is_check if shown is not None else self._is_open_check(pair_id):
            self._answer_check(pair_id, wanted, seconds, started)
            return
        try:
            label = self.store.answer(pair_id, self.rater_id, wanted, seconds)
        except LeaseError:
            if pair_id in self.shown_ids:
                self._notify(
                    "warning",
                    "This pair was already answered by someone else (it was reserved for you too "
                    "long without an answer) -- here is the next one.",
                )
            else:
                self._notify("error", _NOT_YOURS)
            return
        except StoreError as exc:  # no such pair (or an id no pair can have)
            log.warning("rater %s: answer refused: %s", self.rater_id, exc)  # (exc cuts the id short)
            self._notify("error", _NOT_YOURS)
            return
        if label.choice is wanted and label.id is not None and label.id not in self.own_label_ids:
            self.own_label_ids = [*self.own_label_ids, label.id][-UNDO_DEPTH:]
            self._undo_order = [*self._undo_order, ("label", label.id)][-UNDO_DEPTH:]
            if self.rating_since is None:
                self.rating_since = started
            self.answered_until = started + seconds
            self._flag(label.id, seconds, claimed, shown)
        if label.choice is not wanted:
            self._notify(
                "info",
                f"You had already answered this pair ({_CHOICE_WORDS[label.choice]}), in another "
                "tab or before reloading; that answer was kept. Use Undo to change it.",
            )

    def _is_open_check(self, pair_id: int) -> bool:
        try:
            return self.store.is_open_check(pair_id, self.rater_id)
        except StoreError:  # an id no pair can have: answer() refuses it with the usual message
            return False

    def _answer_check(self, pair_id: int, wanted: Choice, seconds: float, started: float) -> None:
        """Record the answer to a gold check: it measures the rater and is not a label."""
        try:
            self.store.answer_check(pair_id, self.rater_id, wanted, seconds)
        except StoreError as exc:  # never served to this rater as a check
            log.warning("rater %s: check answer refused: %s", self.rater_id, exc)
            self._notify("error", _NOT_YOURS)
            return
        if pair_id not in self.own_check_ids:
            self.own_check_ids = [*self.own_check_ids, pair_id][-UNDO_DEPTH:]
            self._undo_order = [*self._undo_order, ("check", pair_id)][-UNDO_DEPTH:]
            if self.rating_since is None:
                self.rating_since = started
            self.answered_until = started + seconds

    def _over_rate_limit(self, now: float) -> bool:
        """Labels and checks alike: a burst of answers to checks is no more careful than one to labels."""
        since = now - 60.0
        checks = sum(c.answered_at >= since for c in self.store.rater_checks(self.rater_id))
        return self.store.count_labels_since(self.rater_id, since) + checks >= self.max_answers_per_minute

    def _flag(self, label_id: int, seconds: float, claimed: float, shown: ShownPair | None) -> None:
        """Mark what the server's clock says about this answer (data, never a deletion)."""
        if shown is not None and seconds < self.min_watch_fraction * shown.clip_seconds:
            self.store.flag_label(label_id, "too_fast", seconds)
        if claimed > seconds + TIME_TOLERANCE_S:
            self.store.flag_label(label_id, "time_cut", claimed)

    def _undo(self) -> None:
        if self._undo_order and self._undo_order[-1][0] == "check":
            pair_id = self._undo_order.pop()[1]
            self.own_check_ids = [i for i in self.own_check_ids if i != pair_id]
            check = self.store.undo_check(pair_id, self.rater_id)
            if check is not None:
                self._notify("success", f"Took back your answer ({_CHOICE_WORDS[check.choice]}); answer this pair again.")
                return
        label = self.store.undo_last(self.rater_id, self.lease_seconds, among=self.own_label_ids)
        if label is None:
            self._notify("info", "Nothing to undo: you have given no answers on this page yet.")
            return
        self.own_label_ids = [i for i in self.own_label_ids if i != label.id]
        self._undo_order = [entry for entry in self._undo_order if entry != ("label", label.id)]
        self._notify("success", f"Took back your answer ({_CHOICE_WORDS[label.choice]}); answer this pair again.")

    # -- housekeeping -------------------------------------------------------------------------

    def heartbeat(self) -> bool:
        """The page's periodic call while the tab is open: renew the shown pairs' leases (or fetch
        a pair if none is shown). ``idle_release_s`` after the rater's last action (answer, undo,
        sign-in, "I'm back") the session pauses and gives its pairs back. A session that waited
        longer than that for pairs (the trainer was busy) still gets them when they come, but
        must answer within :data:`WAITING_GRACE_S` or pause: so an abandoned tab holds pairs
        others let go for that long at most. A closed tab stops calling, and its leases run out
        after ``lease_seconds``. Returns True if what the page shows changed."""
        if self.paused:
            return False
        now = self.clock()
        if now - self.last_activity <= self.idle_release_s:
            return self.refresh()
        if self.current is None and self.next is None:
            changed = self.refresh()
            if self.current is not None:
                self.last_activity = now - self.idle_release_s + min(WAITING_GRACE_S, self.idle_release_s)
            return changed
        self.pause()
        return True

    keepalive = heartbeat

    def pause(self) -> None:
        """Give the pairs back and hold none until :meth:`resume` (idle, or taking a break)."""
        self.release_all()
        self.paused = True
        self.served_at.clear()
        self.rating_since = None

    def break_due(self, every_s: float) -> bool:
        """True once the rater has rated for ``every_s`` seconds without a break (0: never)."""
        return every_s > 0 and self.rating_since is not None and self.clock() - self.rating_since >= every_s

    def keep_going(self) -> None:
        """The rater saw the break reminder and goes on: remind again after another stretch."""
        self.rating_since = self.clock()

    def resume(self) -> None:
        """The rater is back: fetch pairs again."""
        self.paused = False
        self.last_activity = self.clock()
        self.refresh()

    def labels_today(self) -> int:
        """The rater's answers since local midnight ("Your answers today"): live labels and
        answered checks (a check is no label, but it is an answer the rater gave; a rater on
        probation or flagged would otherwise see their count stand still or fall back)."""
        since = start_of_today(self.clock())
        labels = sum(1 for label in self.store.labels(rater_id=self.rater_id) if label.created_at >= since)
        return labels + sum(1 for check in self.store.rater_checks(self.rater_id) if check.answered_at >= since)

    def take_notices(self) -> list[Notice]:
        notices, self.notices = self.notices, []
        return notices

    def _notify(self, level: NoticeLevel, text: str) -> None:
        notice = Notice(level, text)
        if notice not in self.notices:  # a flood of bad actions makes one message, not hundreds
            self.notices = [*self.notices, notice][-MAX_NOTICES:]


_NOT_YOURS = "That answer was for a pair that is not shown to you, so it was not saved; answer the pair on screen."


_CHOICE_WORDS = {
    Choice.LEFT: "left is better",
    Choice.RIGHT: "right is better",
    Choice.EQUAL: "about the same",
    Choice.CANT_TELL: "can't tell",
}
