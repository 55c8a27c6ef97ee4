"""Choosing and building a stable-baselines3 algorithm, and relabelling its replay buffer.

prefloop composes with SB3 and never subclasses an algorithm: the learned reward comes in through
a VecEnv wrapper, the schedule through a callback, and for off-policy algorithms the stored
rewards are rewritten in place after each reward-model update (:func:`relabel_replay_buffer`).
"""

from __future__ import annotations

import copy
import difflib
import logging
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3 import A2C, DDPG, DQN, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import VecEnv, VecTransposeImage, is_vecenv_wrapped

from prefloop.envs.learned_reward import RewardFunction
from prefloop.import_paths import ImportPathError, describe, is_import_path
from prefloop.import_paths import load as load_import_path
from prefloop.structured_obs import batch_as_array

log = logging.getLogger("prefloop")

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


def algorithm_class(name: str | type) -> type[BaseAlgorithm]:
    """The algorithm class of a name (``"ppo"``), an import path (``"sb3_contrib:TRPO"``) or a class
    (any :class:`~stable_baselines3.common.base_class.BaseAlgorithm` subclass, e.g. sb3-contrib's).

    Raises:
        AlgorithmError: unknown name, a path that does not import, or not an SB3 algorithm class.
    """
    if isinstance(name, str) and is_import_path(name):
        try:
            cls = load_import_path(name, "algorithm")
        except ImportPathError as exc:
            hint = " (pip install 'prefloop[contrib]')" if name.startswith("sb3_contrib") else ""
            raise AlgorithmError(f"{exc}{hint}") from None
        name = cls
    if not isinstance(name, str):
        if not (isinstance(name, type) and issubclass(name, BaseAlgorithm)):
            raise AlgorithmError(
                f"algo {name!r} is not a stable-baselines3 algorithm class (a subclass of BaseAlgorithm, "
                "e.g. sb3_contrib.TRPO)"
            )
        return name
    try:
        return ALGORITHMS[name.lower()]
    except KeyError:
        close = difflib.get_close_matches(name.lower(), ALGORITHMS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise AlgorithmError(
            f"Unknown algorithm {name!r}.{hint} Choose one of: {', '.join(ALGORITHMS)}, or an "
            "algorithm class by its import path such as sb3_contrib:TRPO."
        ) from None


def algorithm_name(algo: str | type) -> str:
    """How logs and plot titles name an algorithm: ``PPO``, ``TRPO``."""
    return algo.upper() if isinstance(algo, str) and not is_import_path(algo) else algorithm_class(algo).__name__


def is_off_policy_class(cls: type[BaseAlgorithm]) -> bool:
    return issubclass(cls, OffPolicyAlgorithm)


def policy_for(policy: str | type | None, observation_space: spaces.Space | None = None) -> str | type:
    """The policy argument of an SB3 algorithm: a name (``"MlpPolicy"``), a class, or a class by
    its import path; None is :func:`default_policy` (``"MlpPolicy"`` without a space)."""
    if policy is None:
        return "MlpPolicy" if observation_space is None else default_policy(observation_space)
    if isinstance(policy, str) and is_import_path(policy):
        try:
            return load_import_path(policy, "policy")
        except ImportPathError as exc:
            raise AlgorithmError(str(exc)) from None
    return policy


def check_algorithm_fits(name: str | type, action_space: spaces.Space, env_id: str) -> None:
    """Raise :class:`AlgorithmError` when the algorithm cannot act in this action space."""
    if not isinstance(name, str) or is_import_path(name):
        cls = algorithm_class(name)
        supported = getattr(cls, "supported_action_spaces", None)  # set by some classes; SB3 checks in __init__
        if supported and not isinstance(action_space, tuple(supported)):
            raise AlgorithmError(f"{cls.__name__} cannot act in {env_id}'s action space {action_space}. Try --algo ppo.")
        return
    name = name.lower()
    if name in _DISCRETE_ONLY and not isinstance(action_space, spaces.Discrete):
        raise AlgorithmError(f"{name.upper()} needs a Discrete action space; {env_id} has {action_space}. Try --algo ppo.")
    if name in _CONTINUOUS_ONLY and not isinstance(action_space, spaces.Box):
        raise AlgorithmError(f"{name.upper()} needs a Box action space; {env_id} has {action_space}. Try --algo ppo.")


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
    name: str | type,
    env: VecEnv,
    hyperparameters: dict[str, Any],
    *,
    seed: int,
    tensorboard_dir: Path | None,
    policy: str | type | None = None,
) -> BaseAlgorithm:
    """Build SB3 algorithm ``name`` (a name, class or import path, see :func:`algorithm_class`)
    on ``env`` with ``policy`` (None: :func:`default_policy` of the env's observations).

    Raises:
        AlgorithmError: unknown algorithm, wrong action space, or hyper-parameters it rejects.
    """
    cls = algorithm_class(name)
    label = algorithm_name(name)
    try:
        return cls(
            policy_for(policy, env.observation_space),
            env,
            seed=seed,
            verbose=0,
            tensorboard_log=str(tensorboard_dir) if tensorboard_dir is not None else None,
            # a deep copy: SB3 writes into nested dicts (SAC adds use_sde to policy_kwargs), which
            # would change the run's config and, through a preset's shared dict, the next run's
            **resolve_schedules(copy.deepcopy(hyperparameters)),
        )
    except TypeError as exc:
        raise AlgorithmError(f"{label} rejected its hyper-parameters {sorted(hyperparameters)}: {exc}") from exc
    except (AssertionError, ValueError, KeyError) as exc:  # SB3's checks of spaces and policy names
        raise AlgorithmError(f"{label} cannot be built on this env with policy {describe(policy) if policy is not None and not isinstance(policy, str) else policy or default_policy(env.observation_space)}: {exc}") from exc


