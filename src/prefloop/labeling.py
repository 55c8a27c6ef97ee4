"""Asking for labels and collecting them, through the store, the same way for every teacher.

The trainer puts selected pairs into the store as pending; a simulated teacher then claims each
pair, compares its segments and answers it, exactly as a human rater does through the app. So the
store holds one history of labels whoever gave them, and a crashed run loses none.
"""

from __future__ import annotations

import time

from prefloop.store import PreferenceStore
from prefloop.teachers import Teacher


def answer_pending(store: PreferenceStore, teacher: Teacher, limit: int | None = None) -> int:
    """Let ``teacher`` answer pending pairs until none is left (or ``limit`` answered).

    Each answer is committed on its own, with the time the teacher took. Returns the number answered.
    """
    answered = 0
    while limit is None or answered < limit:
        pair = store.claim_next(teacher.rater_id)
        if pair is None:
            break
        started = time.perf_counter()
        choice = teacher.compare(pair.left, pair.right)
        store.answer(pair.id, teacher.rater_id, choice, time.perf_counter() - started)  # type: ignore[arg-type]
        answered += 1
    return answered
