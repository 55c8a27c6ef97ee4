"""The run's teachers who answer through the store in their own time (:class:`StoreTeacher`).

One path for all of them -- people in the rater app, a user's store teacher, and a simulated
teacher at human pace (``answer_seconds > 0``: the teacher, or each member of a crowd, wrapped in a
:class:`~prefloop.teachers.clock.ClockRater`): the learner gets no teacher and waits on the store,
and these are started once the store exists and stopped however the run ends.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence

from prefloop.teachers.base import StoreTeacher, Teacher
from prefloop.teachers.clock import ClockRater
from prefloop.training.config import TrainConfig
from prefloop.training.rater_checks import RaterRouter

__all__ = ["start_store_teachers", "store_teachers"]


def store_teachers(config: TrainConfig, teacher: Teacher | None) -> list[StoreTeacher]:
    """Who answers the run's pairs through the store: ``config.teacher`` when it is a store teacher;
    with ``answer_seconds > 0`` a :class:`ClockRater` around ``teacher`` (the teacher that would
    answer in this process), or around each member of a crowd, which then answer on their own
    clocks under their own ids, as people do; else nobody (``[]``)."""
    if isinstance(config.teacher, StoreTeacher):
        return [config.teacher]
    if config.answer_seconds <= 0 or teacher is None:
        return []
    members: Sequence[Teacher] = getattr(teacher, "members", None) or [teacher]
    router_for = functools.partial(RaterRouter.for_run, known_raters=[m.rater_id for m in members])
    return [
        ClockRater(member, config.answer_seconds, config.answer_seconds_sigma, seed=config.seed + 7919 * i,
                   router_for=router_for)
        for i, member in enumerate(members)
    ]


def start_store_teachers(
    teachers: Sequence[StoreTeacher], store_url: str, run_name: str, cleanup: contextlib.ExitStack
) -> Callable[[], None]:
    """Start each teacher on the run's store, its ``stop`` registered on ``cleanup`` first (so a
    teacher that fails part-way through ``start`` is stopped too); returns a check that raises when
    one of them died (their ``check_alive``, where they have one)."""
    checks: list[Callable[[], None]] = []
    for teacher in teachers:
        cleanup.callback(teacher.stop)
        teacher.start(store_url, run_name)
        check = getattr(teacher, "check_alive", None)
        if callable(check):
            checks.append(check)

    def check_all() -> None:
        for check in checks:
            check()

    return check_all
