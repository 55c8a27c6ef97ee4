"""A query rule of your own: a function (or callable object) that picks the pairs to ask."""

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from prefloop.training.config import TrainConfig
from prefloop.training.loop import train
from prefloop.training.query import PreferenceProbs, QueryConfig
from prefloop.types import Segment, SegmentPair


def far_apart(
    candidates: Sequence[Segment], n_pairs: int, rng: np.random.Generator, preference_probs: PreferenceProbs | None
) -> list[SegmentPair]:
    """Pairs whose segments' mean observations lie farthest apart, among 10x as many random pairs.

    ``preference_probs(lefts, rights)`` (None before the first fit) gives each ensemble member's
    P(right better), shape ``(n_members, n_pairs)``, for rules that use the reward model.
    """
    segments = list(candidates)
    means = np.stack([s.obs[: s.n_valid].mean(axis=0) for s in segments])
    seen: set[tuple[int, int]] = set()
    while len(seen) < min(10 * n_pairs, len(segments) * (len(segments) - 1) // 2):
        i, j = sorted(rng.choice(len(segments), size=2, replace=False).tolist())
        seen.add((i, j))
    drawn = sorted(seen)
    distance = np.array([np.linalg.norm(means[i] - means[j]) for i, j in drawn])
    best = np.argsort(-distance, kind="stable")[:n_pairs]
    return [SegmentPair(left=segments[drawn[k][0]], right=segments[drawn[k][1]], score=float(distance[k])) for k in best]


config = TrainConfig(
    env_id="CartPole-v1",
    run_dir=Path("runs") / time.strftime("far-apart-%Y%m%d-%H%M%S"),
    query=QueryConfig(method=far_apart),  # the named methods ("kcenter", ...) take the same path
    labels=30,
    steps=4000,
    eval_episodes=3,
    progress_bar=False,
)
result = train(config)
print("labels:", result.labels_used, "eval return:", result.eval_return_mean)
print("config.json query method:", json.loads((config.run_dir / "config.json").read_text())["query"]["method"])
