"""Per-rater reliability, estimated jointly with the reward model (Dawid-Skene-style EM over Bradley-Terry).

The rater model
---------------
Rater ``r`` answers a pair honestly with probability ``1 - eps_r`` -- picking by Bradley-Terry on
the learned returns at their own temperature ``beta_r`` -- and otherwise makes a mistake and gives
the opposite answer::

    P(right | D, r) = (1 - eps_r) * sigmoid(beta_r * D) + eps_r * sigmoid(-beta_r * D),   D = R_right - R_left

This is B-Pref's "stochastic" and "mistake" teachers in one. The plain loss's global
``random_response`` ``rr`` is the special case ``eps = rr / 2``, ``beta = 1`` for every rater. A
careful rater has ``eps`` near 0, a rater clicking at random ``0.5``, an adversarial one (always
the worse clip) near 1. ``beta_r`` is relative to the reward model's own scale: a rater above 1
tells close clips apart more sharply than the model's average rater, one below 1 answers close
calls more at random.

Fitting (EM)
------------
- E-step (:func:`estimate_error_rates`): given the reward model's *out-of-bag* prediction of each
  label's pair (the ensemble members that did not train on it, so the model cannot vouch for a
  label by having memorised it), each rater's posterior over ``(eps, beta)`` is computed exactly on
  a grid (100 values of ``eps`` times 25 of ``log beta``), under a Beta prior on ``eps`` (mean
  ``prior_error_rate``, the weight of ``prior_labels`` labels) and a normal prior on ``log beta``
  (mean 0, ``temperature_prior_sd``), so a rater with few labels keeps about ``eps`` = the prior
  and ``beta`` = 1: the temperature moves only where the data supports it. Labels on gold pairs
  are anchors: whether they are mistakes is known. The estimates are the posterior means (``beta``:
  of ``log beta``) with 90 % central intervals of the marginals.
- M-step: the reward model takes gradient steps on the marginal likelihood above with each label's
  rater's ``eps`` and ``beta`` (``RewardTrainer``). The trainer alternates the two steps several
  times within each fit (``rater_estimates_per_fit``): with one E-step per fit, the first fit of a
  run (a few labels per rater, a model trained on everyone alike) stopped in a state where an
  adversarial rater looked nearly as good as the careful ones, and the policy learnt from that
  reward before the next round could correct it (docs/benchmarks.md, Pendulum crowd).
  EQUAL labels carry no information on mistakes (B-Pref never flips them) and only enter the loss.

Adversarial and random raters: down-weighted, not flipped
---------------------------------------------------------
In the loss ``eps`` is capped at 0.5, where a label's gradient is exactly 0 (a coin carries no
information), and a rater whose estimate (:func:`effective_error_rate`, which counts a
temperature below 1 as erring more) reaches ``flag_error_rate`` is *flagged*: their labels get
weight 0 in the reward fit. Their labels stay in the store and keep being scored at every fit, so
a rater who improves is unflagged again. We deliberately do not flip an adversarial rater's
answers (which ``eps -> 1`` would allow): that trusts the sign of an estimate made from the model
itself, and a careful rater whom the model misjudges early on would then push the model the wrong
way with full weight. If every rater would be flagged, none is (the model cannot be learnt from
nobody; the capped ``eps`` still down-weights them all).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields

import numpy as np

__all__ = ["RaterEstimate", "RaterLabels", "estimate_error_rates", "effective_error_rate", "loss_error_rates", "mostly_contradicted"]

MAX_LOSS_ERROR_RATE = 0.5  # a coin: the label's gradient is 0 -- never flipped (see the module docstring)
_INTERVAL = 0.9  # central posterior interval reported with each estimate
# The posterior grid: eps at bin midpoints of [0, 1], log beta evenly over [1/8, 8] (beyond that a
# rater is as good as deterministic or as random as a coin, which eps already expresses).
_EPS_GRID = (np.arange(100) + 0.5) / 100
_LOG_BETA_GRID = np.linspace(math.log(1 / 8), math.log(8), 25)


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
        checks: ``(R, 2)`` per rater, gold checks answered left or right (a gold pair asked only
            to measure the rater, :mod:`prefloop.store.rater_checks`) and how many of those were
            wrong; None if there are none. Evidence on the rater only: checks are not rows.
    """

    rater_index: np.ndarray
    target: np.ndarray
    gold_target: np.ndarray
    weight: np.ndarray
    rater_ids: tuple[str, ...]
    checks: np.ndarray | None = None


