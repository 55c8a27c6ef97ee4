"""Which pairs to ask about: uniform sampling or ensemble-based active query selection.

Candidate pairs are distinct random pairs of distinct segments. ``uniform`` returns ``n_pairs`` of
them; ``disagreement`` and ``entropy`` draw ``oversampling * n_pairs`` candidates (capped by how
many distinct pairs exist), score them with the reward ensemble's preference probabilities and keep
the ``n_pairs`` highest (Christiano et al. 2017; Lee et al. 2021):

- disagreement: standard deviation over ensemble members of ``P(right better)``.
- entropy: binary entropy (nats) of the ensemble-mean ``P(right better)``; highest at 0.5.
- kcenter: coverage (B-Pref's k-center greedy): pairs whose features -- the mean observation and
  action of each segment, standardised over the candidates -- lie farthest from the pairs already
  picked; needs no reward model.

Modifiers combine with any method (written ``method+qpa+surf+cover`` in the CLI and benchmarks):

- ``policy_aligned`` (QPA, Hu et al. 2023): candidates come only from the newest segments, i.e.
  what the current policy does, so the reward model is taught where the policy is;
- ``semi_supervised`` (SURF, Park et al. 2022): pairs the ensemble already judges with confidence
  ``>= confidence`` are not asked (the trainer labels such pairs itself, see
  ``prefloop.training.semi_supervised``); only uncertain ones go to the teacher;
- ``cover_first_round``: the first round's pairs by k-center coverage (below);
- ``ends_first`` (``+ends``): up to half of each round's pairs put a segment that ends its episode
  (terminated inside it: a goal reached, a fall) next to one that does not, where the candidates
  have such pairs, chosen by the method among them. On a task whose reward is a constant until
  the episode ends (Acrobot: -1 a step until the goal) two segments that both go on are a tie,
  whatever the policy did: a run whose pairs are mostly ties learns nothing.

Without a reward model yet (``preference_probs=None``: the first round, an untrained ensemble)
every method falls back to uniform (``select_pairs(..., preference_probs=None)``), or with
``cover_first_round`` (``+cover``) to k-center coverage, which needs no model: the first labels then
span the states the first segments visit instead of their most common ones. From the second round
on the trained ensemble scores the candidates. ``disagreement`` needs at least two members
(``TrainConfig`` refuses one).

Users plug in their own rule: any :class:`QueryRule` (a function or an object with ``__call__``) as
``QueryConfig(method=my_rule)``. The named methods are rules too (:class:`MethodRule`); the
learner calls whichever :func:`query_rule` returns, so a user's rule and ``"kcenter"`` go through
the same path.

Pairs whose two clips a person could not tell apart (both episodes end in the first frames, or the
same observations; see :mod:`prefloop.training.distinguishable`) are never candidates
(``QueryConfig.skip_indistinguishable``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from prefloop.import_paths import ImportPathError, is_import_path
from prefloop.import_paths import load as load_import_path
from prefloop.training.coverage import k_center
from prefloop.training.distinguishable import indistinguishable
from prefloop.types import Segment, SegmentPair, unique_segments

__all__ = [
    "DEFAULT_QUERY",
    "QUERY_METHODS",
    "MethodRule",
    "NotEnoughSegmentsError",
    "PreferenceProbs",
    "QueryConfig",
    "QueryConfigError",
    "QueryRule",
    "UnaskableSegmentsError",
    "query_rule",
    "select_pairs",
]

QUERY_METHODS: tuple[str, ...] = ("uniform", "disagreement", "entropy", "kcenter")
QUERY_MODIFIERS: dict[str, str] = {
    "qpa": "policy_aligned", "surf": "semi_supervised", "cover": "cover_first_round", "ends": "ends_first",
}

# A run's query rule unless told otherwise (TrainConfig, the CLI and benchmarks alike): ensemble
# disagreement, with the first round (no model yet) picked by k-center coverage (at 50 labels over
# 5 seeds it took Pendulum from 0.80 to 0.93 median), and up to half of each round a segment that
# ends its episode against one that goes on (CartPole at 50 labels 0.90 -> 1.00 over 5 seeds, no
# Acrobot seed of 7 stuck at -500; docs/benchmarks.md, "`+ends`").
DEFAULT_QUERY = "disagreement+cover+ends"

PreferenceProbs = Callable[[Sequence[Segment], Sequence[Segment]], np.ndarray]
"""``(lefts, rights) -> (n_members, n_pairs)`` array: each member's P(right better) per pair."""


