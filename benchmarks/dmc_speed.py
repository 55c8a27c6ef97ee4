"""What DeepMind Control costs on this CPU: env steps/s, clip frames/s, a random policy's return, and
optionally a true-reward SAC run of the preset through ``prefloop``'s own loop (one torch thread).

    MUJOCO_GL=egl python benchmarks/dmc_speed.py --env walker_walk --sac-steps 20000 --out bench-out/dmc-walker.json

Needs the ``dmc`` extra. Returns are the task's own reward (0-1 per step, 1,000-step episodes, so 0-1000).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from prefloop.envs import EnvSpec, make_env
from prefloop.envs.presets import default_preset

from prefloop.training.config import TrainConfig
from prefloop.training.loop import train


def random_policy(spec: EnvSpec, episodes: int, seed: int) -> dict[str, float]:
    """Return of uniform random actions over whole episodes, and raw env steps/s (no rendering)."""
    env = make_env(spec, seed=seed)
    env.action_space.seed(seed)
    returns, steps, start = [], 0, time.perf_counter()
    for _ in range(episodes):
        env.reset()
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total, steps, done = total + float(reward), steps + 1, terminated or truncated
        returns.append(total)
    elapsed = time.perf_counter() - start
    env.close()
    return {"random_return_mean": float(np.mean(returns)), "random_return_std": float(np.std(returns)),
            "random_episodes": episodes, "env_steps_per_s": steps / elapsed}


def render_speed(spec: EnvSpec, frames: int, seed: int) -> dict[str, float]:
    """Frames/s of clip rendering (the rater's clips: prefloop's fast headless settings), and how
    dark the darkest frame is (0 would be a black frame)."""
    env = make_env(spec, seed=seed, render_mode="rgb_array")
    env.action_space.seed(seed)
    env.reset()
    env.render()  # the GL context is made at the first frame; not timed
    start, darkest = time.perf_counter(), 255
    for _ in range(frames):
        env.step(env.action_space.sample())
        darkest = min(darkest, int(np.asarray(env.render()).max()))
    elapsed = time.perf_counter() - start
    env.close()
    return {"render_frames_per_s": frames / elapsed, "darkest_frame_max_pixel": darkest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="walker_walk")
    parser.add_argument("--episodes", type=int, default=10, help="random-policy episodes")
    parser.add_argument("--frames", type=int, default=200, help="frames rendered for the render speed")
    parser.add_argument("--sac-steps", type=int, default=0, help="true-reward SAC steps (0: skip)")
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = EnvSpec(args.env, default_preset(args.env).env_kwargs)
    result: dict = {"env_id": args.env, "seed": args.seed, "load_average_at_start": os.getloadavg()[0]}
    result.update(random_policy(spec, args.episodes, args.seed))
    result.update(render_speed(spec, args.frames, args.seed))
    if args.sac_steps:
        config = TrainConfig(env_id=args.env, run_dir=args.out.with_suffix(".run"), reward_source="true",
                             steps=args.sac_steps, seed=args.seed, eval_episodes=args.eval_episodes,
                             progress_bar=False, checkpoint_every=args.sac_steps)
        cpu_start, start = time.process_time(), time.perf_counter()
        run = train(config)
        result.update({
            "sac_steps": args.sac_steps, "sac_eval_return_mean": run.eval_return_mean,
            "sac_eval_return_std": run.eval_return_std, "sac_wall_s": time.perf_counter() - start,
            "sac_cpu_s": time.process_time() - cpu_start, "sac_run_wall_s": run.wall_time_s,
            "sac_env_steps_per_s_wall": args.sac_steps / run.wall_time_s,
            "sac_env_steps_per_s_cpu": args.sac_steps / run.cpu_time_s,
            "sac_curve": run.curve, "load_average_at_end": os.getloadavg()[0],
        })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "sac_curve"}, indent=2))


if __name__ == "__main__":
    main()