@dataclass(frozen=True)
class RaterEstimate:
    """One rater's estimated reliability, as stored in the run's ``rater_reliability`` meta and in
    checkpoints.

    Attributes:
        rater_id: who.
        labels: live LEFT/RIGHT/EQUAL labels of this rater seen by the fit.
        gold_labels, gold_correct: answers on gold pairs (LEFT/RIGHT gold): the rater's labels
            there and their gold checks; and how many agreed with the known answer.
        error_rate: estimated probability ``eps`` that an answer is a mistake (posterior mean).
        error_rate_low, error_rate_high: 90 % posterior interval of ``eps``.
        flagged: the effective error rate (:func:`effective_error_rate` of ``eps`` and ``beta``)
            reaches ``flag_error_rate``: their labels have weight 0 in the fit.
        weight: the factor ``(1 - 2 * min(eps, 0.5))`` by which their answers move the reward
            model relative to a perfect rater's (0 when flagged).
        temperature: estimated ``beta`` (exp of the posterior mean of ``log beta``), relative to
            the reward model's scale; 1 = the prior (few labels, or no evidence either way).
        temperature_low, temperature_high: its 90 % posterior interval.
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
    temperature: float = 1.0
    temperature_low: float = 1.0
    temperature_high: float = 1.0

    @property
    def effective_error_rate(self) -> float:
        """``eps`` with a temperature below 1 counted as erring more (:func:`effective_error_rate`);
        what flagging compares with ``flag_error_rate`` and what ranks raters."""
        return float(effective_error_rate(np.array(self.error_rate), np.array(self.temperature)))

    def to_json(self) -> dict:
        return {**asdict(self), "effective_error_rate": self.effective_error_rate}

    @classmethod
    def from_json(cls, data: Mapping) -> RaterEstimate:
        """The inverse of :meth:`to_json`; estimates written before temperatures existed get 1.

        Raises:
            ValueError: a field is missing or has the wrong type or range (one line naming it).
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a rater estimate must be a JSON object, got {type(data).__name__}")
        values = {}
        for f in fields(cls):
            if f.name not in data:
                if f.default is not MISSING:  # the temperatures: older estimates have none
                    continue
                raise ValueError(f"rater estimate lacks {f.name!r}")
            value = data[f.name]
            kind = {"str": str, "int": int, "bool": bool}.get(str(f.type), float)
            if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                values[f.name] = float(value)
            elif kind is not float and type(value) is kind:
                values[f.name] = value
            else:
                raise ValueError(f"rater estimate field {f.name!r} has {value!r}, expected {kind.__name__}")
        estimate = cls(**values)
        if not (0 <= estimate.error_rate <= 1 and estimate.temperature > 0):
            raise ValueError(f"rater estimate of {estimate.rater_id!r} is out of range (error rate "
                             f"{estimate.error_rate}, temperature {estimate.temperature})")
        return estimate


