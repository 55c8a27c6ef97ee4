"""Does PPO with rl-baselines3-zoo's tuned MuJoCo settings reach trained returns on a 2-core CPU?

SB3 PPO with the zoo's Hopper-v3 / Walker2d-v3 hyper-parameters (256x256 ReLU nets, log_std_init -2,
``VecNormalize`` on observations and optionally rewards, as the zoo's ``normalize: true``), on the
true reward, one torch thread. Every ``--every`` steps the deterministic policy is evaluated on 5
episodes of the env's own reward; each line of the output is (env steps, mean return, wall s, CPU s).

    taskset -c 0 python benchmarks/ppo_zoo_mujoco.py --env Hopper-v5 --steps 1000000 --seed 0 --out bench-out/ppo-zoo-hopper-0.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn

# rl-baselines3-zoo, hyperparams/ppo.yml (Hopper-v3, Walker2d-v3).
ZOO = {
    "Hopper-v5": dict(batch_size=32, n_steps=512, gamma=0.999, learning_rate=9.80828e-05, ent_coef=0.00229519,
                      clip_range=0.2, n_epochs=5, gae_lambda=0.99, max_grad_norm=0.7, vf_coef=0.835671),
    "Walker2d-v5": dict(batch_size=32, n_steps=512, gamma=0.99, learning_rate=5.05041e-05, ent_coef=0.000585045,
                        clip_range=0.1, n_epochs=20, gae_lambda=0.95, max_grad_norm=1, vf_coef=0.871923),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Hopper-v5", choices=sorted(ZOO))
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=100_000, help="env steps between evaluations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-norm-reward", action="store_true", help="normalise observations only")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    venv = VecNormalize(make_vec_env(args.env, n_envs=1, seed=args.seed), norm_obs=True, norm_reward=not args.no_norm_reward)
    policy_kwargs = dict(log_std_init=-2, ortho_init=False, activation_fn=nn.ReLU, net_arch=dict(pi=[256, 256], vf=[256, 256]))
    model = PPO("MlpPolicy", venv, seed=args.seed, verbose=0, policy_kwargs=policy_kwargs, **ZOO[args.env])

    def evaluate(episodes: int = 5) -> float:
        env, returns = gym.make(args.env), []
        for episode in range(episodes):
            obs, _ = env.reset(seed=10_000 + episode)
            done, total = False, 0.0
            while not done:
                action, _ = model.predict(venv.normalize_obs(obs[None]), deterministic=True)
                obs, reward, terminated, truncated, _ = env.step(action[0])
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
        return float(np.mean(returns))

    wall, cpu, rows = time.perf_counter(), time.process_time(), []
    for block in range(args.steps // args.every):
        model.learn(args.every, reset_num_timesteps=False)
        rows.append(((block + 1) * args.every, evaluate(), time.perf_counter() - wall, time.process_time() - cpu))
        print(rows[-1], flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"env": args.env, "seed": args.seed, "norm_reward": not args.no_norm_reward,
                                        "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
