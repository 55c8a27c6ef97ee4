"""Fitting B-Pref's teacher model to a rater's labels by maximum likelihood, and replaying the fit.

Every stored segment keeps its true rewards, so a rater's answers can be explained by B-Pref's
simulated teacher (:mod:`prefloop.teachers`). For one rater's labels:

- **skip**: the rater answers "can't tell" when ``max(R_left, R_right) < t_skip``; ``t_skip`` is
  the threshold that misclassifies fewest answers (the ML threshold of a step model with a lapse
  rate). Reported as B-Pref's ``skip_threshold = t_skip / return_scale``.
- **equal**: among the other answers, EQUAL when ``|R_left - R_right| < t_equal``; the same way,
  ``equal_threshold = t_equal / |return_scale|``.
- **beta, gamma, epsilon**: on the LEFT/RIGHT answers,
  ``P(right) = (1 - eps) * sigmoid(beta * D_gamma) + eps * (1 - sigmoid(beta * D_gamma))`` with
  ``D_gamma = sum_t gamma**(L-1-t) (r_right[t] - r_left[t])``, maximised with a bounded truncated-Newton search from a few
  starts. ``beta`` at the upper bound means a deterministic rater (``beta = inf``). ``gamma`` is
  fitted too, but kept only where a likelihood-ratio test (95 %) prefers it to ``gamma = 1``:
  ``gamma`` and ``beta`` trade off against each other, so a free ``gamma`` on a far-sighted
  rater would bias ``beta``.

A threshold is fitted only "where the answers allow it": with no "can't tell" (EQUAL) answer the
rater has no skip (equal) threshold, reported as 0. ``return_scale`` is the mean true return of the
segments the rater was shown -- B-Pref scales its thresholds by the mean return of recent
segment-length pieces, which is what the shown segments are; the absolute thresholds are
reported too. Intervals are percentile bootstrap intervals (labels resampled with replacement and
everything refitted).

``fitted:PATH,rater=NAME`` (:func:`make_fitted_teacher`) is a :class:`SimulatedTeacher` with the
fitted parameters of rater ``NAME`` in the JSON ``prefloop raters fit --json PATH`` wrote; it
replays that person's behaviour in ``train`` and ``bench``.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import optimize

from prefloop.teachers.simulated import (
    SimulatedTeacher,
    TeacherConfig,
    TeacherConfigError,
)
from prefloop.types import Choice, Segment
from prefloop.untrusted import TooLargeError, read_users_text

if TYPE_CHECKING:
    from prefloop.store import PreferenceStore

FITTED_PREFIX = "fitted:"
SCHEMA = "prefloop.raters-fit/1"
MAX_FIT_FILE_CHARS = 16_000_000  # a few kB a rater: far above any real fit, below a mistaken --json /dev/zero
INTERVAL = 0.9
# beta * median |D| is searched in [1e-3, 1e3]: at the top the rater is deterministic.
_BETA_SCALED_BOUNDS = (1e-3, 1e3)
_GAMMA_BOUNDS = (0.05, 1.0)
_DETERMINISTIC_SCALED_BETA = 20.0  # beta * median |D| above which sigmoid is a step on most pairs
_LR_CRITICAL = 3.841  # chi-squared, 1 degree of freedom, 95 %
# Truncated Newton, not L-BFGS-B: as fast alone, and L-BFGS-B's multithreaded BLAS is several times
# slower on a loaded machine for these three-parameter problems.
_METHOD = "TNC"

__all__ = [
    "FITTED_PREFIX",
    "Estimate",
    "RaterAnswers",
    "RaterFit",
    "answers_from_store",
    "fit_rater",
    "fits_document",
    "load_fit",
    "make_fitted_teacher",
    "parse_fitted_spec",
]


@dataclass(frozen=True)
class RaterAnswers:
    """One rater's answers with the true rewards of what they compared.

    Attributes:
        rater_id: who.
        left, right: ``(N, L)`` true rewards of the two segments of each answered pair.
        choice: ``(N,)`` the answers, as :class:`Choice` values (strings).
    """

    rater_id: str
    left: np.ndarray
    right: np.ndarray
    choice: np.ndarray

    @classmethod
    def from_pairs(cls, rater_id: str, pairs: Sequence[tuple[Segment, Segment, Choice]]) -> "RaterAnswers":
        if not pairs:
            raise ValueError(f"rater {rater_id!r} has no answers to fit")
        lengths = {seg.length for left, right, _ in pairs for seg in (left, right)}
        if len(lengths) != 1:
            raise ValueError(f"rater {rater_id!r} compared segments of different lengths {sorted(lengths)}")
        return cls(
            rater_id=rater_id,
            left=np.stack([np.asarray(left.true_rewards, dtype=np.float64) for left, _, _ in pairs]),
            right=np.stack([np.asarray(right.true_rewards, dtype=np.float64) for _, right, _ in pairs]),
            choice=np.array([Choice(c).value for _, _, c in pairs]),
        )

    def take(self, idx: np.ndarray) -> "RaterAnswers":
        return RaterAnswers(self.rater_id, self.left[idx], self.right[idx], self.choice[idx])


@dataclass(frozen=True)
class Estimate:
    """A fitted value with its bootstrap interval (``low``, ``high``; None without a bootstrap)."""

    value: float
    low: float | None = None
    high: float | None = None

    def text(self) -> str:
        interval = "" if self.low is None else f" [{self.low:.3g}, {self.high:.3g}]"
        return f"{self.value:.3g}{interval}"


@dataclass(frozen=True)
class RaterFit:
    """B-Pref's parameters fitted to one rater (see the module docstring).

    ``beta`` is ``inf`` when the rater is deterministic (the fit reached the upper bound).
    ``skip_threshold`` / ``equal_threshold`` are 0 when the rater never skipped / said equal.
    """

    rater_id: str
    labels: int
    decided: int
    skipped: int
    equal: int
    beta: Estimate
    gamma: Estimate
    epsilon: Estimate
    skip_threshold: Estimate
    equal_threshold: Estimate
    return_scale: float
    log_likelihood: float

    def teacher_config(self) -> TeacherConfig:
        """The :class:`TeacherConfig` that replays this rater."""
        return TeacherConfig(
            beta=self.beta.value if math.isfinite(self.beta.value) else math.inf,
            gamma=min(1.0, max(self.gamma.value, 1e-6)),
            epsilon=min(1.0, max(self.epsilon.value, 0.0)),
            skip_threshold=max(self.skip_threshold.value, 0.0),
            equal_threshold=max(self.equal_threshold.value, 0.0),
        )

    @classmethod
    def from_json(cls, data: dict) -> "RaterFit":
        def estimate(d: dict) -> Estimate:
            return Estimate(*(None if d.get(k) is None else float(d[k]) for k in ("value", "low", "high")))

        try:
            return cls(
                rater_id=str(data["rater_id"]),
                labels=int(data["labels"]), decided=int(data["decided"]), skipped=int(data["skipped"]), equal=int(data["equal"]),
                beta=estimate(data["beta"]), gamma=estimate(data["gamma"]), epsilon=estimate(data["epsilon"]),
                skip_threshold=estimate(data["skip_threshold"]), equal_threshold=estimate(data["equal_threshold"]),
                return_scale=float(data["return_scale"]), log_likelihood=float(data["log_likelihood"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TeacherConfigError(f"not a rater fit written by `prefloop raters fit` ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class _PointFit:
    beta: float
    gamma: float
    epsilon: float
    skip_threshold: float
    equal_threshold: float
    log_likelihood: float


def _threshold(values: np.ndarray, below: np.ndarray) -> float:
    """The threshold ``t`` minimising the answers misclassified by "``below`` iff value < t"."""
    order = np.argsort(values)
    v, b = values[order], below[order].astype(np.int64)
    # t between v[k-1] and v[k]: the first k are called below. Errors: non-below among the first k,
    # plus below among the rest.
    errors = np.concatenate(([0], np.cumsum(1 - b))) + np.concatenate((np.cumsum(b[::-1])[::-1], [0]))
    k = int(np.argmin(errors))
    if k == 0:
        return float(v[0]) if len(v) else 0.0
    if k == len(v):
        return float(v[-1])
    return float((v[k - 1] + v[k]) / 2)


def _choice_nll(
    params: np.ndarray, diffs: np.ndarray, right: np.ndarray, scale: float, powers: np.ndarray, fit_gamma: bool
) -> tuple[float, np.ndarray]:
    """Negative log-likelihood of the LEFT/RIGHT answers and its gradient in ``(log(beta*scale), gamma, eps)``."""
    log_b, gamma, eps = params
    if not fit_gamma:
        gamma = 1.0
    beta = math.exp(log_b) / scale
    weights = gamma**powers
    delta = diffs @ weights
    z = beta * delta
    sig = 0.5 * (1.0 + np.tanh(0.5 * z))
    p_right = eps + (1.0 - 2.0 * eps) * sig
    p_answer = np.clip(np.where(right, p_right, 1.0 - p_right), 1e-300, None)
    sign = np.where(right, 1.0, -1.0)
    dp_dz = (1.0 - 2.0 * eps) * sig * (1.0 - sig)
    common = -sign / p_answer  # d(-log p_answer) / d p_right
    grad_log_b = float(np.sum(common * dp_dz * z))
    grad_gamma = 0.0
    if fit_gamma:
        dweights = np.where(powers > 0, powers * gamma ** np.maximum(powers - 1, 0), 0.0)
        grad_gamma = float(np.sum(common * dp_dz * beta * (diffs @ dweights)))
    grad_eps = float(np.sum(common * (1.0 - 2.0 * sig)))
    return float(-np.log(p_answer).sum()), np.array([grad_log_b, grad_gamma, grad_eps])


def _fit_choices(diffs: np.ndarray, right: np.ndarray, fit_gamma: bool) -> tuple[float, float, float, float]:
    """``(beta, gamma, eps, log-likelihood)`` of the LEFT/RIGHT answers (``gamma = 1`` unless ``fit_gamma``)."""
    length = diffs.shape[1]
    powers = np.arange(length - 1, -1, -1, dtype=np.float64)
    totals = np.abs(diffs.sum(1))
    scale = float(np.median(totals)) or float(np.mean(totals)) or 1.0
    bounds = [tuple(np.log(_BETA_SCALED_BOUNDS)), _GAMMA_BOUNDS if fit_gamma else (1.0, 1.0), (0.0, 1.0)]
    best = None
    # Several starts: the likelihood is flat near eps = 0.5 (where beta no longer matters), so a
    # single start can stall there; eps0 = 0.9 reaches adversarial raters from the other side.
    starts = [(0.0, 0.05), (2.0, 0.05), (1.0, 0.2), (4.0, 0.1), (1.0, 0.9)]
    gammas = (0.98, 0.9, 0.7) if fit_gamma else (1.0,)
    for (log_b0, eps0), gamma0 in itertools.product(starts, gammas):
        result = optimize.minimize(
            _choice_nll, np.array([log_b0, gamma0, eps0]), jac=True,
            args=(diffs, right, scale, powers, fit_gamma), method=_METHOD, bounds=bounds,
        )
        if best is None or result.fun < best.fun:
            best = result
    assert best is not None
    log_b, gamma, eps = best.x
    gamma = float(gamma) if fit_gamma else 1.0
    log_likelihood = -float(best.fun)
    # A deterministic rater (beta = inf) who errs at rate eps: taken when the finite fit is already
    # nearly deterministic on a typical pair and a likelihood-ratio test cannot tell the two apart
    # -- past the closest pairs' differences a larger beta changes nothing, so the finite optimum
    # is arbitrary there.
    delta = diffs @ gamma**powers
    wrong = np.where(delta == 0, 0.5, (delta > 0) != right)
    eps_inf = float(np.clip(wrong.mean(), 1e-9, 1 - 1e-9))
    ll_inf = float(np.sum(np.where(delta == 0, math.log(0.5), np.where(wrong == 1, math.log(eps_inf), math.log1p(-eps_inf)))))
    nearly_deterministic = log_b >= math.log(_DETERMINISTIC_SCALED_BETA)
    if log_b >= bounds[0][1] - 1e-3 or (nearly_deterministic and 2 * (log_likelihood - ll_inf) < _LR_CRITICAL):
        return math.inf, gamma, eps_inf if ll_inf >= log_likelihood - _LR_CRITICAL / 2 else float(eps), max(ll_inf, log_likelihood)
    return math.exp(log_b) / scale, gamma, float(eps), log_likelihood


def _fit_point(answers: RaterAnswers, return_scale: float) -> _PointFit:
    choice = answers.choice
    ret_left, ret_right = answers.left.sum(1), answers.right.sum(1)
    skipped = choice == Choice.CANT_TELL.value
    skip_threshold = 0.0
    if skipped.any() and return_scale != 0:
        skip_threshold = max(0.0, _threshold(np.maximum(ret_left, ret_right), skipped) / return_scale)
    answered = ~skipped
    equal = choice == Choice.EQUAL.value
    equal_threshold = 0.0
    if equal.any() and return_scale != 0:
        equal_threshold = max(0.0, _threshold(np.abs(ret_left - ret_right)[answered], equal[answered]) / abs(return_scale))
    decided = answered & ~equal
    if not decided.any():
        return _PointFit(math.nan, math.nan, math.nan, skip_threshold, equal_threshold, 0.0)
    diffs = answers.right[decided] - answers.left[decided]
    right = choice[decided] == Choice.RIGHT.value
    fit = _fit_choices(diffs, right, fit_gamma=False)
    myopic = _fit_choices(diffs, right, fit_gamma=True)
    # gamma < 1 only where the answers call for it: a likelihood-ratio test (chi2, 1 dof, 95 %).
    if 2 * (myopic[3] - fit[3]) > _LR_CRITICAL:
        fit = myopic
    beta, gamma, eps, log_likelihood = fit
    return _PointFit(beta, gamma, eps, skip_threshold, equal_threshold, log_likelihood)


def fit_rater(answers: RaterAnswers, bootstrap: int = 200, seed: int = 0) -> RaterFit:
    """B-Pref's parameters of one rater by maximum likelihood, with ``bootstrap`` resamples for the
    90 % intervals (0: no intervals)."""
    return_scale = float(np.concatenate((answers.left.sum(1), answers.right.sum(1))).mean())
    point = _fit_point(answers, return_scale)
    names = ("beta", "gamma", "epsilon", "skip_threshold", "equal_threshold")
    draws: dict[str, list[float]] = {name: [] for name in names}
    rng = np.random.default_rng(seed)
    n = len(answers.choice)
    for _ in range(bootstrap):
        fit = _fit_point(answers.take(rng.integers(0, n, size=n)), return_scale)
        for name in names:
            draws[name].append(getattr(fit, name))

    def estimate(name: str) -> Estimate:
        value = getattr(point, name)
        values = np.array(draws[name], dtype=np.float64)
        values = values[~np.isnan(values)]
        if not len(values):
            return Estimate(value)
        # "nearest", not interpolation: a deterministic rater's draws hold inf.
        low, high = np.quantile(values, [(1 - INTERVAL) / 2, (1 + INTERVAL) / 2], method="nearest")
        return Estimate(value, float(low), float(high))

    counts = {c.value: int((answers.choice == c.value).sum()) for c in Choice}
    return RaterFit(
        rater_id=answers.rater_id,
        labels=n,
        decided=counts["left"] + counts["right"],
        skipped=counts["cant_tell"],
        equal=counts["equal"],
        beta=estimate("beta"), gamma=estimate("gamma"), epsilon=estimate("epsilon"),
        skip_threshold=estimate("skip_threshold"), equal_threshold=estimate("equal_threshold"),
        return_scale=return_scale,
        log_likelihood=point.log_likelihood,
    )


def answers_from_store(store: "PreferenceStore", raters: Sequence[str] = ()) -> list[RaterAnswers]:
    """Every rater's live answers in a run (or only ``raters``'), with the true rewards of the
    segments they compared: their labels and their checks (gold pairs and repeats asked only to
    measure them, :mod:`prefloop.store.rater_checks`; answers to the same two segments all the
    same). Raters with no answers are left out."""
    wanted = set(raters)
    by_rater: dict[str, list[tuple[int, Choice]]] = {}
    for answer in [*store.labels(), *store.rater_checks()]:
        if not wanted or answer.rater_id in wanted:
            by_rater.setdefault(answer.rater_id, []).append((answer.pair_id, answer.choice))
    pairs: dict[int, tuple[Segment, Segment]] = {}
    out = []
    for rater, answered in sorted(by_rater.items()):
        rows = []
        for pair_id, choice in answered:
            if pair_id not in pairs:
                pair = store.get_pair(pair_id)
                pairs[pair_id] = (pair.left, pair.right)
            rows.append((*pairs[pair_id], choice))
        out.append(RaterAnswers.from_pairs(rater, rows))
    return out


def fits_document(fits: Sequence[RaterFit], source: str) -> dict:
    """The JSON ``raters fit --json`` writes: schema, where the labels came from, one fit per rater."""
    return {"schema": SCHEMA, "source": source, "interval": INTERVAL,
            "raters": {fit.rater_id: _json_safe(asdict(fit)) for fit in fits}}


def _json_safe(value: object) -> object:
    """inf / nan floats as the strings "inf" / "nan", so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def load_fit(path: str | Path, rater: str | None) -> RaterFit:
    """One rater's fit from a ``raters fit --json`` file; ``rater`` may be omitted when it holds one.

    Raises:
        TeacherConfigError: unreadable file, not such a file, or an unknown / missing rater name.
    """
    path = Path(path)
    try:
        data = json.loads(read_users_text(path, MAX_FIT_FILE_CHARS))
    except TooLargeError:
        raise TeacherConfigError(f"{path} holds more than {MAX_FIT_FILE_CHARS:,} characters: not a rater fit; write "
                                 f"one with `prefloop raters fit --json {path}`") from None
    except OSError as exc:
        raise TeacherConfigError(f"cannot read the rater fit {path}: {exc.strerror or exc}; write it with `prefloop raters fit --json {path}`") from None
    except ValueError as exc:
        raise TeacherConfigError(f"{path} is not JSON ({exc}); write it with `prefloop raters fit --json {path}`") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("raters"), dict):
        raise TeacherConfigError(f"{path} is not a rater fit (schema {SCHEMA}); write it with `prefloop raters fit --json {path}`")
    raters = data["raters"]
    if rater is None:
        if len(raters) != 1:
            raise TeacherConfigError(f"{path} holds {len(raters)} raters; name one: fitted:{path},rater=NAME (raters: {', '.join(sorted(raters))})")
        rater = next(iter(raters))
    if rater not in raters:
        raise TeacherConfigError(f"{path} has no rater {rater!r}; raters: {', '.join(sorted(raters))}")
    return RaterFit.from_json(raters[rater])


