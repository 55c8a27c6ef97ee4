"""Asking for labels and collecting them, through the store, the same way for every teacher.

The trainer puts selected pairs into the store as pending; a simulated teacher then claims each
pair, compares its segments and answers it, exactly as a human rater does through the app. So the
store holds one history of labels whoever gave them, and a crashed run loses none.

A crowd (a teacher with ``members`` and an ``rng``, :class:`prefloop.teachers.crowd.CrowdTeacher`) answers
with each member under their own rater id: for each pair, members are tried in a random order and
the first who may still label it claims it.

With a ``router`` (:class:`prefloop.training.rater_checks.RaterRouter`), each rater gets what the
router hands them: a pair from the queue, or a gold check (answered with ``answer_check``; not a
label, so it does not count toward ``limit``), exactly as a person in the rater app does.
"""

from __future__ import annotations

import time
from typing import Protocol

from prefloop.store import PreferenceStore
from prefloop.teachers.base import Teacher
from prefloop.types import SegmentPair


class PairRouter(Protocol):
    """Hands a rater their next pair: ``(pair, is_check)``, or None when there is none for them.
    A queue pair is leased for ``lease_seconds``; a check holds no lease."""

    def claim(self, rater_id: str, lease_seconds: float = ...) -> tuple[SegmentPair, bool] | None: ...


def answer_pending(
    store: PreferenceStore, teacher: Teacher, limit: int | None = None, router: PairRouter | None = None
) -> int:
    """Let ``teacher`` (or each member of a crowd) answer pending pairs until none is left (or
    ``limit`` answered).

    Each answer is committed on its own, with the time the teacher took. Returns the number of
    labels given (gold checks a router hands out are answered too, but not counted).
    """
    raters: list[Teacher] = list(getattr(teacher, "members", None) or [teacher])
    rng = getattr(teacher, "rng", None)
    answered = 0
    while limit is None or answered < limit:
        order = rng.permutation(len(raters)) if rng is not None and len(raters) > 1 else range(len(raters))
        for i in order:
            rater = raters[int(i)]
            claimed = router.claim(rater.rater_id) if router is not None else store.claim_next(rater.rater_id)
            if claimed is not None:
                break
        else:
            break
        pair, is_check = claimed if isinstance(claimed, tuple) else (claimed, False)
        started = time.perf_counter()
        choice = rater.compare(pair.left, pair.right)
        if is_check:
            store.answer_check(pair.id, rater.rater_id, choice, time.perf_counter() - started)  # type: ignore[arg-type]
            continue
        store.answer(pair.id, rater.rater_id, choice, time.perf_counter() - started)  # type: ignore[arg-type]
        answered += 1
    return answered
