"""Who answers "which of these two segments is better?": two protocols.

- :class:`Teacher` answers in this process, when asked: simulated (B-Pref), crowd, fitted to a
  person, recorded, or a user's own object, passed as ``TrainConfig(teacher=my_teacher)``.
- :class:`StoreTeacher` answers asynchronously, through the run's store, in its own time: people in
  the rater app (``prefloop.apps.teacher.RaterApp``), the clock rater
  (:class:`prefloop.teachers.clock.ClockRater`), or a user's bridge to a labelling service, passed
  the same way. The trainer only puts pairs into the store and waits for their answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from prefloop.types import Choice, Segment

__all__ = ["StoreTeacher", "Teacher", "rater_ids_of", "recorded_name"]


@runtime_checkable
class Teacher(Protocol):
    """Anything that labels pairs.

    Attributes:
        rater_id: stored with every label it gives (a non-empty string).

    Optional: ``set_return_scale(scale: float)`` is called before each label round with a
    typical segment return (B-Pref's thresholds use it); teachers without it are not called.
    """

    rater_id: str

    def compare(self, left: Segment, right: Segment) -> Choice:
        """Which of two segments is better: ``Choice.LEFT``, ``RIGHT``, ``EQUAL`` or ``CANT_TELL``.

        ``left.obs`` is ``(L, *obs_shape)``, ``left.actions`` ``(L, *act_shape)``,
        ``left.true_rewards`` ``(L,)`` float; steps from ``left.n_valid`` on are after the episode ended.
        """
        ...


@runtime_checkable
class StoreTeacher(Protocol):
    """Anything that answers a run's pairs through its store, in its own time (threads, processes,
    people): it claims pending pairs and stores answers with the public
    :class:`prefloop.store.PreferenceStore` API (``claim_next`` + ``answer``, or the rater-checks
    router :meth:`prefloop.training.rater_checks.RaterRouter.for_run`), from its own connection.

    The trainer calls :meth:`start` once the run's store exists, before it asks the first pairs, and
    :meth:`stop` when the run ends, however it ends (finished, Ctrl-C, an error). While it waits for
    answers it paces the policy as it does for people (``TrainConfig.when_behind``).

    Optional:
        ``check_alive() -> None``: raise (an exception saying why) once the teacher can no longer
            answer; called while the trainer waits for answers, which would otherwise never come.
        ``rater_ids: Sequence[str]``: the rater ids it answers under, when known in advance (a
            simulated crowd): rater checks then start with the second of them, as they do once
            people register. People who register in the app need none.
        ``recorded_as: str``: what ``config.json`` records as the run's teacher; only ``"human"``
            (people answer) is accepted -- the rater app's runs are recorded as ``prefloop run``'s
            always were, so ``--resume`` and every reader of runs see a human run. Without it the
            object is recorded as ``"object:module:Class"``, like any object of yours.
    """

    def start(self, store_url: str, run_name: str) -> None:
        """Begin answering: the run's store is at the SQLAlchemy URL ``store_url`` (it may hold a
        password; pass it on through the environment, never a command line) under ``run_name``.
        Returns at once; the answering happens elsewhere (a thread, a process, people)."""
        ...

    def stop(self) -> None:
        """The run is over: stop answering and release what :meth:`start` took (threads,
        processes, ports). Idempotent; called even when :meth:`start` failed part-way."""
        ...


def recorded_name(teacher: StoreTeacher) -> str | None:
    """The name ``config.json`` records for a store teacher (its ``recorded_as``), None if it has none."""
    name = getattr(teacher, "recorded_as", None)
    return name if isinstance(name, str) else None


def rater_ids_of(teachers: Sequence[StoreTeacher]) -> list[str]:
    """The rater ids the store teachers declared (``rater_ids``), each once, in order."""
    return list(dict.fromkeys(rater for teacher in teachers for rater in getattr(teacher, "rater_ids", None) or ()))