def estimate_error_rates(
    labels: RaterLabels,
    p_right: np.ndarray,
    *,
    prior_error_rate: float,
    prior_labels: float,
    flag_error_rate: float,
    temperature_prior_sd: float = 0.5,
) -> list[RaterEstimate]:
    """The E-step: each rater's posterior over ``(eps, beta)`` given the model's predictions.

    Args:
        labels: the labels (see :class:`RaterLabels`).
        p_right: ``(N,)`` the reward model's (out-of-bag) P(right is better) for each label's pair;
            its logit is the model's return difference ``D``.
        prior_error_rate: mean of the Beta prior on ``eps`` (in (0, 1)).
        prior_labels: its weight in labels (> 0).
        flag_error_rate: raters at or above this estimate are flagged.
        temperature_prior_sd: standard deviation of the normal prior on ``log beta`` (> 0; small
            keeps every rater at ``beta = 1``).

    Returns:
        One :class:`RaterEstimate` per rater, in ``labels.rater_ids`` order.
    """
    # Imported here, not at the top: scipy costs a second of every process's start (the CLI's, the
    # background fit worker's) and only runs with several raters get this far.
    from scipy import special, stats

    n_raters = len(labels.rater_ids)
    p = np.clip(np.asarray(p_right, dtype=np.float64), 1e-9, 1 - 1e-9)
    target, weight, idx = labels.target, labels.weight, labels.rater_index
    decided = (target != 0.5) & (weight > 0)
    gold = decided & np.isin(labels.gold_target, (0.0, 1.0))
    free = decided & ~gold
    # The model's return difference in favour of the answer this label gives.
    d_answer = np.where(target == 1.0, 1.0, -1.0) * special.logit(p)
    honest_on_gold = (target == labels.gold_target).astype(np.float64)
    a = prior_error_rate * prior_labels
    b = (1.0 - prior_error_rate) * prior_labels
    log_eps, log_keep = np.log(_EPS_GRID), np.log1p(-_EPS_GRID)
    prior = (
        stats.beta.logpdf(_EPS_GRID, a, b)[:, None]
        - 0.5 * (_LOG_BETA_GRID[None, :] / temperature_prior_sd) ** 2
    )  # (E, B)
    eps_mean = np.empty(n_raters)
    eps_low, eps_high = np.empty(n_raters), np.empty(n_raters)
    beta, beta_low, beta_high = np.empty(n_raters), np.empty(n_raters), np.empty(n_raters)
    for r in range(n_raters):
        mine_free, mine_gold = free & (idx == r), gold & (idx == r)
        w_free, w_gold = weight[mine_free], weight[mine_gold]
        log_post = prior.copy()
        # Gold answers: a mistake or not is known, whatever the temperature.
        mistakes_gold = float(np.sum(w_gold * (1.0 - honest_on_gold[mine_gold])))
        n_gold_answers = float(w_gold.sum())
        if labels.checks is not None:  # checks are gold answers too
            mistakes_gold += float(labels.checks[r, 1])
            n_gold_answers += float(labels.checks[r, 0])
        log_post += (mistakes_gold * log_eps + (n_gold_answers - mistakes_gold) * log_keep)[:, None]
        d = d_answer[mine_free]
        for j, log_beta in enumerate(_LOG_BETA_GRID):
            # log P(answer) = logaddexp(log(1-eps) + logsig(beta d), log(eps) + logsig(-beta d)), (E, n)
            honest = -np.logaddexp(0.0, -math.exp(log_beta) * d)
            mistaken = -np.logaddexp(0.0, math.exp(log_beta) * d)
            log_p = np.logaddexp(log_keep[:, None] + honest[None, :], log_eps[:, None] + mistaken[None, :])
            log_post[:, j] += log_p @ w_free
        post = np.exp(log_post - log_post.max())
        post /= post.sum()
        eps_marginal, beta_marginal = post.sum(1), post.sum(0)
        eps_mean[r] = float(eps_marginal @ _EPS_GRID)
        eps_low[r], eps_high[r] = _central_interval(_EPS_GRID, eps_marginal)
        beta[r] = math.exp(float(beta_marginal @ _LOG_BETA_GRID))
        low, high = _central_interval(_LOG_BETA_GRID, beta_marginal)
        beta_low[r], beta_high[r] = math.exp(low), math.exp(high)
    flagged = effective_error_rate(eps_mean, beta) >= flag_error_rate
    if flagged.all():
        flagged[:] = False  # nobody left to learn from: keep everyone, down-weighted by their eps
    n_gold = np.bincount(idx[gold], minlength=n_raters)
    gold_correct = np.bincount(idx[gold], weights=honest_on_gold[gold], minlength=n_raters)
    if labels.checks is not None:
        n_gold = n_gold + labels.checks[:, 0].astype(np.int64)
        gold_correct = gold_correct + labels.checks[:, 0] - labels.checks[:, 1]
    n_labels = np.bincount(idx, minlength=n_raters)
    return [
        RaterEstimate(
            rater_id=rater,
            labels=int(n_labels[r]),
            gold_labels=int(n_gold[r]),
            gold_correct=int(round(gold_correct[r])),
            error_rate=float(eps_mean[r]),
            error_rate_low=float(min(eps_low[r], eps_mean[r])),
            error_rate_high=float(max(eps_high[r], eps_mean[r])),
            flagged=bool(flagged[r]),
            weight=0.0 if flagged[r] else float(1.0 - 2.0 * min(eps_mean[r], MAX_LOSS_ERROR_RATE)),
            temperature=float(beta[r]),
            temperature_low=float(min(beta_low[r], beta[r])),
            temperature_high=float(max(beta_high[r], beta[r])),
        )
        for r, rater in enumerate(labels.rater_ids)
    ]


