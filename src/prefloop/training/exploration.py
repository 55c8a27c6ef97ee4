"""Unsupervised pre-training before the first query (PEBBLE, Lee et al. 2021).

Before any label exists, the agent explores to maximise the entropy of the states it visits, so the
first pairs shown to the teacher cover far more behaviour than a random policy's. The intrinsic
reward of a state is the log of its distance to its k-th nearest neighbour among recently visited
states (a particle estimate of state entropy), normalised by a running scale.
"""

from __future__ import annotations

import numpy as np
import torch


class StateEntropyReward:
    """Intrinsic reward ``log(1 + ||s - s_kNN||) / scale``; a ``RewardFunction`` for ``VecLearnedReward``.

    Args:
        capacity: how many recent states the neighbours are searched in.
        k: which neighbour (PEBBLE uses 5).

    ``predict(obs (B, *obs_shape), actions)`` returns ``(B,)`` float32 and then remembers ``obs``.
    """

    def __init__(self, capacity: int = 10_000, k: int = 5):
        if capacity <= k or k < 1:
            raise ValueError(f"need capacity > k >= 1, got capacity={capacity}, k={k}")
        self.capacity = capacity
        self.k = k
        self._states: torch.Tensor | None = None
        self._next = 0
        self._filled = 0
        self._second_moment = 1.0
        self._count = 0

    def predict(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        flat = torch.as_tensor(np.asarray(obs, dtype=np.float32).reshape(len(obs), -1))
        if self._states is None:
            self._states = torch.zeros(self.capacity, flat.shape[1])
        if self._filled > self.k:
            distances = torch.cdist(flat, self._states[: self._filled])
            # +1: a state may already be stored. topk, not kthvalue: the same value (the k+1-th
            # smallest), at about a third of the CPU over 10,000 states, on every env step of exploration.
            kth = distances.topk(self.k + 1, dim=1, largest=False).values[:, -1]
            raw = torch.log1p(kth).numpy()
        else:
            raw = np.ones(len(flat), dtype=np.float32)
        self._remember(flat)
        # scale only (rewards stay >= 0, so exploring never looks worse than ending an episode)
        self._count += len(raw)
        self._second_moment += (float(np.mean(raw**2)) - self._second_moment) * len(raw) / self._count
        return (raw / np.sqrt(max(self._second_moment, 1e-8))).astype(np.float32)

    def _remember(self, flat: torch.Tensor) -> None:
        assert self._states is not None
        for row in flat:
            self._states[self._next] = row
            self._next = (self._next + 1) % self.capacity
            self._filled = min(self._filled + 1, self.capacity)


class SwitchableReward:
    """The reward the policy sees, switchable between phases (exploration, then the learned reward)."""

    def __init__(self, initial) -> None:
        self.current = initial

    def predict(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        return self.current.predict(obs, actions)
