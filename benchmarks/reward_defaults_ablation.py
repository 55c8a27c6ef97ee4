"""Reward-model settings side by side on the same data, without any RL.

For each env and seed: ``--steps`` of uniformly random play cut into the env's segments (what a
run's first round sees), oracle labels on random pairs, and for each named setting one model
warm-started over a growing label set (25, 50, 75, 100, 150, 200 labels, as a run's rounds) and
scored on 400 held-out oracle pairs at 50, 100 and 200 labels. One JSON line per (env, seed,
setting); ``--table`` prints the markdown table of docs/benchmarks.md from those lines.

    python -m benchmarks.reward_defaults_ablation --envs HalfCheetah-v5 Reacher-v5 --seeds 0 1 \\
        --settings '{"before": {"val_fraction": 0.2, "bootstrap": true, "min_steps_per_fit": 1}, "after": {}}' \\
        > bench-out/reward-defaults.jsonl
    python -m benchmarks.reward_defaults_ablation --table bench-out/reward-defaults.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from prefloop.envs import EnvSpec, SegmentBuffer, VecSegmentRecorder
from prefloop.reward_models import RewardModelConfig, RewardTrainer, build_reward_model

from benchmarks.reward_fit_check import _pairs
from prefloop.teachers import make_teacher
from prefloop.training.config import TrainConfig
from prefloop.training.loop import build_vec_env, collect_random

LABEL_ROUNDS = (25, 50, 75, 100, 150, 200)
SCORED_AT = (50, 100, 200)


def run(env_id: str, seed: int, settings: dict[str, dict], steps: int) -> list[dict]:
    config = TrainConfig(env_id=env_id, run_dir="/tmp/unused", seed=seed).resolve()
    venv = build_vec_env(EnvSpec(env_id, config.env_kwargs), 1, seed)
    buffer = SegmentBuffer(100_000)
    collect_random(VecSegmentRecorder(venv, buffer, config.segment_length, seed=seed), steps, seed)
    segments = buffer.recent()
    rng, teacher = np.random.default_rng(seed), make_teacher("oracle", seed=seed)
    train_pairs, test_pairs = _pairs(segments, max(LABEL_ROUNDS), rng, teacher), _pairs(segments, 400, rng, teacher)
    targets = np.array([p.target for p in test_pairs])
    decided = targets != 0.5
    rows = []
    for name, overrides in settings.items():
        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        rm_config = dataclasses.replace(RewardModelConfig(seed=seed), **overrides)
        model = build_reward_model(venv.observation_space, venv.action_space, rm_config)
        trainer = RewardTrainer(model, rm_config)
        accuracy, grad_steps, started = [], 0, time.process_time()
        for n in LABEL_ROUNDS:
            grad_steps += trainer.fit(train_pairs[:n]).steps
            if n in SCORED_AT:
                p_right = model.preference_probs([p.left for p in test_pairs], [p.right for p in test_pairs]).mean(0)
                accuracy.append(round(float(((p_right > 0.5) == (targets > 0.5))[decided].mean()), 3))
        rows.append(dict(env=env_id, seed=seed, segment_length=config.segment_length, setting=name,
                         accuracy=accuracy, steps=grad_steps, cpu_s=round(time.process_time() - started, 1)))
        print(json.dumps(rows[-1]), flush=True)
    venv.close()
    return rows


def table(path: Path, before: str = "before", after: str = "after") -> str:
    by = defaultdict(list)
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            by[(row["env"], row["setting"])].append(row)
    lines = [
        f"| env (segment length) | held-out accuracy at {' / '.join(map(str, SCORED_AT))} labels, {before} | {after} "
        f"| gradient steps over the {len(LABEL_ROUNDS)} fits, {before} → {after} | fit CPU s, {before} → {after} |",
        "|---|---|---|---|---|",
    ]
    for env in dict.fromkeys(env for env, _ in by):
        b, a = by.get((env, before)), by.get((env, after))
        if not b or not a:
            continue
        acc = [np.mean([r["accuracy"] for r in rows], axis=0) for rows in (b, a)]
        lines.append(
            f"| {env} ({b[0]['segment_length']}) | {' / '.join(f'{x:.2f}' for x in acc[0])} | {' / '.join(f'{x:.2f}' for x in acc[1])} "
            f"| {np.mean([r['steps'] for r in b]):.0f} → {np.mean([r['steps'] for r in a]):.0f} "
            f"| {np.mean([r['cpu_s'] for r in b]):.1f} → {np.mean([r['cpu_s'] for r in a]):.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=20_000, help="random-play env steps per env and seed")
    parser.add_argument("--settings", default='{"default": {}}', help="JSON: name -> RewardModelConfig overrides")
    parser.add_argument("--table", type=Path, help="print the markdown table of a JSON-lines file instead")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    if not args.envs:
        parser.error("--envs is required unless --table is given")
    torch.set_num_threads(1)
    for env_id in args.envs:
        for seed in args.seeds:
            run(env_id, seed, json.loads(args.settings), args.steps)


if __name__ == "__main__":
    main()
