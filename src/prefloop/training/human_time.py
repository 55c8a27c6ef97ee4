"""How much of a person's time a run took, from the labels in its store.

- ``answer_s``: the sum of every answer's response time (retracted answers included): the time
  spent looking at clips and deciding.
- ``span_s``: from the first pair being asked to the last answer: how long someone had to be
  there. With a teacher that answers at once both are close to 0.
"""

from __future__ import annotations

from sqlalchemy import func, select

from prefloop.store import PreferenceStore, pairs_table


def human_time(store: PreferenceStore) -> dict[str, float]:
    """``{"answer_s", "span_s"}`` of the store's run (seconds)."""
    labels = store.labels(include_retracted=True)
    if not labels:
        return {"answer_s": 0.0, "span_s": 0.0}
    with store.read_transaction() as conn:
        first_asked = conn.scalar(select(func.min(pairs_table.c.created_at)).where(pairs_table.c.run_id == store.run_id))
    last_answer = max(label.created_at for label in labels)
    return {
        "answer_s": float(sum(label.response_time_s for label in labels)),
        "span_s": float(max(0.0, last_answer - float(first_asked if first_asked is not None else last_answer))),
    }
