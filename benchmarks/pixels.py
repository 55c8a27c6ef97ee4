"""Pixels: memory per segment, steps per second and learning from 200 oracle labels on images.

    python benchmarks/pixels.py memory                  # bytes per segment, uint8 vs float32
    python benchmarks/pixels.py speed --steps 4096      # env and train() steps/s, pixel vs MLP path
    python benchmarks/pixels.py learn --env prefloop/CartPolePixels-v1 --steps 100000 --seeds 0
                                                        # 200 oracle labels vs the true reward
    python benchmarks/pixels.py reward-check --run-dir RUN --env prefloop/CartPolePixels-v1
                                                        # a run's learned reward on held-out segments
    python benchmarks/pixels.py plot --run-dirs RUN... --png docs/results/pixels-cartpole.png
                                                        # true return vs env steps of finished runs

Every run is one process with torch.set_num_threads(1); ``learn`` runs the preference run and the
true-reward run of each seed one after the other, each under ``--timeout`` seconds. Results are
printed as JSON lines and appended to ``--out`` (default ``bench-out/pixels.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ATARI = "prefloop/Atari-v0"
PIXEL_CARTPOLE = "prefloop/CartPolePixels-v1"


def _segments(env_id: str, length: int, steps: int) -> list:
    from prefloop.envs import EnvSpec, SegmentBuffer, VecSegmentRecorder
    from prefloop.training.loop import build_vec_env, collect_random

    buffer = SegmentBuffer(1000)
    recorder = VecSegmentRecorder(build_vec_env(EnvSpec(env_id), 2, seed=0), buffer, length, seed=0)
    collect_random(recorder, steps, seed=0)
    return buffer.recent()


def _root(array: np.ndarray) -> np.ndarray:
    """The array whose memory ``array`` views (through as_strided's holder)."""
    while getattr(array, "base", None) is not None:
        array = array.base
    return array


def memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Bytes per segment: in memory (obs array) and in the store (its npy blob), uint8 vs float32."""
    from prefloop.serialization import array_to_bytes

    rows = []
    for env_id, length in ((ATARI, 25), (ATARI, 50), (PIXEL_CARTPOLE, 50), ("CartPole-v1", 50)):
        segments = _segments(env_id, length, steps=args.steps)
        seg = segments[0]
        stored = np.mean([len(array_to_bytes(s.obs)) for s in segments])
        float32 = len(array_to_bytes(seg.obs.astype(np.float32)))
        roots = {id(_root(s.obs)): _root(s.obs).nbytes for s in segments}
        rows.append({
            "bench": "memory", "env_id": env_id, "segment_length": length, "obs_shape": list(seg.obs.shape[1:]),
            "obs_dtype": str(seg.obs.dtype), "segments": len(segments),
            "segments_sharing_frames": sum(not s.obs.flags.writeable for s in segments),
            "obs_bytes_in_memory_shared": sum(roots.values()) / len(segments),
            "obs_bytes_in_memory": int(seg.obs.nbytes),
            "obs_bytes_in_store": float(stored), "obs_bytes_as_float32": float32,
            "ratio_float32_over_stored": float32 / stored,
            "buffer_2000_segments_MB": 2000 * seg.obs.nbytes / 1e6,
            "buffer_2000_segments_float32_MB": 2000 * float32 / 1e6,
        })
    return rows


def _env_steps_per_second(env_id: str, steps: int, n_envs: int = 8) -> float:
    """Env steps per CPU-second of random play, ``n_envs`` envs under the segment recorder."""
    from prefloop.envs import EnvSpec, SegmentBuffer, VecSegmentRecorder
    from prefloop.training.loop import build_vec_env

    venv = VecSegmentRecorder(build_vec_env(EnvSpec(env_id), n_envs, seed=0), SegmentBuffer(2000), 50, seed=0)
    venv.reset()
    venv.action_space.seed(0)
    start = time.process_time()  # CPU time: the machine is shared, wall time measures the others too
    for _ in range(steps // n_envs):
        venv.step(np.array([venv.action_space.sample() for _ in range(n_envs)]))
    elapsed = time.process_time() - start
    venv.close()
    return (steps // n_envs) * n_envs / elapsed


def _train(env_id: str, run_dir: Path, *, steps: int, labels: int, seed: int, reward_source: str,
           cnn: str, eval_episodes: int, background_fit: bool | None = None) -> dict[str, Any]:
    from prefloop.reward_models import RewardModelConfig
    from prefloop.training.config import TrainConfig
    from prefloop.training.loop import train

    torch.set_num_threads(1)
    config = TrainConfig(
        env_id=env_id, run_dir=run_dir, labels=labels, steps=steps, seed=seed, progress_bar=False,
        eval_episodes=eval_episodes, reward_source=reward_source, background_fit=background_fit,
        # image runs: the smaller torso and small batches, so reward fitting fits a CPU core
        reward_model=RewardModelConfig(cnn=cnn, batch_size=8, min_steps_per_fit=50, max_steps_per_fit=200, steps_per_label=2, seed=seed)
        if env_id.startswith("prefloop/") else RewardModelConfig(),
    )
    result = train(config)
    return {
        "env_id": env_id, "seed": seed, "steps": steps, "labels": labels if reward_source == "preferences" else 0,
        "reward_source": reward_source, "eval_return_mean": result.eval_return_mean,
        "eval_returns": list(result.eval_returns), "wall_time_s": result.wall_time_s, "cpu_time_s": result.cpu_time_s,
        "reward_learning_time_s": result.reward_learning_time_s, "background_fit": background_fit,
    }


def _in_process(timeout: float, fn, *args, **kwargs) -> dict[str, Any]:
    """Run ``fn`` in a child process, killed after ``timeout`` seconds (rows say so)."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        job = pool.apply_async(fn, args, kwargs)
        try:
            return job.get(timeout)
        except multiprocessing.TimeoutError:
            pool.terminate()
            return {"timed_out_after_s": timeout}


def speed(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Env steps/s (random actions, 8 envs, recorder on) and train() steps/s with the learned reward."""
    rows = []
    for env_id in args.envs:
        row = {"bench": "speed", "env_id": env_id, "env_steps_per_cpu_s": _env_steps_per_second(env_id, args.steps)}
        for reward_source in ("preferences", "true"):
            out = _in_process(args.timeout, _train, env_id, Path(args.run_root) / f"speed-{env_id.replace('/', '_')}-{reward_source}",
                              steps=args.steps, labels=20, seed=0, reward_source=reward_source, cnn=args.cnn, eval_episodes=1)
            if "wall_time_s" in out:
                row[f"train_{reward_source}_steps_per_s"] = args.steps / out["wall_time_s"]
                # per CPU-second of the run's process: what a core gives when it is not shared
                row[f"train_{reward_source}_steps_per_cpu_s"] = args.steps / out["cpu_time_s"]
                row[f"train_{reward_source}_reward_learning_s"] = out["reward_learning_time_s"]
            else:
                row[f"train_{reward_source}"] = out
        rows.append(row)
    return rows


def learn(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``--labels`` oracle labels vs the true reward, same learner, same steps, per seed."""
    from prefloop.envs import EnvSpec
    from prefloop.training.evaluation import random_policy_returns

    random_mean = float(np.mean(random_policy_returns(EnvSpec(args.env), args.eval_episodes, 10_000)))
    rows = []
    for seed in args.seeds:
        for reward_source in args.reward_sources:
            run_dir = Path(args.run_root) / f"learn-{args.env.replace('/', '_')}-{reward_source}-s{seed}"
            out = _in_process(args.timeout, _train, args.env, run_dir, steps=args.steps, labels=args.labels,
                              seed=seed, reward_source=reward_source, cnn=args.cnn, eval_episodes=args.eval_episodes,
                              background_fit=args.background_fit)
            rows.append({"bench": "learn", "env_id": args.env, "seed": seed, "reward_source": reward_source,
                         "steps": args.steps, "random_return_mean": random_mean, **out})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def reward_check(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Spearman between a run's last learned reward and the true return of held-out random-play
    segments (env seeds the run never used)."""
    import sqlite3

    from prefloop.envs import EnvSpec, SegmentBuffer, VecSegmentRecorder
    from prefloop.envs.presets import default_preset
    from prefloop.reward_models import load_reward_model
    from prefloop.training.loop import build_vec_env, collect_random
    from scipy import stats

    run = Path(args.run_dir)
    checkpoint = sorted((run / "checkpoints").iterdir())[-1]
    model = load_reward_model(checkpoint / "reward_model")
    buffer = SegmentBuffer(1000)
    length = default_preset(args.env).segment_length
    recorder = VecSegmentRecorder(build_vec_env(EnvSpec(args.env), 4, seed=4242), buffer, length, seed=4242)
    collect_random(recorder, args.steps, 4242)
    segments = buffer.recent()
    true = [s.true_return for s in segments]
    with sqlite3.connect(run / "prefs.sqlite") as conn:
        labels = conn.execute("SELECT count(*) FROM labels").fetchone()[0]
    return [{
        "bench": "reward_check", "env_id": args.env, "checkpoint": checkpoint.name, "labels_in_store": labels,
        "held_out_segments": len(segments), "distinct_true_returns": len(set(true)),
        "spearman_learned_vs_true_return": float(stats.spearmanr(model.predict_segment_returns(segments), true).statistic),
    }]


def plot(args: argparse.Namespace) -> list[dict[str, Any]]:
    """True episode return (training episodes) against env steps of finished runs, one line each,
    from their ``summary.json`` curves; the rows give each run's final evaluation."""
    from prefloop.plots import finish_axes, plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    rows = []
    for run in map(Path, args.run_dirs):
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
        config = summary["config"]
        label = f"{config['labels']} oracle labels" if config["reward_source"] == "preferences" else "true reward"
        curve = summary["curve"]
        ax.plot([p["env_step"] for p in curve], [p["true_return"] for p in curve], label=f"{label}, seed {config['seed']}")
        rows.append({"bench": "plot", "run_dir": str(run), "reward_source": config["reward_source"], "seed": config["seed"],
                     "eval_return_mean": summary["eval_return_mean"], "wall_time_s": summary["wall_time_s"],
                     "cpu_time_s": summary["cpu_time_s"], "reward_learning_time_s": summary["reward_learning_time_s"]})
    Path(args.png).parent.mkdir(parents=True, exist_ok=True)
    finish_axes(fig, ax, Path(args.png), "env steps", "true episode return (training episodes)", args.title)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("memory", "speed", "learn", "reward-check", "plot"))
    parser.add_argument("--run-dirs", nargs="+", default=[], help="plot: finished run folders")
    parser.add_argument("--png", default="bench-out/pixels-curves.png", help="plot: the figure")
    parser.add_argument("--title", default="Pixel CartPole: CnnPolicy on the learned vs the true reward")
    parser.add_argument("--run-dir", help="reward-check: the run folder")
    parser.add_argument("--env", default=PIXEL_CARTPOLE)
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1", PIXEL_CARTPOLE, ATARI], help="speed: envs to time")
    parser.add_argument("--reward-sources", nargs="+", default=["preferences", "true"], choices=("preferences", "true"))
    parser.add_argument("--steps", type=int, default=4096)
    parser.add_argument("--labels", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--cnn", default="christiano", choices=("nature", "christiano"))
    parser.add_argument("--background-fit", action=argparse.BooleanOptionalAction, default=None,
                        help="learn: fits in a second process (default: as `prefloop train` decides)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per train() run")
    parser.add_argument("--run-root", default="bench-out/pixels-runs")
    parser.add_argument("--out", default="bench-out/pixels.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = {"memory": memory, "speed": speed, "learn": learn, "reward-check": reward_check, "plot": plot}[args.what](args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
            if args.what != "learn":
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
