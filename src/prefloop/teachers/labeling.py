"""Asking for labels and collecting them, through the store, the same way for every teacher.

The trainer puts selected pairs into the store as pending; a simulated teacher then claims each
pair, compares its segments and answers it, exactly as a human rater does through the app. So the
store holds one history of labels whoever gave them, and a crashed run loses none.

A crowd (a teacher with ``members`` and an ``rng``, :class:`prefloop.teachers.crowd.CrowdTeacher`) answers
with each member under their own rater id: for each pair, members are tried in a random order and
the first who may still label it claims it.
"""

from __future__ import annotations

import time

from prefloop.store import PreferenceStore
from prefloop.teachers.base import Teacher


def answer_pending(store: PreferenceStore, teacher: Teacher, limit: int | None = None) -> int:
    """Let ``teacher`` (or each member of a crowd) answer pending pairs until none is left (or
    ``limit`` answered).

    Each answer is committed on its own, with the time the teacher took. Returns the number answered.
    """
    raters: list[Teacher] = list(getattr(teacher, "members", None) or [teacher])
    rng = getattr(teacher, "rng", None)
    answered = 0
    while limit is None or answered < limit:
        order = rng.permutation(len(raters)) if rng is not None and len(raters) > 1 else range(len(raters))
        for i in order:
            rater = raters[int(i)]
            pair = store.claim_next(rater.rater_id)
            if pair is not None:
                break
        else:
            break
        started = time.perf_counter()
        choice = rater.compare(pair.left, pair.right)
        store.answer(pair.id, rater.rater_id, choice, time.perf_counter() - started)  # type: ignore[arg-type]
        answered += 1
    return answered