@runtime_checkable
class QueryRule(Protocol):
    """Which pairs to ask: ``QueryConfig(method=rule)`` with a function or callable object.

    Called at every label round with the candidate segments (oldest first), how many pairs to
    return, the run's random generator (its only source of randomness, for reproducible runs) and
    the ensemble's preference probabilities (``(lefts, rights) -> (n_members, n_pairs)`` array of
    P(right better); None before the first fit). Must return ``n_pairs`` pairs
    (:class:`prefloop.types.SegmentPair`) of distinct candidate segments, no pair twice.
    """

    def __call__(
        self,
        candidates: Sequence[Segment],
        n_pairs: int,
        rng: np.random.Generator,
        preference_probs: "PreferenceProbs | None",
    ) -> list[SegmentPair]: ...


class QueryConfigError(ValueError):
    """A query selector was configured with an invalid parameter."""


class NotEnoughSegmentsError(ValueError):
    """Too few segments to form the requested number of distinct pairs."""


class UnaskableSegmentsError(NotEnoughSegmentsError):
    """Segments enough, but too few of their pairs show a difference a person can see
    (:func:`prefloop.training.distinguishable.indistinguishable`): more of the same segments do
    not help, the policy's next ones may (e.g. once it no longer ends every episode at once).

    ``fact``: the message without its advice, for a run that goes on (the learner postpones the round).
    """

    def __init__(self, fact: str, advice: str):
        super().__init__(f"{fact} {advice}")
        self.fact = fact


