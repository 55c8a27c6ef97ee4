"""Human answers pace the run: how far the policy may train ahead of the labels it has.

With people as the teacher (``when_behind="pace"``, the default), the label schedule is read both
ways. Forwards it says when pairs are asked (round ``k`` asks up to ``c_k`` pairs at env step
``s_k``); backwards it says how many env steps each *resolved* pair unlocks: the policy may train up
to the next round's step ``s_{k+1}`` while round ``k``'s pairs are being answered, and the steps in
between are unlocked label by label. The last round's pairs must all be answered by the middle of
the final stretch (between ``s_K`` and the end), so the policy trains on the last labels for at
least half of it. A slow rater makes the run take longer, never end on a reward model that has not
seen the answers.

The lead keeps the rater busy: the next round is reached (and its pairs asked and rendered) while
the rater still has ``slack`` pairs of this round to answer, and the trainer then waits for this
round. A pair counts as resolved once it is answered, withdrawn, or can never be shown (its clip
failed to render).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np

from prefloop.training.schedule import LabelRound

UNBOUNDED = sys.maxsize


class LabelPace:
    """The bound on the policy's env steps given how many pairs are resolved.

    Args:
        rounds: the run's label schedule (:func:`prefloop.training.schedule.label_rounds`), initial round first.
        total_steps: env steps of the whole run.
        start_labels: resolved pairs needed before the policy trains at all (at most ``rounds[0]``'s).
        slack: pairs of a round that may still be waiting when the policy reaches the next round's
            step (fewer in small rounds; none for the last round).
    """

    def __init__(self, rounds: Sequence[LabelRound], total_steps: int, start_labels: int, slack: int = 2):
        if not rounds:
            raise ValueError("a paced run needs a label schedule with at least one round")
        self.total_steps = int(total_steps)
        self.final_labels = rounds[-1].cumulative_labels
        gates = [r.at_step for r in rounds[1:]] + [(rounds[-1].at_step + self.total_steps) // 2]
        self.start_labels = max(0, min(int(start_labels), rounds[0].cumulative_labels))
        xs, before = [], self.start_labels
        for k, r in enumerate(rounds):
            room = 0 if k == len(rounds) - 1 else max(0, min(int(slack), r.cumulative_labels - before - 1))
            xs.append(float(r.cumulative_labels - room))
            before = r.cumulative_labels
        ys = [float(g) for g in gates]
        if self.start_labels < xs[0]:
            xs.insert(0, float(self.start_labels))
            ys.insert(0, 0.0)
        self._xs, self._ys = np.array(xs), np.maximum.accumulate(np.array(ys))

    def allowed_steps(self, resolved: int) -> int:
        """The env step the policy may train up to with ``resolved`` pairs resolved (no bound once
        every pair of the schedule is resolved: the last rollout may end past ``total_steps``)."""
        if resolved >= self.final_labels:
            return UNBOUNDED
        if resolved < self.start_labels:
            return 0
        return int(np.interp(resolved, self._xs, self._ys))

    def labels_needed(self, env_step: int) -> int:
        """The fewest resolved pairs that let the policy train past ``env_step``."""
        for resolved in range(self.start_labels, self.final_labels + 1):
            if self.allowed_steps(resolved) > env_step:
                return resolved
        return self.final_labels
