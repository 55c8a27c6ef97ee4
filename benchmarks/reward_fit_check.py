"""How well the default reward model learns an env's preferences, without any RL.

Plays ``--steps`` env steps with uniformly random actions (what the first label round of a run
sees), cuts them into segments the way a run does, labels random pairs with the oracle teacher and
fits the reward model on a growing label set (warm-started, as the loop does). Reports, per label
count, the accuracy on a fixed set of held-out pairs, the fit's gradient steps and time.

    python benchmarks/reward_fit_check.py --envs MountainCar-v0 Reacher-v5 --labels 25 50 100 200
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch
from prefloop.envs import EnvSpec, SegmentBuffer, VecSegmentRecorder
from prefloop.reward_models import RewardModelConfig, RewardTrainer, build_reward_model

from prefloop.teachers import make_teacher
from prefloop.training.config import TrainConfig
from prefloop.training.loop import build_vec_env, collect_random
from prefloop.types import LabeledPair


def _pairs(segments, n, rng, teacher):
    out = []
    while len(out) < n:
        i, j = rng.choice(len(segments), size=2, replace=False)
        left, right = segments[i], segments[j]
        target = teacher.compare(left, right).target
        if target is not None:
            out.append(LabeledPair(left, right, target, pair_id=len(out)))
    return out


def check_env(env_id: str, labels: list[int], steps: int, seed: int, overrides: dict) -> list[dict]:
    config = TrainConfig(env_id=env_id, run_dir="/tmp/unused", seed=seed).resolve()
    segment_length = overrides.pop("segment_length", None) or config.segment_length
    venv = build_vec_env(EnvSpec(env_id, config.env_kwargs), 1, seed)
    buffer = SegmentBuffer(100_000)
    recorder = VecSegmentRecorder(venv, buffer, segment_length, seed=seed)
    collect_random(recorder, steps, seed)
    segments = buffer.recent()
    rng = np.random.default_rng(seed)
    teacher = make_teacher("oracle", seed=seed)
    train_pairs = _pairs(segments, max(labels), rng, teacher)
    test_pairs = _pairs(segments, 300, rng, teacher)
    rm_config = dataclasses.replace(RewardModelConfig(seed=seed), **overrides)
    model = build_reward_model(venv.observation_space, venv.action_space, rm_config)
    trainer = RewardTrainer(model, rm_config)
    rows = []
    for n in sorted(labels):
        started = time.perf_counter()
        stats = trainer.fit(train_pairs[:n])
        elapsed = time.perf_counter() - started
        probs = model.preference_probs([p.left for p in test_pairs], [p.right for p in test_pairs]).mean(0)
        targets = np.array([p.target for p in test_pairs])
        decided = targets != 0.5
        acc = float(((probs > 0.5) == (targets > 0.5))[decided].mean())
        rows.append(dict(env=env_id, labels=n, segments=len(segments), segment_length=segment_length,
                         test_accuracy=round(acc, 3), val_accuracy=stats.val_accuracy, steps=stats.steps,
                         fit_s=round(elapsed, 2), ties=float(1 - decided.mean())))
        print(json.dumps(rows[-1]), flush=True)
    venv.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", required=True)
    parser.add_argument("--labels", nargs="+", type=int, default=[25, 50, 100, 200])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], help="RewardModelConfig overrides KEY=JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    for env_id in args.envs:
        check_env(env_id, args.labels, args.steps, args.seed, dict(overrides))


if __name__ == "__main__":
    main()
