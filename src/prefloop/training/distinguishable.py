"""Which pairs a person can answer at all: two clips must show something that tells them apart.

Two kinds of pair teach a person nothing and cost them seconds each, so they are never asked:

- both episodes *terminate early* in their segments (within the first ``early_end_fraction`` of
  the steps): the clips show two brief starts and then the end, e.g. two CartPole poles that both
  fall within 0.1-0.3 s. "Both failed at once" is not a preference;
- both segments show the *same observations* step for step (same length, same termination), e.g.
  two episodes stuck in the same state: the clips look identical.

Env-independent: it reads only the segments' observations, valid lengths and termination flags.
"""

from __future__ import annotations

import math

import numpy as np

from prefloop.types import Segment

EARLY_END_FRACTION = 0.2


def ends_early(segment: Segment, early_end_fraction: float = EARLY_END_FRACTION) -> bool:
    """The segment's episode terminated within its first ``early_end_fraction`` of steps."""
    return bool(segment.terminated) and segment.n_valid <= max(1, math.ceil(early_end_fraction * segment.length))


def indistinguishable(left: Segment, right: Segment, early_end_fraction: float = EARLY_END_FRACTION) -> bool:
    """True when a person watching the two clips could not tell them apart (see the module doc)."""
    if ends_early(left, early_end_fraction) and ends_early(right, early_end_fraction):
        return True
    if left.n_valid != right.n_valid or bool(left.terminated) != bool(right.terminated):
        return False
    n = left.n_valid
    a, b = np.asarray(left.obs[:n]), np.asarray(right.obs[:n])
    return a.shape == b.shape and bool(np.array_equal(a, b))
