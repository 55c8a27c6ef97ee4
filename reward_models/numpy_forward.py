"""The reward ensemble's forward pass in numpy, for the reward the policy gets on every env step.

For a handful of rows (one vector step of a few envs) numpy's per-call overhead, not arithmetic,
is most of the cost, and torch's dispatch is several times slower still. This is the same float32
arithmetic as the torch path's ``RewardEnsemble.forward(...).mean(0) / reward_scale``, written so
that each step allocates as few arrays as it can: the operations are done in place where numpy
computes exactly the same values in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LEAKY_SLOPE = 0.01
# Standardised inputs are clipped here, so a state far outside the labelled data (a policy
# exploring somewhere new) cannot drive the reward to extremes by extrapolation.
INPUT_CLIP = 10.0


def mean_reward(
    features: np.ndarray,
    weights: Sequence[np.ndarray],
    biases: Sequence[np.ndarray],
    mean: np.ndarray,
    inv_std: np.ndarray,
    scale: float,
) -> np.ndarray:
    """Ensemble-mean reward ``(B,)`` float32 of encoded, not yet standardised ``features``.

    Args:
        features: ``(B, in)`` float32; overwritten (standardised in place).
        weights: per layer ``(M, in_l, out_l)`` float32, the last layer's ``out_l`` 1.
        biases: per layer ``(M, 1, out_l)`` float32.
        mean, inv_std: ``(in,)`` float32 input standardisation.
        scale: the reward's divisor (``RewardEnsemble.reward_scale``).
    """
    h = features
    np.subtract(h, mean, out=h)
    np.multiply(h, inv_std, out=h)
    np.maximum(h, -INPUT_CLIP, out=h)  # np.clip's own definition, without its Python wrapper
    np.minimum(h, INPUT_CLIP, out=h)
    h = h[None]  # (1, B, in): every member reads the same rows
    last = len(weights) - 1
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = np.matmul(h, w)  # (M, B, out_l)
        np.add(h, b, out=h)
        if i < last:
            np.maximum(h, LEAKY_SLOPE * h, out=h)  # leaky ReLU (slope < 1)
    # np.mean(axis=0)'s own steps: a float32 sum over the members, divided by an intp count
    total = np.add.reduce(h[..., 0], axis=0)
    np.true_divide(total, np.intp(len(weights[0])), out=total, casting="unsafe")
    return total / scale
