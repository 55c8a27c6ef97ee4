"""k-center coverage of candidate pairs (B-Pref): :func:`k_center` picks the pairs farthest from
those already picked, on :func:`pair_features` (each segment's mean observation and action);
``kcenter`` queries and ``+cover`` (:mod:`prefloop.training.query`) use it. Needs no reward model."""

from __future__ import annotations

import numpy as np

from prefloop.types import Segment, unique_segments

# Wider segment features (images: 28,224 per Atari observation) are projected to this many
# dimensions first: a fixed Gaussian projection keeps distances nearly the same (Johnson-Lindenstrauss)
# at a fraction of the memory of hundreds of candidate pairs times two images.
_MAX_FEATURES = 256


def pair_features(drawn: list[tuple[Segment, Segment]]) -> np.ndarray:
    """``(P, 2F)``: each segment's mean (real-step) observation and action, standardised over the pairs."""

    def mean_features(segment: Segment) -> np.ndarray:
        n = max(1, int(segment.n_valid))
        # the mean accumulates in float64 without a float64 copy of the frames
        obs = np.asarray(segment.obs[:n]).reshape(n, -1).mean(0, dtype=np.float64)
        actions = np.asarray(segment.actions[:n]).reshape(n, -1).mean(0, dtype=np.float64)
        return np.concatenate([obs, actions])

    segments = unique_segments(segment for pair in drawn for segment in pair)
    row = {id(segment): k for k, segment in enumerate(segments)}
    per_segment = np.stack([mean_features(segment) for segment in segments])
    if per_segment.shape[1] > _MAX_FEATURES:  # one product for all segments: the matrix is read once
        # fixed, not the run's rng: the same segments always get the same features
        rng = np.random.default_rng(per_segment.shape[1])
        projection = rng.normal(0.0, 1.0 / np.sqrt(_MAX_FEATURES), (per_segment.shape[1], _MAX_FEATURES)).astype(np.float32)
        per_segment = (per_segment.astype(np.float32) @ projection).astype(np.float64)
    lefts = per_segment[[row[id(a)] for a, _ in drawn]]
    rights = per_segment[[row[id(b)] for _, b in drawn]]
    feats = np.concatenate([lefts, rights], axis=1)
    return (feats - feats.mean(0)) / np.maximum(feats.std(0), 1e-8)


def k_center(drawn: list[tuple[Segment, Segment]], n_pairs: int, rng: np.random.Generator) -> list[tuple[int, float]]:
    """Greedy k-center (B-Pref): start at a random pair, then repeatedly take the pair farthest from
    every pair taken so far. Returns ``(index, distance when taken)``; the first (random) pick has
    score 0.0, since the store keeps only finite scores."""
    feats = pair_features(drawn)
    first = int(rng.integers(len(drawn)))
    picked = [(first, 0.0)]
    nearest = np.linalg.norm(feats - feats[first], axis=1)
    nearest[first] = -np.inf
    while len(picked) < n_pairs:
        k = int(np.argmax(nearest))
        picked.append((k, float(nearest[k])))
        nearest = np.minimum(nearest, np.linalg.norm(feats - feats[k], axis=1))
        nearest[k] = -np.inf
    return picked
