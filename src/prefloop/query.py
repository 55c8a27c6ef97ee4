"""Which pairs to ask about: uniform sampling or ensemble-based active query selection.

Candidate pairs are distinct random pairs of distinct segments. ``uniform`` returns ``n_pairs`` of
them; ``disagreement`` and ``entropy`` draw ``oversampling * n_pairs`` candidates (capped by how
many distinct pairs exist), score them with the reward ensemble's preference probabilities and keep
the ``n_pairs`` highest (Christiano et al. 2017; Lee et al. 2021):

- disagreement: standard deviation over ensemble members of ``P(right better)``.
- entropy: binary entropy (nats) of the ensemble-mean ``P(right better)``; highest at 0.5.

Without a reward model yet (``preference_probs=None``) every method falls back to uniform.

Pairs whose two clips a person could not tell apart (both episodes end in the first frames, or the
same observations; see :mod:`prefloop.distinguishable`) are never candidates
(``QueryConfig.skip_indistinguishable``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from prefloop.distinguishable import indistinguishable
from prefloop.types import Segment, SegmentPair

__all__ = [
    "QUERY_METHODS",
    "NotEnoughSegmentsError",
    "PreferenceProbs",
    "QueryConfig",
    "QueryConfigError",
    "select_pairs",
]

QUERY_METHODS: tuple[str, ...] = ("uniform", "disagreement", "entropy")

PreferenceProbs = Callable[[Sequence[Segment], Sequence[Segment]], np.ndarray]
"""``(lefts, rights) -> (n_members, n_pairs)`` array: each member's P(right better) per pair."""


class QueryConfigError(ValueError):
    """A query selector was configured with an invalid parameter."""


class NotEnoughSegmentsError(ValueError):
    """Too few segments to form the requested number of distinct pairs."""


@dataclass(frozen=True)
class QueryConfig:
    """How pairs are chosen.

    Attributes:
        method: one of :data:`QUERY_METHODS`.
        oversampling: the active methods score ``oversampling * n_pairs`` candidate pairs (capped by
            how many distinct pairs exist); ``>= 1``. Ignored by ``uniform``.
        skip_indistinguishable: never ask a pair whose clips a person could not tell apart.
    """

    method: str = "disagreement"
    oversampling: int = 10
    skip_indistinguishable: bool = True

    def __post_init__(self) -> None:
        if self.method not in QUERY_METHODS:
            raise QueryConfigError(
                f"QueryConfig.method must be one of {', '.join(QUERY_METHODS)}, got {self.method!r}"
            )
        ok_type = isinstance(self.oversampling, (int, np.integer)) and not isinstance(
            self.oversampling, bool
        )
        if not ok_type or self.oversampling < 1:
            raise QueryConfigError(
                f"QueryConfig.oversampling must be an integer >= 1, got {self.oversampling!r}"
            )


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


def _unique_segments(candidates: Sequence[Segment]) -> list[Segment]:
    # Segments compare by identity; a segment listed twice must not be paired with itself.
    seen: set[int] = set()
    unique = []
    for segment in candidates:
        if id(segment) not in seen:
            seen.add(id(segment))
            unique.append(segment)
    return unique


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
    if len(kept) < n and n < total:
        # Top up from the pairs not drawn yet, in random order, until enough are askable.
        rest = np.setdiff1d(np.arange(total), first)
        rng.shuffle(rest)
        for start in range(0, len(rest), 2 * n + 8):
            kept += [p for p in _decode_pairs(segments, rest[start:start + 2 * n + 8], rng) if not indistinguishable(*p)]
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
    segments = _unique_segments(candidates)
    total = len(segments) * (len(segments) - 1) // 2
    if total < n_pairs:
        needed = _segments_needed(n_pairs)
        raise NotEnoughSegmentsError(
            f"{n_pairs} distinct pairs need at least {needed} distinct segments, but only "
            f"{len(segments)} exist ({total} distinct pairs). Collect more environment steps "
            "before querying, or ask for fewer labels in this round."
        )

    skip = config.skip_indistinguishable
    if config.method == "uniform" or preference_probs is None:
        drawn = _draw_pairs(segments, n_pairs, rng, skip)
        _check_enough_askable(len(drawn), n_pairs, len(segments), total)
        return [SegmentPair(left=a, right=b) for a, b in drawn]

    n_candidates = min(config.oversampling * n_pairs, total)
    drawn = _draw_pairs(segments, n_candidates, rng, skip)
    _check_enough_askable(len(drawn), n_pairs, len(segments), total)
    n_candidates = len(drawn)
    lefts = [a for a, _ in drawn]
    rights = [b for _, b in drawn]
    probs = _check_probs(preference_probs(lefts, rights), n_candidates)
    scores = _scores(config.method, probs)
    # Stable sort: ties keep the (random) draw order, so the result depends only on the rng.
    best = np.argsort(-scores, kind="stable")[:n_pairs]
    return [
        SegmentPair(left=lefts[k], right=rights[k], score=float(scores[k])) for k in best.tolist()
    ]


def _check_enough_askable(found: int, n_pairs: int, n_segments: int, total: int) -> None:
    if found < n_pairs:
        raise NotEnoughSegmentsError(
            f"{n_pairs} pairs are wanted but only {found} of the {total} distinct pairs of {n_segments} "
            "segments show a difference a person can see (the others both end within their first "
            "frames, or look identical). Collect more environment steps before querying, or ask "
            "for fewer labels in this round."
        )
