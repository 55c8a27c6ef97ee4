"""Would one learned-reward predict per PPO rollout be cheaper than one per vector step?

For each classic-control preset's env count, times ``RewardEnsemble.predict`` on ``--steps`` vector
steps of random inputs, once step by step (as ``VecLearnedReward`` does) and once as a single batch
(as ``RolloutRewardCallback`` does for PPO and A2C), in CPU microseconds per vector step, and
whether the rewards are bit-identical (a large batch may round in the last bit differently). The
batch is timed twice: on one BLAS thread, as ``train()`` runs numpy, and on numpy's default
threads (a second OpenBLAS thread spins after each call: CPU time above wall time).

    python benchmarks/predict_batching.py
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch
from threadpoolctl import threadpool_limits
from prefloop.reward_models import RewardModelConfig, build_reward_model

ENVS = (("CartPole-v1", 8), ("Pendulum-v1", 4), ("Acrobot-v1", 16))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1024, help="vector steps per rollout (PPO's n_steps)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for env_id, n_envs in ENVS:
        env = gym.make(env_id)
        model = build_reward_model(env.observation_space, env.action_space, RewardModelConfig(seed=0))
        rng = np.random.default_rng(0)
        obs = rng.normal(size=(args.steps, n_envs, *env.observation_space.shape)).astype(np.float32)
        actions = np.array([[env.action_space.sample() for _ in range(n_envs)] for _ in range(args.steps)])
        flat_obs, flat_actions = obs.reshape(-1, *obs.shape[2:]), actions.reshape(-1, *actions.shape[2:])
        model.predict(obs[0], actions[0])  # the numpy weight snapshot
        per_step = batched = default_threads = float("inf")
        for _ in range(args.repeats):
            with threadpool_limits(1, user_api="blas"):
                started = time.process_time()
                stepwise = np.stack([model.predict(obs[t], actions[t]) for t in range(args.steps)])
                per_step = min(per_step, time.process_time() - started)
                started = time.process_time()
                batch = model.predict(flat_obs, flat_actions).reshape(args.steps, n_envs)
                batched = min(batched, time.process_time() - started)
            started = time.process_time()
            model.predict(flat_obs, flat_actions)
            default_threads = min(default_threads, time.process_time() - started)
        same = "bit-identical" if np.array_equal(stepwise, batch) else f"max difference {np.abs(stepwise - batch).max():.3g}"
        print(f"{env_id} ({n_envs} envs): per step {1e6 * per_step / args.steps:.1f} us, "
              f"one batch {1e6 * batched / args.steps:.1f} us per vector step "
              f"({1e6 * default_threads / args.steps:.1f} on numpy's default BLAS threads); {same}")


if __name__ == "__main__":
    main()
