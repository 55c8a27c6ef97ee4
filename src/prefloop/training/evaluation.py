"""How a run's result is measured: the final policy's return on the true reward, and what makes
that number readable (a random policy's return on the same seeds, the env's "solved" threshold)."""

from __future__ import annotations

import logging

import gymnasium as gym
import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from prefloop.envs import EnvSpec, make_env
from prefloop.envs.factory import registered_name
from prefloop.envs.observation_norm import frozen_copy
from prefloop.training.config import TrainConfig

log = logging.getLogger("prefloop")

# Steps after which an evaluation episode is cut when the env has no time limit of its own
# (CliffWalking-v1, Blackjack-v1, many users' envs): a deterministic policy that walks into a wall
# would otherwise never end its episode, and the run would never finish.
UNLIMITED_EPISODE_CAP = 10_000


def bounded_episodes(env: gym.Env, *, say_so: bool = False) -> gym.Env:
    """``env`` as it is when it has a time limit of its own (:func:`_has_time_limit`), else cut at
    :data:`UNLIMITED_EPISODE_CAP` steps (truncated, as Gymnasium's ``TimeLimit`` does); ``say_so`` logs
    that it will be (information: the evaluation warns afterwards if an episode was in fact cut)."""
    if _has_time_limit(env):
        return env
    if say_so:
        # Information, not a warning: most such envs end their episodes themselves (Blackjack,
        # DeepMind Control through shimmy); the evaluation warns if an episode was in fact cut.
        log.info("%s registers no time limit: an evaluation episode still running at %d steps is cut there",
                 env.spec.id if env.spec else env, UNLIMITED_EPISODE_CAP)
    return gym.wrappers.TimeLimit(env, max_episode_steps=UNLIMITED_EPISODE_CAP)


def _has_time_limit(env: gym.Env) -> bool:
    """A registered limit, or a ``TimeLimit`` anywhere in the wrappers (an env factory's own, which
    an unregistered env's spec does not show)."""
    if env.spec is not None and env.spec.max_episode_steps is not None:
        return True
    while isinstance(env, gym.Wrapper):
        if isinstance(env, gym.wrappers.TimeLimit):
            return True
        env = env.env
    return False


def evaluate(model: BaseAlgorithm, spec: EnvSpec, episodes: int, seed: int) -> list[float]:
    """Deterministic-policy returns on the true reward, one fresh env, ``episodes`` episodes (a
    policy trained on standardised observations sees them standardised as in training, frozen; an
    env without a time limit has its episodes cut, :func:`bounded_episodes`)."""
    env = make_env(spec, seed=seed)
    bounded = bounded_episodes(env, say_so=True)
    capped = bounded is not env  # the cap was added: the env has no time limit of its own
    eval_env = DummyVecEnv([lambda: Monitor(bounded)])
    normalizer = model.get_vec_normalize_env()
    if normalizer is not None:
        eval_env = frozen_copy(normalizer, eval_env)
    try:
        returns, lengths = evaluate_policy(model, eval_env, n_eval_episodes=episodes, deterministic=True, return_episode_rewards=True)
    finally:
        eval_env.close()
    cut = sum(int(length) >= UNLIMITED_EPISODE_CAP for length in lengths)  # type: ignore[union-attr]
    if capped and cut:
        log.warning("%d of %d evaluation episodes never ended: each was cut at %d steps, so the return is that of "
                    "a policy stuck for %d steps (e.g. walking into a wall)", cut, len(lengths), UNLIMITED_EPISODE_CAP,
                    UNLIMITED_EPISODE_CAP)
    return [float(r) for r in returns]


def result_context(eval_return: float, spec: EnvSpec, config: TrainConfig) -> dict[str, float]:
    """A finished run's return for people (the rater app's last page), with what makes it
    readable: a random policy's return on the same episodes' seeds and, when the env's Gymnasium
    spec has one, its reward threshold ("solved")."""
    import gymnasium as gym

    context = {"eval_return_mean": eval_return,
               "random_return_mean": float(np.mean(random_policy_returns(spec, config.eval_episodes, config.seed + 10_000)))}
    try:
        threshold = gym.spec(registered_name(spec.env_id)).reward_threshold
    except (gym.error.Error, ValueError):
        threshold = None
    if threshold is not None:
        context["reward_threshold"] = float(threshold)
    return context


def random_policy_returns(spec: EnvSpec, episodes: int, seed: int) -> list[float]:
    """Returns of uniformly random actions: the 0 of the normalised return."""
    env = bounded_episodes(make_env(spec, seed=seed))
    env.action_space.seed(seed)
    returns = []
    try:
        for _ in range(episodes):
            env.reset()
            total, done = 0.0, False
            while not done:
                _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return returns
