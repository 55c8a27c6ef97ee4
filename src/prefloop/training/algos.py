"""Choosing and building a stable-baselines3 algorithm, and relabelling its replay buffer.

prefloop composes with SB3 and never subclasses an algorithm: the learned reward comes in through
a VecEnv wrapper, the schedule through a callback, and for off-policy algorithms the stored
rewards are rewritten in place after each reward-model update (:func:`relabel_replay_buffer`).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3 import A2C, DDPG, DQN, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import VecEnv

from prefloop.envs.learned_reward import RewardFunction
from prefloop.structured_obs import batch_as_array

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {
    "ppo": PPO,
    "a2c": A2C,
    "sac": SAC,
    "td3": TD3,
    "ddpg": DDPG,
    "dqn": DQN,
}

_DISCRETE_ONLY = {"dqn"}
_CONTINUOUS_ONLY = {"sac", "td3", "ddpg"}


class AlgorithmError(ValueError):
    """The algorithm name or its hyper-parameters cannot be used; the message says how to fix it."""


def algorithm_class(name: str) -> type[BaseAlgorithm]:
    try:
        return ALGORITHMS[name.lower()]
    except KeyError:
        close = difflib.get_close_matches(name.lower(), ALGORITHMS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise AlgorithmError(
            f"Unknown algorithm {name!r}.{hint} Choose one of: {', '.join(ALGORITHMS)}."
        ) from None


def check_algorithm_fits(name: str, action_space: spaces.Space, env_id: str) -> None:
    """Raise :class:`AlgorithmError` when the algorithm cannot act in this action space."""
    name = name.lower()
    if name in _DISCRETE_ONLY and not isinstance(action_space, spaces.Discrete):
        raise AlgorithmError(f"{name.upper()} needs a Discrete action space; {env_id} has {action_space}. Try --algo ppo.")
    if name in _CONTINUOUS_ONLY and not isinstance(action_space, spaces.Box):
        raise AlgorithmError(f"{name.upper()} needs a Box action space; {env_id} has {action_space}. Try --algo ppo.")


def default_policy(observation_space: spaces.Space) -> str:
    """SB3's policy for these observations: ``MultiInputPolicy`` for a Dict (Tuple and nested
    Dict observations reach SB3 as a flat Dict, see ``prefloop.envs.structured``), else ``MlpPolicy``."""
    return "MultiInputPolicy" if isinstance(observation_space, spaces.Dict) else "MlpPolicy"


def resolve_schedules(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """Turn the zoo's ``"lin_X"`` strings into SB3 linear schedules from X down to 0."""
    resolved = {}
    for key, value in hyperparameters.items():
        if isinstance(value, str) and value.startswith("lin_"):
            resolved[key] = LinearSchedule(float(value[4:]), 0.0, 1.0)
        else:
            resolved[key] = value
    return resolved


def make_algorithm(
    name: str,
    env: VecEnv,
    hyperparameters: dict[str, Any],
    *,
    seed: int,
    tensorboard_dir: Path | None,
) -> BaseAlgorithm:
    """Build SB3 algorithm ``name`` on ``env`` with :func:`default_policy`'s policy.

    Raises:
        AlgorithmError: unknown algorithm, wrong action space, or hyper-parameters it rejects.
    """
    cls = algorithm_class(name)
    try:
        return cls(
            default_policy(env.observation_space),
            env,
            seed=seed,
            verbose=0,
            tensorboard_log=str(tensorboard_dir) if tensorboard_dir is not None else None,
            **resolve_schedules(hyperparameters),
        )
    except TypeError as exc:
        raise AlgorithmError(f"{name.upper()} rejected its hyper-parameters {sorted(hyperparameters)}: {exc}") from exc


def is_off_policy(model: BaseAlgorithm) -> bool:
    return isinstance(model, OffPolicyAlgorithm)


def relabel_replay_buffer(model: BaseAlgorithm, reward_fn: RewardFunction, chunk_size: int = 65_536) -> int:
    """Rewrite the rewards of every stored transition with the current learned reward.

    Without this, an off-policy learner would keep fitting rewards from every outdated reward
    model it ever had (PEBBLE's relabelling). Returns the number of transitions relabelled.
    """
    if not is_off_policy(model):
        return 0
    buffer = model.replay_buffer  # type: ignore[attr-defined]
    filled = buffer.buffer_size if buffer.full else buffer.pos
    if filled == 0:
        return 0
    n_envs = buffer.n_envs
    if isinstance(buffer.observations, dict):  # DictReplayBuffer: flat vectors, as the reward model reads
        obs = batch_as_array(model.observation_space)(
            {key: value[:filled].reshape(filled * n_envs, *buffer.obs_shape[key]) for key, value in buffer.observations.items()}
        )
    else:
        obs = buffer.observations[:filled].reshape(filled * n_envs, *buffer.obs_shape)
    actions = buffer.actions[:filled].reshape(filled * n_envs, buffer.action_dim)
    if isinstance(model.action_space, spaces.Box):
        # SB3 stores Box actions squashed to [-1, 1]; the reward model saw env actions.
        actions = model.policy.unscale_action(actions)
    elif isinstance(model.action_space, spaces.Discrete):
        actions = actions.reshape(-1).astype(np.int64)
    rewards = np.empty(filled * n_envs, dtype=np.float32)
    for start in range(0, len(rewards), chunk_size):
        stop = start + chunk_size
        rewards[start:stop] = reward_fn.predict(obs[start:stop], actions[start:stop])
    buffer.rewards[:filled] = rewards.reshape(filled, n_envs)
    return filled * n_envs
