"""When to ask for labels: more early, fewer later (Christiano et al. 2017).

A run asks for ``initial_fraction`` of its labels before the policy trains at all (on segments of
a random policy), then holds ``rounds`` more label rounds at evenly spaced env steps up to
``label_until`` of training (as in Christiano et al. and PEBBLE, feedback continues through
training: a reward model frozen early is exploited by the policy). The cumulative number of labels grows like the square root of time,
so early rounds, when the reward model is worst and the policy changes most, get the most labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ScheduleConfig:
    """Attributes:
    initial_fraction: share of the label budget asked for before policy training starts.
    rounds: number of label rounds after the initial one (each followed by reward-model training).
    label_until: fraction of the env steps by which every label has been asked for.
    """

    initial_fraction: float = 0.25
    rounds: int = 12
    # Labels keep coming until late: with labelling stopped at 60%, a CartPole policy that had
    # reached 496 drifted into states the frozen reward model misjudged and fell to 120.
    label_until: float = 0.9

    def __post_init__(self) -> None:
        if not 0.0 < self.initial_fraction <= 1.0:
            raise ValueError(f"initial_fraction must be in (0, 1], got {self.initial_fraction}")
        if self.rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {self.rounds}")
        if not 0.0 < self.label_until <= 1.0:
            raise ValueError(f"label_until must be in (0, 1], got {self.label_until}")


@dataclass(frozen=True)
class LabelRound:
    """Ask for labels so that ``cumulative_labels`` have been asked for once ``at_step`` is reached."""

    at_step: int
    cumulative_labels: int


def label_rounds(total_labels: int, total_steps: int, config: ScheduleConfig) -> list[LabelRound]:
    """The whole schedule of a run, the initial round (``at_step=0``) first.

    Rounds that would bring no new label are dropped, so every round asks for at least one.
    """
    initial = max(1, math.ceil(total_labels * config.initial_fraction)) if total_labels > 0 else 0
    rounds = [LabelRound(0, min(initial, total_labels))]
    for k in range(1, config.rounds + 1):
        progress = k / config.rounds
        cumulative = initial + (total_labels - initial) * math.sqrt(progress)
        at_step = int(round(progress * config.label_until * total_steps))
        rounds.append(LabelRound(at_step, int(round(cumulative))))
    kept: list[LabelRound] = []
    for r in rounds:
        if not kept or r.cumulative_labels > kept[-1].cumulative_labels:
            kept.append(r)
    return kept
