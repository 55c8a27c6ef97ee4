"""``RewardEnsemble.predict`` runs on every env step, so its numpy path is written for speed
(in place, no np.clip/np.mean wrappers). A learning run's rewards must not move by a bit: it is
checked here against the plain numpy expression of the same float32 arithmetic."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from prefloop.reward_models import RewardEnsemble
from prefloop.reward_models.numpy_forward import INPUT_CLIP, LEAKY_SLOPE


def _plain_predict(model: RewardEnsemble, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """The straightforward numpy forward pass (what predict computed before it was made fast)."""
    weights, biases, scale, mean, inv_std = model._numpy_snapshot()
    h = np.concatenate((model.obs_encoder.encode_numpy(np.asarray(obs)), model.action_encoder.encode_numpy(np.asarray(actions))), axis=1)
    h = np.clip((h - mean) * inv_std, -INPUT_CLIP, INPUT_CLIP)[None]
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = h @ w + b
        if i < len(weights) - 1:
            h = np.maximum(h, LEAKY_SLOPE * h)
    return h[..., 0].mean(axis=0) / scale


@pytest.mark.parametrize(("obs_space", "act_space"), [
    (gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), gym.spaces.Discrete(2)),
    (gym.spaces.Box(np.array([-1, -1, -8], np.float32), np.array([1, 1, 8], np.float32)), gym.spaces.Box(-2, 2, (1,), np.float32)),
    (gym.spaces.Box(-30, 30, (6,), np.float32), gym.spaces.Discrete(3, start=-1)),
    (gym.spaces.Discrete(5), gym.spaces.MultiDiscrete([3, 2])),
])
def test_predict_is_bit_identical_to_the_plain_numpy_forward(obs_space: gym.Space, act_space: gym.Space) -> None:
    model = RewardEnsemble(obs_space, act_space, n_members=3, hidden_sizes=(16, 8), seed=1)
    rng = np.random.default_rng(0)
    obs_space.seed(0)
    act_space.seed(0)
    fit_obs = np.stack([obs_space.sample() for _ in range(64)])
    if isinstance(obs_space, gym.spaces.Box):
        fit_obs = fit_obs * np.float32(3)
    fit_actions = np.stack([act_space.sample() for _ in range(64)])
    model.fit_input_normalization(fit_obs, fit_actions)
    with torch.no_grad():
        model.reward_scale.fill_(0.37)
    for rows in (1, 8, 300):
        obs = np.stack([obs_space.sample() for _ in range(rows)])
        if isinstance(obs_space, gym.spaces.Box):  # some rows far out, to reach the input clip
            obs = obs * rng.choice([1.0, 1e3], size=(rows, *([1] * (obs.ndim - 1)))).astype(np.float32)
        actions = np.stack([act_space.sample() for _ in range(rows)])
        got = model.predict(obs, actions)
        want = _plain_predict(model, obs, actions)
        assert got.dtype == np.float32 and got.shape == (rows,)
        np.testing.assert_array_equal(got, want)
        assert np.array_equal(got, model.predict(obs, actions))  # the features are overwritten in place, not the inputs