@dataclass(frozen=True)
class QueryConfig:
    """How pairs are chosen.

    Attributes:
        method: one of :data:`QUERY_METHODS`, or your own :class:`QueryRule` (a function or
            callable object; config.json records its import path, or ``"object:module:Class"``
            for an instance, which a resumed run must be given again). The modifiers and
            ``oversampling`` apply to the named methods only.
        oversampling: the active methods score ``oversampling * n_pairs`` candidate pairs (capped by
            how many distinct pairs exist); ``>= 1``. Ignored by ``uniform``.
        policy_aligned: QPA: draw candidates only from the newest ``policy_window`` segments.
        policy_window: segments that count as the current policy's (at least enough for the pairs asked).
        semi_supervised: SURF: do not ask pairs the ensemble is sure about, label them itself.
        confidence: SURF's threshold on the ensemble-mean P(one side better), in (0.5, 1).
        cover_first_round: before the first fit (no model to score pairs with), pick the pairs by
            k-center coverage rather than uniformly. Off in a bare ``QueryConfig``, which does
            exactly what its fields say; a run's default query (``TrainConfig``, the CLI and
            benchmarks: ``DEFAULT_QUERY``) is ``disagreement+cover+ends``.
        skip_indistinguishable: never ask a pair whose clips a person could not tell apart.
        ends_first: up to half of each round's pairs (rounded up) between a segment that ends its
            episode and one that does not, where there are such pairs (``+ends``).
    """

    method: str | QueryRule = "disagreement"
    oversampling: int = 10
    skip_indistinguishable: bool = True
    # Off by default: at 50 labels on Pendulum, 5 seeds (docs/benchmarks.md), disagreement+qpa
    # 0.64 [0.50, 0.91] against 0.80 [0.78, 0.90] for plain disagreement.
    policy_aligned: bool = False
    policy_window: int = 100
    semi_supervised: bool = False
    confidence: float = 0.99
    cover_first_round: bool = False
    ends_first: bool = False

    @property
    def spec(self) -> str:
        """``method[+qpa][+surf]``, the name used by the CLI and in benchmark tables."""
        if not isinstance(self.method, str):
            from prefloop.import_paths import describe

            return describe(self.method)
        return "+".join([self.method] + [m for m, field_name in QUERY_MODIFIERS.items() if getattr(self, field_name)])

    @classmethod
    def from_spec(cls, spec: str, **changes: object) -> "QueryConfig":
        """Parse ``method[+qpa][+surf]`` (e.g. ``disagreement+qpa``)."""
        method, *modifiers = str(spec).strip().split("+")
        unknown = [m for m in modifiers if m not in QUERY_MODIFIERS]
        if unknown:
            raise QueryConfigError(
                f"unknown query modifier {unknown[0]!r} in {spec!r}; write METHOD[+qpa][+surf][+cover][+ends] with METHOD one of "
                f"{', '.join(QUERY_METHODS)}, e.g. disagreement+qpa"
            )
        # Every modifier is set explicitly: a spec names exactly the modifiers it wants.
        flags = {name: m in modifiers for m, name in QUERY_MODIFIERS.items()}
        return cls(method=method, **flags, **changes)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        # A rule's name in config.json: an import path, or "object:module:Class" (an instance).
        recorded_rule = isinstance(self.method, str) and (self.method.startswith("object:") or is_import_path(self.method))
        if not (self.method in QUERY_METHODS or recorded_rule or (not isinstance(self.method, str) and callable(self.method))):
            raise QueryConfigError(
                f"QueryConfig.method must be one of {', '.join(QUERY_METHODS)} or your own query rule "
                f"(a callable, see prefloop.training.query.QueryRule), got {str(self.method)[:80]!r}"
            )
        ok_type = isinstance(self.oversampling, (int, np.integer)) and not isinstance(
            self.oversampling, bool
        )
        if not ok_type or self.oversampling < 1:
            raise QueryConfigError(
                f"QueryConfig.oversampling must be an integer >= 1, got {self.oversampling!r}"
            )
        if isinstance(self.policy_window, bool) or not isinstance(self.policy_window, (int, np.integer)) or self.policy_window < 2:
            raise QueryConfigError(f"QueryConfig.policy_window must be an integer >= 2, got {self.policy_window!r}")
        if not (isinstance(self.confidence, (int, float)) and 0.5 < self.confidence < 1.0):
            raise QueryConfigError(f"QueryConfig.confidence must be a number in (0.5, 1), got {self.confidence!r}")


class MethodRule:
    """A named method of :class:`QueryConfig` as a :class:`QueryRule` (see :func:`select_pairs`)."""

    def __init__(self, config: QueryConfig) -> None:
        self.config = config

    def __call__(
        self, candidates: Sequence[Segment], n_pairs: int, rng: np.random.Generator, preference_probs: PreferenceProbs | None
    ) -> list[SegmentPair]:
        return select_pairs(candidates, n_pairs, self.config, rng, preference_probs=preference_probs)

    def __repr__(self) -> str:
        return f"MethodRule({self.config.spec!r})"


def query_rule(config: QueryConfig) -> QueryRule:
    """The rule that picks a run's pairs: the user's own, or the named method's.

    Raises:
        QueryConfigError: ``config.method`` names a rule (config.json) that cannot be imported
            again (an instance, or a function in a script); the message says what to do.
    """
    method: Any = config.method
    if not isinstance(method, str):
        return method
    if method in QUERY_METHODS:
        return MethodRule(config)
    try:
        return load_import_path(method, "query rule")
    except ImportPathError as exc:
        raise QueryConfigError(str(exc)) from None


