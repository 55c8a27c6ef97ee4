"""Per-rater reliability, estimated jointly with the reward model (Dawid-Skene-style EM over Bradley-Terry).

The rater model
---------------
Rater ``r`` answers a pair honestly with probability ``1 - eps_r`` -- picking by Bradley-Terry on
the learned returns -- and otherwise makes a mistake and gives the opposite answer::

    P(right | D, r) = (1 - eps_r) * sigmoid(D) + eps_r * (1 - sigmoid(D)),   D = R_right - R_left

This is B-Pref's "mistake" teacher. The plain loss's global ``random_response`` ``rr`` is the
special case ``eps = rr / 2`` for every rater. A careful rater has ``eps`` near 0, a rater clicking
at random ``0.5``, an adversarial one (always the worse clip) near 1.

Fitting (EM)
------------
- E-step (:func:`estimate_error_rates`): with the reward model's *out-of-bag* prediction ``p`` of
  each label (the ensemble members that did not train on it, so the model cannot vouch for a label
  by having memorised it), the posterior that the label is honest is
  ``h = (1-eps) s / ((1-eps) s + eps (1-s))`` where ``s`` is the probability Bradley-Terry gives
  the label's answer. Labels on gold pairs are anchors: their honesty is known (``h = 1`` when they
  agree with the gold answer, else 0). ``eps_r`` is then the posterior mean under a Beta prior
  with mean ``prior_error_rate`` and the weight of ``prior_labels`` labels, so a rater with few
  labels keeps (nearly) the prior. A few inner iterations make ``h`` and ``eps`` consistent.
- M-step: the reward model takes gradient steps on the marginal likelihood above with each label's
  rater's ``eps`` (``RewardTrainer``), i.e. on ``h``-weighted Bradley-Terry in expectation.
  EQUAL labels carry no information on mistakes (B-Pref never flips them) and only enter the loss.

Adversarial and random raters: down-weighted, not flipped
---------------------------------------------------------
In the loss ``eps`` is capped at 0.5, where a label's gradient is exactly 0 (a coin carries no
information), and a rater whose estimate reaches ``flag_error_rate`` is *flagged*: their labels get
weight 0 in the reward fit. Their labels stay in the store and keep being scored at every fit, so
a rater who improves is unflagged again. We deliberately do not flip an adversarial rater's
answers (which ``eps -> 1`` would allow): that trusts the sign of an estimate made from the model
itself, and a careful rater whom the model misjudges early on would then push the model the wrong
way with full weight. If every rater would be flagged, none is (the model cannot be learnt from
nobody; the capped ``eps`` still down-weights them all).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

__all__ = ["RaterEstimate", "RaterLabels", "estimate_error_rates", "loss_error_rates"]

MAX_LOSS_ERROR_RATE = 0.5  # a coin: the label's gradient is 0 -- never flipped (see the module docstring)
_INNER_ITERATIONS = 25
_INTERVAL = 0.9  # central posterior interval reported with each estimate


@dataclass(frozen=True)
class RaterLabels:
    """The labels the reliability model sees, one row per label (several per pair when several
    raters answered it).

    Attributes:
        rater_index: ``(N,)`` int, index into ``rater_ids``.
        target: ``(N,)`` 0.0 left, 1.0 right, 0.5 equal.
        gold_target: ``(N,)`` the gold answer of the label's pair as a target, nan if not gold.
        weight: ``(N,)`` >= 0, the label's own weight (1.0; less for an answer flagged e.g. as
            faster than the clips can be watched).
        rater_ids: the raters, in index order.
    """

    rater_index: np.ndarray
    target: np.ndarray
    gold_target: np.ndarray
    weight: np.ndarray
    rater_ids: tuple[str, ...]


@dataclass(frozen=True)
class RaterEstimate:
    """One rater's estimated reliability, as stored in the run's ``rater_reliability`` meta.

    Attributes:
        rater_id: who.
        labels: live LEFT/RIGHT/EQUAL labels of this rater seen by the fit.
        gold_labels, gold_correct: of those, on gold pairs (LEFT/RIGHT gold), and how many agreed.
        error_rate: estimated probability ``eps`` that an answer is a mistake (posterior mean).
        error_rate_low, error_rate_high: 90 % posterior interval of ``eps``.
        flagged: ``error_rate >= flag_error_rate``: their labels have weight 0 in the fit.
        weight: the factor ``(1 - 2 * min(eps, 0.5))`` by which their answers move the reward
            model relative to a perfect rater's (0 when flagged).
    """

    rater_id: str
    labels: int
    gold_labels: int
    gold_correct: int
    error_rate: float
    error_rate_low: float
    error_rate_high: float
    flagged: bool
    weight: float

    def to_json(self) -> dict:
        return asdict(self)


def estimate_error_rates(
    labels: RaterLabels,
    p_right: np.ndarray,
    *,
    prior_error_rate: float,
    prior_labels: float,
    flag_error_rate: float,
    start: np.ndarray | None = None,
) -> list[RaterEstimate]:
    """The E-step and the ``eps`` update: each rater's error rate given the model's predictions.

    Args:
        labels: the labels (see :class:`RaterLabels`).
        p_right: ``(N,)`` the reward model's (out-of-bag) P(right is better) for each label's pair.
        prior_error_rate: mean of the Beta prior on ``eps`` (in (0, 1)).
        prior_labels: its weight in labels (> 0).
        flag_error_rate: raters at or above this estimate are flagged.
        start: ``(R,)`` the previous estimates to start the inner iterations from (default: prior).

    Returns:
        One :class:`RaterEstimate` per rater, in ``labels.rater_ids`` order.
    """
    n_raters = len(labels.rater_ids)
    p = np.clip(np.asarray(p_right, dtype=np.float64), 1e-6, 1 - 1e-6)
    target = labels.target
    decided = (target != 0.5) & (labels.weight > 0)
    gold = decided & np.isin(labels.gold_target, (0.0, 1.0))
    free = decided & ~gold
    # Probability that an honest rater gives the answer this label gives.
    s = np.where(target == 1.0, p, 1.0 - p)
    known_honest = (labels.target == labels.gold_target).astype(np.float64)
    a = prior_error_rate * prior_labels
    b = (1.0 - prior_error_rate) * prior_labels
    idx = labels.rater_index
    n_decided = np.bincount(idx[decided], minlength=n_raters).astype(np.float64)
    mistakes_gold = np.bincount(idx[gold], weights=1.0 - known_honest[gold], minlength=n_raters)
    eps = np.full(n_raters, prior_error_rate) if start is None else np.clip(np.asarray(start, dtype=np.float64), 1e-6, 1 - 1e-6)
    honest = np.zeros_like(s)
    for _ in range(_INNER_ITERATIONS):
        e = eps[idx]
        honest = (1.0 - e) * s / ((1.0 - e) * s + e * (1.0 - s))
        mistakes = mistakes_gold + np.bincount(idx[free], weights=1.0 - honest[free], minlength=n_raters)
        new = (mistakes + a) / (n_decided + a + b)
        converged = np.max(np.abs(new - eps)) < 1e-6
        eps = new
        if converged:
            break
    mistakes = mistakes_gold + np.bincount(idx[free], weights=1.0 - honest[free], minlength=n_raters)
    low = stats.beta.ppf((1 - _INTERVAL) / 2, a + mistakes, b + n_decided - mistakes)
    high = stats.beta.ppf((1 + _INTERVAL) / 2, a + mistakes, b + n_decided - mistakes)
    flagged = eps >= flag_error_rate
    if flagged.all():
        flagged[:] = False  # nobody left to learn from: keep everyone, down-weighted by their eps
    n_gold = np.bincount(idx[gold], minlength=n_raters)
    gold_correct = np.bincount(idx[gold], weights=known_honest[gold], minlength=n_raters)
    n_labels = np.bincount(idx, minlength=n_raters)
    return [
        RaterEstimate(
            rater_id=rater,
            labels=int(n_labels[r]),
            gold_labels=int(n_gold[r]),
            gold_correct=int(round(gold_correct[r])),
            error_rate=float(eps[r]),
            error_rate_low=float(low[r]),
            error_rate_high=float(high[r]),
            flagged=bool(flagged[r]),
            weight=0.0 if flagged[r] else float(1.0 - 2.0 * min(eps[r], MAX_LOSS_ERROR_RATE)),
        )
        for r, rater in enumerate(labels.rater_ids)
    ]


def loss_error_rates(labels: RaterLabels, estimates: Sequence[RaterEstimate] | None, prior_error_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-label ``(eps, weight)`` for the loss: the rater's ``eps`` capped at 0.5, and the
    label's weight (0 for a flagged rater). Without estimates yet every rater has the prior."""
    n_raters = len(labels.rater_ids)
    eps = np.full(n_raters, prior_error_rate)
    keep = np.ones(n_raters)
    if estimates is not None:
        by_id = {e.rater_id: e for e in estimates}
        for r, rater in enumerate(labels.rater_ids):
            if rater in by_id:
                eps[r] = by_id[rater].error_rate
                keep[r] = 0.0 if by_id[rater].flagged else 1.0
    eps = np.minimum(eps, MAX_LOSS_ERROR_RATE)
    return eps[labels.rater_index], labels.weight * keep[labels.rater_index]