def effective_error_rate(error_rate: np.ndarray, temperature: np.ndarray) -> np.ndarray:
    """The error rate of a ``beta = 1`` rater who tells close clips apart as well as one at
    ``(eps, beta)``: near a tie a label's pull on the model is ``(1 - 2 eps) * beta / 4``, so a
    rater below ``beta = 1`` counts as erring more. Flagging uses it because ``eps`` and ``beta``
    can trade off: a rater answering at random fits ``eps = 0.5`` or a small ``beta`` alike.
    A rater above ``beta = 1`` is not credited for it (``eps`` alone then decides)."""
    informative = (1.0 - 2.0 * np.asarray(error_rate)) * np.minimum(np.asarray(temperature), 1.0)
    return (1.0 - informative) / 2.0


def mostly_contradicted(estimates: Sequence[RaterEstimate]) -> bool:
    """The label-weighted mean error rate over all raters is above 0.5: the model disagrees with
    most answers, which under Dawid-Skene's assumption (the crowd as a whole beats a coin) means
    the model, not the crowd, is wrong."""
    n = sum(e.labels for e in estimates)
    return n > 0 and sum(e.labels * e.error_rate for e in estimates) / n > 0.5


def _central_interval(grid: np.ndarray, mass: np.ndarray) -> tuple[float, float]:
    """The ``_INTERVAL`` central interval of a distribution given as ``mass`` on ``grid`` points."""
    cdf = np.cumsum(mass)
    low = grid[min(int(np.searchsorted(cdf, (1 - _INTERVAL) / 2)), len(grid) - 1)]
    high = grid[min(int(np.searchsorted(cdf, (1 + _INTERVAL) / 2)), len(grid) - 1)]
    return float(low), float(high)


def loss_error_rates(
    labels: RaterLabels, estimates: Sequence[RaterEstimate] | None, prior_error_rate: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-label ``(eps, beta, weight)`` for the loss: the rater's ``eps`` capped at 0.5, their
    temperature, and the label's weight (0 for a flagged rater). Without estimates yet every rater
    has the prior (``eps = prior_error_rate``, ``beta = 1``)."""
    n_raters = len(labels.rater_ids)
    eps = np.full(n_raters, prior_error_rate)
    beta = np.ones(n_raters)
    keep = np.ones(n_raters)
    if estimates is not None:
        by_id = {e.rater_id: e for e in estimates}
        for r, rater in enumerate(labels.rater_ids):
            if rater in by_id:
                eps[r] = by_id[rater].error_rate
                beta[r] = by_id[rater].temperature
                keep[r] = 0.0 if by_id[rater].flagged else 1.0
    eps = np.minimum(eps, MAX_LOSS_ERROR_RATE)
    i = labels.rater_index
    return eps[i], beta[i], labels.weight * keep[i]