def _segments_needed(n_pairs: int) -> int:
    """Smallest m with m * (m - 1) / 2 >= n_pairs (and at least 2)."""
    m = max(2, (1 + math.isqrt(8 * n_pairs)) // 2)
    while m * (m - 1) // 2 < n_pairs:
        m += 1
    return m


def _pair_from_index(k: int) -> tuple[int, int]:
    """Decode ``k`` in ``[0, n(n-1)/2)`` to the ``(i, j)``, ``j < i``, with ``k = i(i-1)/2 + j``."""
    i = (1 + math.isqrt(1 + 8 * k)) // 2
    return i, k - i * (i - 1) // 2


def _draw_pairs(
    segments: list[Segment], n: int, rng: np.random.Generator, skip_indistinguishable: bool = False
) -> list[tuple[Segment, Segment]]:
    """Up to ``n`` distinct random pairs (fewer only when ``skip_indistinguishable`` leaves fewer)."""
    total = len(segments) * (len(segments) - 1) // 2
    first = rng.choice(total, size=n, replace=False)
    pairs = _decode_pairs(segments, first, rng)
    if not skip_indistinguishable:
        return pairs
    kept = [p for p in pairs if not indistinguishable(*p)]
    # Top up from pairs not drawn yet, in random order, until enough are askable. Random draws
    # rejected when seen before, not a shuffle of every pair: with 2,000 segments there are 2M
    # pairs, and listing them cost seconds per label round.
    seen = set(first.tolist())
    while len(kept) < n and len(seen) < total:
        if 2 * len(seen) >= total:  # most pairs drawn already: list the few left, in random order
            rest = np.setdiff1d(np.arange(total), np.fromiter(seen, dtype=np.int64))
            rng.shuffle(rest)
        else:
            draws = rng.integers(0, total, size=2 * (n - len(kept)) + 8)
            rest = np.array([k for k in dict.fromkeys(draws.tolist()) if k not in seen], dtype=np.int64)
        for start in range(0, len(rest), 2 * n + 8):
            chunk = rest[start:start + 2 * n + 8]
            seen.update(chunk.tolist())
            kept += [p for p in _decode_pairs(segments, chunk, rng) if not indistinguishable(*p)]
            if len(kept) >= n:
                break
    return kept[:n]


def _decode_pairs(
    segments: list[Segment], picks: np.ndarray, rng: np.random.Generator
) -> list[tuple[Segment, Segment]]:
    # Segments usually arrive in recording order; a coin flip keeps "left" free of that order.
    swap = rng.random(len(picks)) < 0.5
    pairs = []
    for k, flip in zip(picks.tolist(), swap.tolist()):
        i, j = _pair_from_index(k)
        a, b = segments[i], segments[j]
        pairs.append((b, a) if flip else (a, b))
    return pairs


def _check_probs(probs: object, n_candidates: int) -> np.ndarray:
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != n_candidates or arr.shape[0] < 1:
        raise ValueError(
            f"preference_probs must return an array of shape (n_members, {n_candidates}) "
            f"(one row per ensemble member, one column per pair), got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
        finite = arr[np.isfinite(arr)]
        seen = f"[{finite.min()}, {finite.max()}]" if finite.size else "none finite"
        raise ValueError(
            "preference_probs must return finite probabilities in [0, 1], got values in "
            f"{seen}{'' if finite.size == arr.size else ' and nan/inf'}"
        )
    return arr


def _scores(method: str, probs: np.ndarray) -> np.ndarray:
    if method == "disagreement":
        # With a single member this is all zeros and selection is uniform among the candidates.
        return probs.std(axis=0)
    mean = np.clip(probs.mean(axis=0), 1e-12, 1.0 - 1e-12)
    return -(mean * np.log(mean) + (1.0 - mean) * np.log1p(-mean))


def select_pairs(
    candidates: Sequence[Segment],
    n_pairs: int,
    config: QueryConfig,
    rng: np.random.Generator,
    preference_probs: PreferenceProbs | None = None,
) -> list[SegmentPair]:
    """Choose ``n_pairs`` distinct pairs of distinct segments to ask a teacher about.

    Args:
        candidates: the segments to pair up (the same object listed twice counts once).
        n_pairs: how many pairs to return, ``>= 0``.
        config: the selection method and oversampling factor.
        rng: the only source of randomness; the same seed gives the same pairs.
        preference_probs: the reward ensemble's ``(lefts, rights) -> (n_members, n_pairs)``
            P(right better); None before there is a model, which makes every method uniform.

    Returns:
        ``n_pairs`` SegmentPairs, no two with the same two segments (in either order). Active
        methods return them best score first with ``score`` set; uniform ones have score 0.0.

    Raises:
        NotEnoughSegmentsError: fewer than 2 segments, or fewer distinct pairs than ``n_pairs``.
    """
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, (int, np.integer)) or n_pairs < 0:
        raise ValueError(f"n_pairs must be an integer >= 0, got {n_pairs!r}")
    n_pairs = int(n_pairs)
    if n_pairs == 0:
        return []
    segments = unique_segments(candidates)
    total = len(segments) * (len(segments) - 1) // 2
    if total < n_pairs:
        needed = _segments_needed(n_pairs)
        raise NotEnoughSegmentsError(
            f"{n_pairs} distinct pairs need at least {needed} distinct segments, but only "
            f"{len(segments)} exist ({total} distinct pairs). Collect more environment steps "
            "before querying, or ask for fewer labels in this round."
        )

    if config.policy_aligned:
        # The newest segments are the current policy's; never fewer than the pairs need.
        segments = segments[-max(config.policy_window, _segments_needed(n_pairs)):]
        total = len(segments) * (len(segments) - 1) // 2

    skip = config.skip_indistinguishable
    # Before the first fit the ensemble is untrained: its disagreement or confidence means nothing.
    if preference_probs is None and config.cover_first_round:
        config = dataclasses.replace(config, method="kcenter", semi_supervised=False)
    if config.ends_first:
        return _ends_first(segments, n_pairs, dataclasses.replace(config, ends_first=False), rng, preference_probs)
    needs_no_model = config.method == "kcenter"
    if (preference_probs is None and not needs_no_model) or (config.method == "uniform" and not config.semi_supervised):
        drawn = _draw_pairs(segments, n_pairs, rng, skip)
        _check_enough_askable(len(drawn), n_pairs, len(segments), total)
        return [SegmentPair(left=a, right=b) for a, b in drawn]

    n_candidates = min(config.oversampling * n_pairs, total)
    drawn = _draw_pairs(segments, n_candidates, rng, skip)
    _check_enough_askable(len(drawn), n_pairs, len(segments), total)
    return _choose(drawn, n_pairs, config, rng, preference_probs)


def _choose(
    drawn: list[tuple[Segment, Segment]], n_pairs: int, config: QueryConfig, rng: np.random.Generator,
    preference_probs: PreferenceProbs | None,
) -> list[SegmentPair]:
    """The method's ``n_pairs`` best of the drawn candidate pairs (``len(drawn) >= n_pairs``)."""
    if config.semi_supervised and preference_probs is not None:
        drawn = _uncertain(drawn, n_pairs, config.confidence, preference_probs)
    n_candidates = len(drawn)
    lefts = [a for a, _ in drawn]
    rights = [b for _, b in drawn]
    if config.method == "uniform":
        return [SegmentPair(left=a, right=b) for a, b in drawn[:n_pairs]]
    if config.method == "kcenter":
        picked = k_center(drawn, n_pairs, rng)
        return [SegmentPair(left=lefts[k], right=rights[k], score=score) for k, score in picked]
    assert preference_probs is not None
    probs = _check_probs(preference_probs(lefts, rights), n_candidates)
    scores = _scores(config.method, probs)
    # Stable sort: ties keep the (random) draw order, so the result depends only on the rng.
    best = np.argsort(-scores, kind="stable")[:n_pairs]
    return [
        SegmentPair(left=lefts[k], right=rights[k], score=float(scores[k])) for k in best.tolist()
    ]


def _ends_first(
    segments: list[Segment], n_pairs: int, config: QueryConfig, rng: np.random.Generator,
    preference_probs: PreferenceProbs | None,
) -> list[SegmentPair]:
    """``+ends``: up to ``ceil(n_pairs / 2)`` pairs of an ending and a going-on segment, the method's
    best among ``oversampling`` times as many such candidates (uniform or k-center before a model),
    then the rest as the method picks among all pairs, none twice."""
    ending = [s for s in segments if s.terminated]
    going_on = [s for s in segments if not s.terminated]
    crossed = _draw_crossed_pairs(ending, going_on, config.oversampling * math.ceil(n_pairs / 2), rng, config.skip_indistinguishable)
    n_crossed = min(math.ceil(n_pairs / 2), len(crossed))
    if n_crossed == 0:
        return select_pairs(segments, n_pairs, config, rng, preference_probs)
    method = config.method if preference_probs is not None or config.method == "kcenter" else "uniform"
    first = _choose(crossed, n_crossed, dataclasses.replace(config, method=method), rng, preference_probs)
    taken = {frozenset((id(p.left), id(p.right))) for p in first}
    # The rest from all pairs: ask for enough that, with any already taken dropped, the count is met.
    rest = select_pairs(segments, n_pairs, config, rng, preference_probs)
    rest = [p for p in rest if frozenset((id(p.left), id(p.right))) not in taken][: n_pairs - n_crossed]
    if len(rest) < n_pairs - n_crossed:
        raise NotEnoughSegmentsError(f"{n_pairs} pairs are wanted but only {n_crossed + len(rest)} distinct askable pairs were found")
    return first + rest


def _draw_crossed_pairs(
    ending: list[Segment], going_on: list[Segment], n: int, rng: np.random.Generator, skip_indistinguishable: bool,
) -> list[tuple[Segment, Segment]]:
    """Up to ``n`` distinct random pairs of one segment from each list, in random left/right order."""
    total = len(ending) * len(going_on)
    if total == 0:
        return []
    picks = rng.choice(total, size=min(n, total), replace=False)
    swap = rng.random(len(picks)) < 0.5
    pairs = []
    for k, flip in zip(picks.tolist(), swap.tolist()):
        a, b = ending[k // len(going_on)], going_on[k % len(going_on)]
        pairs.append((b, a) if flip else (a, b))
    return [p for p in pairs if not (skip_indistinguishable and indistinguishable(*p))]


def _uncertain(
    drawn: list[tuple[Segment, Segment]], n_pairs: int, confidence: float, preference_probs: PreferenceProbs
) -> list[tuple[Segment, Segment]]:
    """The drawn pairs the ensemble is not sure about (mean P of either side below ``confidence``);
    topped up with the least confident sure ones when fewer than ``n_pairs`` are left."""
    probs = _check_probs(preference_probs([a for a, _ in drawn], [b for _, b in drawn]), len(drawn))
    mean = probs.mean(axis=0)
    sure = np.maximum(mean, 1.0 - mean)
    order = np.argsort(sure, kind="stable")  # least sure first, ties in draw order
    keep = [int(k) for k in order if sure[k] < confidence]
    if len(keep) < n_pairs:
        keep = [int(k) for k in order[:n_pairs]]
    keep.sort()  # back to draw order: the method ranks them
    return [drawn[k] for k in keep]


def _check_enough_askable(found: int, n_pairs: int, n_segments: int, total: int) -> None:
    if found < n_pairs:
        raise UnaskableSegmentsError(
            f"{n_pairs} pairs are wanted but only {found} of the {total} distinct pairs of {n_segments} "
            "segments show a difference a person can see (the others both end within their first "
            "frames, or look identical).",
            "Collect more environment steps before querying, or ask for fewer labels in this round.",
        )
