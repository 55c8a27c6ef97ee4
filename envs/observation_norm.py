"""Observations standardised for the policy, by running mean and variance (SB3's ``VecNormalize``).

PPO on MuJoCo learns far better on standardised observations: rl-baselines3-zoo normalises them for
every MuJoCo PPO setting (its ``normalize: true``). Only the *policy* sees them: the normaliser is the
outermost wrapper, so the segment recorder and the learned reward below it keep the env's own
observations (what raters' clips replay and the reward model reads), and the rewards pass through
unchanged (``norm_reward=False``: the learned reward has its own scale, ``prefloop.training.reward_scale``).

The statistics are part of the policy: evaluation uses a frozen copy (:func:`frozen_copy`), and a
checkpoint keeps them as JSON (:func:`stats_to_json`, :func:`load_stats`) next to ``policy.zip``.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

# SB3's default: standardised values beyond +-10 are clipped (a rare state must not swamp the policy).
CLIP_OBS = 10.0


def normalizable(observation_space: spaces.Space) -> bool:
    """Whether the observations can be standardised: a non-image Box, or a Dict of them."""
    if isinstance(observation_space, spaces.Dict):
        return all(normalizable(space) for space in observation_space.spaces.values())
    return isinstance(observation_space, spaces.Box) and not is_image_space(observation_space, check_channels=False)


def check_normalizable(observation_space: spaces.Space, env_name: str = "this env") -> None:
    """Raise ValueError, in one line naming the fix, unless :func:`normalizable`."""
    if not normalizable(observation_space):
        raise ValueError(
            f"normalize_observations needs vector observations (a Box, or a Dict of Boxes); {env_name} has "
            f"{observation_space}: leave it off (--no-normalize-observations)"
        )


def normalize_observations(venv: VecEnv) -> VecNormalize:
    """``venv`` with its observations standardised by running statistics, updated while it steps.

    Raises:
        ValueError: the observation space is not a Box (or Dict of Boxes) of vectors.
    """
    check_normalizable(venv.observation_space)
    return VecNormalize(venv, training=True, norm_obs=True, norm_reward=False, clip_obs=CLIP_OBS)


def frozen_copy(normalizer: VecNormalize, venv: VecEnv) -> VecNormalize:
    """``venv`` standardised with a copy of ``normalizer``'s statistics, which it does not update
    (evaluation: the policy sees what it saw in training, and evaluating changes nothing)."""
    frozen = VecNormalize(venv, training=False, norm_obs=True, norm_reward=False, clip_obs=normalizer.clip_obs)
    frozen.obs_rms = copy.deepcopy(normalizer.obs_rms)
    return frozen


def stats_to_json(normalizer: VecNormalize) -> dict[str, Any]:
    """The running statistics as JSON: ``{"count", "mean", "var"}``, or one such object per key of a
    Dict observation."""
    rms = normalizer.obs_rms
    if isinstance(rms, dict):
        return {"keys": {key: _rms_to_json(value) for key, value in rms.items()}}
    return _rms_to_json(rms)


def check_stats(data: Any) -> None:
    """Raise ValueError, in one line, unless ``data`` is what :func:`stats_to_json` writes: finite
    means, non-negative variances of one shape, a positive count. Whether the shapes fit an env's
    observations needs the env (:func:`load_stats` checks that too); a checkpoint check runs this."""
    if not isinstance(data, dict):
        raise ValueError(f"observation statistics must be an object, got {type(data).__name__}")
    if "keys" not in data:
        _parse_rms(data)
        return
    saved = data["keys"]
    if not isinstance(saved, dict) or not saved:
        raise ValueError("observation statistics' keys must be a non-empty object, one entry per Dict key")
    for value in saved.values():
        _parse_rms(value)


def load_stats(normalizer: VecNormalize, data: Any) -> None:
    """Put :func:`stats_to_json`'s statistics back into ``normalizer``.

    Raises:
        ValueError: they do not fit its observations (another env, another run), or are malformed.
    """
    check_stats(data)
    rms = normalizer.obs_rms
    if isinstance(rms, dict):
        saved = data.get("keys")
        if not isinstance(saved, dict) or set(saved) != set(rms):
            raise ValueError(f"observation statistics are for keys {sorted(saved or {})}, the env has {sorted(rms)}")
        normalizer.obs_rms = {key: _rms_from_json(saved[key], value.mean.shape) for key, value in rms.items()}
    else:
        normalizer.obs_rms = _rms_from_json(data, rms.mean.shape)


def _rms_to_json(rms: RunningMeanStd) -> dict[str, Any]:
    return {"count": float(rms.count), "mean": rms.mean.tolist(), "var": rms.var.tolist()}


def _parse_rms(data: Any) -> tuple[np.ndarray, np.ndarray, float]:
    """``(mean, var, count)`` of one :func:`_rms_to_json` object, checked for everything but the env's shape."""
    try:
        mean = np.asarray(data["mean"], dtype=np.float64)
        var = np.asarray(data["var"], dtype=np.float64)
        count = float(data["count"])
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"observation statistics are malformed ({type(exc).__name__}: {exc})") from None
    if mean.shape != var.shape:
        raise ValueError(f"observation statistics are malformed (mean has shape {mean.shape}, var {var.shape})")
    if not (np.isfinite(mean).all() and np.isfinite(var).all() and (var >= 0).all() and np.isfinite(count) and count > 0):
        raise ValueError("observation statistics hold non-finite values, a negative variance or no count")
    return mean, var, count


def _rms_from_json(data: Any, shape: tuple[int, ...]) -> RunningMeanStd:
    mean, var, count = _parse_rms(data)
    if mean.shape != shape:
        raise ValueError(f"observation statistics have shape {mean.shape}, the env's observations {shape}")
    rms = RunningMeanStd(shape=shape)
    rms.mean, rms.var, rms.count = mean, var, count
    return rms