def default_policy(observation_space: spaces.Space) -> str:
    """``"MultiInputPolicy"`` for a Dict (Tuple and nested Dict observations reach SB3 as a flat
    Dict, see ``prefloop.envs.structured``); ``"CnnPolicy"`` (SB3's Nature-DQN torso, pixels
    scaled by 1/255) for image observations -- uint8 ``(C, H, W)`` or ``(H, W, C)`` with bounds
    0..255, as SB3 detects them; else ``"MlpPolicy"``."""
    if isinstance(observation_space, spaces.Dict):
        return "MultiInputPolicy"
    return "CnnPolicy" if is_image_space(observation_space, check_channels=False) else "MlpPolicy"


def is_off_policy(model: BaseAlgorithm) -> bool:
    return isinstance(model, OffPolicyAlgorithm)


def reset_critic(model: BaseAlgorithm) -> bool:
    """PEBBLE's critic reset: give an actor-critic off-policy learner (SAC, TD3, DDPG) a freshly
    initialised critic, its target a copy of it, and a new critic optimiser; the actor, the entropy
    coefficient and the replay buffer stay. After unsupervised exploration the critic has learnt the
    values of the exploration reward, a wrong start for the learned one. Returns False, changing
    nothing, for a learner without a separate critic (DQN, on-policy algorithms)."""
    critic, target = getattr(model, "critic", None), getattr(model, "critic_target", None)
    if not is_off_policy(model) or critic is None or target is None or not hasattr(critic, "q_networks"):
        return False
    shared = bool(getattr(model.policy, "share_features_extractor", False))
    parts = [*critic.q_networks] + ([] if shared else [critic.features_extractor])
    for part in parts:
        for module in part.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    target.load_state_dict(critic.state_dict())
    # As SB3 builds it: without the features extractor when the actor owns it.
    params = [p for name, p in critic.named_parameters() if not (shared and "features_extractor" in name)]
    critic.optimizer = model.policy.optimizer_class(params, lr=model.lr_schedule(1), **model.policy.optimizer_kwargs)
    return True


def reset_critic_after_exploration(model: BaseAlgorithm, exploration_steps: int) -> None:
    """``--reset-critic``: :func:`reset_critic` after ``exploration_steps`` of unsupervised
    exploration, or one warning line saying why it did nothing (no exploration, or no critic of its own)."""
    if not exploration_steps:
        log.warning("--reset-critic did nothing: it resets the critic after --unsupervised-steps, and this run has none")
    elif reset_critic(model):
        log.info("critic reset after %d steps of exploration (PEBBLE)", exploration_steps)
    else:
        # Named with its package: SBX's SAC is an SB3 off-policy algorithm too, but its critic is JAX's.
        package = type(model).__module__.split(".")[0]
        log.warning("--reset-critic did nothing: it resets the critic of stable_baselines3's SAC, TD3 or DDPG, not of %s's %s",
                    package, type(model).__name__)


def rewards_wait_for_rollout_end(model: BaseAlgorithm) -> bool:
    """Whether the learner reads a rollout's rewards only at the rollout's end: SB3's own
    on-policy rollout collection (PPO, A2C and subclasses that keep it) into a plain rollout buffer.
    A learner that collects its own way (e.g. sb3-contrib's RecurrentPPO) is given each step's
    reward as it happens."""
    return (
        isinstance(model, OnPolicyAlgorithm)
        and type(model).collect_rollouts is OnPolicyAlgorithm.collect_rollouts
        and type(model.rollout_buffer) in (RolloutBuffer, DictRolloutBuffer)
    )


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
        env = model.get_env()
        if env is not None and is_vecenv_wrapped(env, VecTransposeImage):
            # SB3 stores channel-last frames channel-first (VecTransposeImage, its own wrapper);
            # the reward model reads them as the env gives them, as segments keep them.
            obs = obs.transpose(0, 2, 3, 1)
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
