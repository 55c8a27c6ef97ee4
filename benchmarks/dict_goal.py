"""Dict observations: normalised return on the goal env of tests/goal_env.py.

For each seed, the same learner (PPO, MultiInputPolicy, 4 envs) trains twice for ``--steps`` env
steps: on a reward learned from ``--labels`` oracle labels, and on the env's true (dense) reward.
A uniformly random policy gives the zero point: normalised return = (R - R_random) / (R_true - R_random).

    .venv/bin/python benchmarks/dict_goal.py --seeds 0 1 2 --labels 200 --steps 10000 --out bench-out/dict_goal

Writes ``results.json`` under ``--out`` and prints a Markdown table (docs/observations.md holds it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import goal_env  # noqa: E402

from prefloop.metrics import normalized_return  # noqa: E402
from prefloop.reward_models import RewardModelConfig  # noqa: E402
from prefloop.training.config import TrainConfig  # noqa: E402
from prefloop.training.loop import train  # noqa: E402


def random_return(env_id: str, episodes: int, seed: int) -> float:
    """Mean true return of uniformly random actions."""
    env = gym.make(env_id)
    env.action_space.seed(seed)
    returns = []
    for episode in range(episodes):
        env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def run(env_id: str, out: Path, seed: int, source: str, labels: int, steps: int, eval_episodes: int) -> float:
    config = TrainConfig(
        env_id=env_id, run_dir=out / f"{source}-s{seed}", labels=labels, steps=steps, seed=seed,
        progress_bar=False, eval_episodes=eval_episodes, segment_length=10, algo="ppo", n_envs=4,
        algo_kwargs={"n_steps": 128, "batch_size": 64}, reward_source=source,
        reward_model=RewardModelConfig(epochs=30),
    )
    return float(train(config).eval_return_mean)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--labels", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--tuple", action="store_true", help="the Tuple-observation variant")
    parser.add_argument("--out", type=Path, default=Path("bench-out/dict_goal"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    goal_env.register()
    env_id = goal_env.TUPLE_ENV_ID if args.tuple else goal_env.ENV_ID
    r_random = random_return(env_id, 200, seed=10_000)
    rows = []
    for seed in args.seeds:
        learned = run(env_id, args.out, seed, "preferences", args.labels, args.steps, args.eval_episodes)
        true = run(env_id, args.out, seed, "true", args.labels, args.steps, args.eval_episodes)
        rows.append({"seed": seed, "preferences": learned, "true": true, "random": r_random,
                     "normalized": normalized_return(learned, r_random, true)})
        print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"env_id": env_id, "labels": args.labels, "steps": args.steps, "rows": rows}, indent=2))
    print(f"\n| seed | return, {args.labels} labels | return, true reward | random | normalised |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['preferences']:.2f} | {r['true']:.2f} | {r['random']:.2f} | {r['normalized']:.2f} |")
    print(f"mean normalised return: {np.mean([r['normalized'] for r in rows]):.2f}")


if __name__ == "__main__":
    main()
