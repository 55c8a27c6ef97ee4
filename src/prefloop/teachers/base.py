"""The :class:`Teacher` protocol: who answers "which of these two segments is better?".

Every teacher prefloop ships satisfies it -- simulated (B-Pref), crowd, fitted to a person,
recorded, and the clock rater that answers through the store at human pace -- and so can a user's
own object, passed as ``TrainConfig(teacher=my_teacher)``. People in the rater app answer the same
question asynchronously, through the store (``teacher="human"``), not through this call.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from prefloop.types import Choice, Segment

__all__ = ["Teacher"]


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
