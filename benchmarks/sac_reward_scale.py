"""Does SAC on Hopper care how large its reward is? The learned reward of a preference run is the
true one up to a factor (~0.4 on Hopper-v5, measured by regressing it on the true reward's terms),
so this trains SAC on ``factor * true reward`` with the preset's hyper-parameters and evaluates the
deterministic policy on the true reward, as ``prefloop bench`` does.

    python benchmarks/sac_reward_scale.py --factor 0.4 --steps 80000 --seed 0 --out bench-out/sac-scale-0.4.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from prefloop.envs import EnvSpec, make_env
from prefloop.envs.presets import default_preset
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from prefloop.training.algos import make_algorithm
from prefloop.training.evaluation import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--factor", type=float, default=0.4, help="reward multiplier")
    parser.add_argument("--steps", type=int, default=80_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    preset = default_preset(args.env)
    spec = EnvSpec(args.env, preset.env_kwargs)
    venv = DummyVecEnv([lambda: Monitor(gym.wrappers.TransformReward(make_env(spec, seed=args.seed), lambda r: args.factor * r))])
    model = make_algorithm("sac", venv, preset.hyperparameters("sac"), seed=args.seed, tensorboard_dir=None)
    started = time.perf_counter()
    model.learn(total_timesteps=args.steps, progress_bar=False)
    returns = evaluate(model, spec, episodes=10, seed=args.seed + 10_000)
    result = {"env_id": args.env, "factor": args.factor, "steps": args.steps, "seed": args.seed,
              "eval_return_mean": float(np.mean(returns)), "eval_returns": returns,
              "wall_time_s": time.perf_counter() - started}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
