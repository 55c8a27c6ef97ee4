"""A simulated teacher at human pace: it answers through the store on a clock, as a person does.

:class:`ClockRater` runs in a background thread with its own store connection and does what the
rater app does for a person: claim the next pair (a lease), look at it for a while, answer it with
its rater id and the time it took. The trainer cannot tell it from people: the run is paced by its
answers exactly as by a person's (``when_behind``), so a human run's timing can be measured without
people. Any :class:`~prefloop.teachers.Teacher` decides the answers, e.g. a B-Pref teacher that errs
on 10 % of pairs.

Response times: ``answer_seconds * exp(sigma * z)`` with ``z`` standard normal (log-normal, median
``answer_seconds``; ``sigma=0`` is exactly ``answer_seconds`` every time), from a seeded generator.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable

import numpy as np

from prefloop.store import LeaseError, PreferenceStore
from prefloop.teachers.base import Teacher
from prefloop.teachers.labeling import PairRouter
from prefloop.types import Choice, Segment

log = logging.getLogger("prefloop")


class RaterStoppedError(RuntimeError):
    """The simulated rater's thread died; the message says why."""


class ClockRater:
    """Answers a run's pairs through the store, one at a time, taking human-like time for each: a
    :class:`~prefloop.teachers.base.StoreTeacher` (``TrainConfig(answer_seconds=...)`` wraps the
    run's teacher, or each member of a crowd, in one).

    Args:
        teacher: decides each answer; its ``rater_id`` is stored with every label.
        answer_seconds: median seconds per answer, ``> 0``.
        sigma: log-normal spread of the times, ``>= 0``.
        seed: seeds the response times.
        poll_s: how often it looks for a new pair when none is waiting.
        lease_seconds: the lease it takes on a pair, as the app does.
        router_for: builds, from the thread's store, what hands the rater their next pair -- a
            pair from the queue or a check (:class:`prefloop.teachers.labeling.PairRouter`; the
            loop passes :meth:`prefloop.training.rater_checks.RaterRouter.for_run`, the rater
            app's rules); None: pairs from the queue only.
    """

    def __init__(self, teacher: Teacher, answer_seconds: float, sigma: float = 0.0, seed: int = 0,
                 poll_s: float = 0.2, lease_seconds: float = 120.0,
                 router_for: Callable[[PreferenceStore], PairRouter] | None = None):
        if not (math.isfinite(answer_seconds) and answer_seconds > 0 and math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"answer_seconds must be > 0 and sigma >= 0, got {answer_seconds}, {sigma}")
        self.teacher = teacher
        self.answer_seconds, self.sigma, self.poll_s, self.lease_seconds = answer_seconds, sigma, poll_s, lease_seconds
        self.router_for = router_for
        self._router: PairRouter | None = None
        self._rng = np.random.default_rng([seed, 11])
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.answered = 0
        self.error: BaseException | None = None

    @property
    def rater_id(self) -> str:
        """The answering teacher's id: a clock rater is a :class:`~prefloop.teachers.base.Teacher` too."""
        return self.teacher.rater_id

    def compare(self, left: Segment, right: Segment) -> Choice:
        """The teacher's answer at once, without the clock (the store path is :meth:`start`)."""
        return self.teacher.compare(left, right)

    def response_time(self) -> float:
        """The seconds the next answer takes."""
        return float(self.answer_seconds * math.exp(self.sigma * self._rng.standard_normal())) if self.sigma else self.answer_seconds

    @property
    def rater_ids(self) -> tuple[str]:
        """The one rater id it answers under (the rater-checks router counts it among the run's raters)."""
        return (self.teacher.rater_id,)

    def start(self, store_url: str, run_name: str) -> "ClockRater":
        """Start answering the pairs of ``run_name`` in the store at ``store_url`` (opened anew in
        the thread, as an app process would); returns at once, and the rater itself."""
        if self._thread is not None:
            raise RuntimeError(f"the simulated rater {self.rater_id!r} was started already")
        self._thread = threading.Thread(target=self._run, args=(store_url, run_name),
                                        name=f"clock-rater-{self.rater_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current answer (a pair it holds unanswered is given back); idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)

    def check_alive(self) -> None:
        """Raise :class:`RaterStoppedError` if the thread died (the trainer would wait forever)."""
        if self.error is not None:
            raise RaterStoppedError(f"the simulated rater {self.teacher.rater_id!r} stopped: {self.error!r}")

    def _run(self, store_url: str, run_name: str) -> None:
        try:
            with PreferenceStore(store_url, run_name=run_name) as store:
                self._router = self.router_for(store) if self.router_for is not None else None
                while not self._stop.is_set():
                    self._answer_one(store)
        except BaseException as exc:  # kept for check_alive: the trainer must not wait on a dead rater
            self.error = exc
            log.error("simulated rater %s stopped: %r", self.teacher.rater_id, exc)

    def _answer_one(self, store: PreferenceStore) -> None:
        rater_id = self.teacher.rater_id
        if self._router is not None:
            claimed = self._router.claim(rater_id, self.lease_seconds)
        else:
            queued = store.claim_next(rater_id, self.lease_seconds)
            claimed = None if queued is None else (queued, False)
        if claimed is None:
            self._stop.wait(self.poll_s)
            return
        pair, is_check = claimed
        seconds = self.response_time()
        if self._stop.wait(seconds):
            if not is_check:  # a check holds no lease; it waits open for the rater
                store.release(int(pair.id), rater_id)  # type: ignore[arg-type]
            return
        choice = self.teacher.compare(pair.left, pair.right)
        if is_check:
            store.answer_check(int(pair.id), rater_id, choice, seconds)  # type: ignore[arg-type]
            return
        try:
            store.answer(int(pair.id), rater_id, choice, seconds)  # type: ignore[arg-type]
            self.answered += 1
        except LeaseError as exc:  # withdrawn (the run stopped using labels) or the lease ran out
            log.debug("simulated rater %s: answer not taken: %s", rater_id, exc)
