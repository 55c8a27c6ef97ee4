"""SURF's semi-supervised labels (Park et al. 2022): the reward ensemble labels the pairs it is sure about.

At each fit, random pairs of recent (unlabelled) segments are scored by the ensemble; those whose
ensemble-mean P(one side better) reaches the confidence threshold get that side as a hard
pseudo-label and join the *training* set of this fit only. They are never written to the store,
never shown to a rater, never validated on and never counted as labels: the store holds what people
(or the simulated teacher) answered, nothing else. Each pseudo pair carries ``extra["pseudo"] = True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prefloop.reward_models import RewardEnsemble
from prefloop.types import LabeledPair, Segment

# Candidate pairs scored per labelled pair (SURF trains on ~4 unlabelled per labelled sample).
CANDIDATES_PER_LABEL = 4
MAX_CANDIDATES = 2000


def pseudo_labels(
    model: RewardEnsemble,
    segments: Sequence[Segment],
    n_labels: int,
    confidence: float,
    rng: np.random.Generator,
) -> list[LabeledPair]:
    """Pseudo-labelled pairs among ``min(4 * n_labels, 2000)`` random pairs of ``segments`` whose
    ensemble-mean preference is at least ``confidence`` one way; target 1.0 (right) or 0.0 (left)."""
    if len(segments) < 2 or n_labels < 1:
        return []
    n = min(CANDIDATES_PER_LABEL * n_labels, MAX_CANDIDATES)
    left_idx = rng.integers(0, len(segments), size=n)
    right_idx = (left_idx + rng.integers(1, len(segments), size=n)) % len(segments)  # never the same segment
    lefts = [segments[i] for i in left_idx]
    rights = [segments[j] for j in right_idx]
    p_right = model.preference_probs(lefts, rights).mean(axis=0)
    sure = np.flatnonzero(np.maximum(p_right, 1.0 - p_right) >= confidence)
    return [
        LabeledPair(lefts[k], rights[k], 1.0 if p_right[k] > 0.5 else 0.0, pair_id=None,
                    extra={"pseudo": True, "p_right": float(p_right[k])})
        for k in sure.tolist()
    ]