def parse_fitted_spec(spec: str) -> tuple[str, str | None]:
    """``"fitted:PATH,rater=NAME"`` -> ``(PATH, NAME)``; ``",rater=NAME"`` is optional."""
    body = spec[len(FITTED_PREFIX):] if spec.startswith(FITTED_PREFIX) else spec
    path, sep, rater = body.rpartition(",rater=")
    if not sep:
        path, rater = body, ""
    if not path.strip():
        raise TeacherConfigError(f"teacher {spec!r}: expected fitted:PATH[,rater=NAME] with PATH from `prefloop raters fit --json PATH`")
    return path.strip(), rater.strip() or None


def make_fitted_teacher(spec: str, seed: int = 0, **overrides: float) -> SimulatedTeacher:
    """A simulated teacher replaying a fitted rater: ``fitted:PATH[,rater=NAME]`` (``overrides``
    replace fitted parameters, e.g. ``epsilon=0``)."""
    path, rater = parse_fitted_spec(spec)
    fit = load_fit(path, rater)
    config = fit.teacher_config()
    if overrides:
        from dataclasses import replace

        try:
            config = replace(config, **overrides)
        except TypeError as exc:
            raise TeacherConfigError(f"teacher {spec!r}: {exc}") from None
    return SimulatedTeacher(config, seed=seed, rater_id=f"fitted-{fit.rater_id}")


