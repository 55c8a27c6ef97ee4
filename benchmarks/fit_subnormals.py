"""CPU seconds of a run's reward fits with subnormal floats flushed to 0 (what ``RewardTrainer.fit``
does) and without, replayed on the labels a finished run stored.

For each run folder: the run's own reward-model settings and labels, fitted round by round as the
run's schedule asked for them (the labels in the order they were stored), once by a trainer that
flushes subnormals and once by an identical trainer that does not, alternating fit by fit so that
both see the same machine load. Prints the CPU seconds per round and whether the two models are
still equal, bit for bit, after each; ``--json`` writes the same. ``--random-play ENV`` fits
pairs of a random policy's segments instead (50, 100, then 200 labels, labelled by true return,
equal returns "equal"; default reward-model settings): a run's first rounds, or a policy that has
not learnt yet.

    python benchmarks/fit_subnormals.py runs/cartpole-200 runs/acrobot-200 --json out.json
    python benchmarks/fit_subnormals.py --random-play CartPole-v1 Acrobot-v1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym
import torch

from prefloop.reward_models import RewardModelConfig, RewardTrainer, build_reward_model
from prefloop.envs import EnvSpec, SegmentBuffer, VecSegmentRecorder
from prefloop.store import PreferenceStore, sqlite_url
from prefloop.training.loop import build_vec_env, collect_random
from prefloop.training.rundir import RunDir
from prefloop.training.schedule import label_rounds
from prefloop.types import LabeledPair


def replay(run_path: Path) -> dict:
    run_dir = RunDir(run_path)
    config = run_dir.load_config().resolve()
    with PreferenceStore(config.db_url or sqlite_url(run_dir.store_path), run_name=config.run_name or "default", read_only=True) as store:
        labeled = store.labeled_pairs()
    env = gym.make(config.env_id, **config.env_kwargs)
    rounds = [r.cumulative_labels for r in label_rounds(len(labeled), int(config.steps), config.schedule)]
    return fit_both_ways(str(run_path), env, labeled, rounds, config.reward_model)


def random_play(env_id: str, labels: int = 200, length: int = 50) -> dict:
    """Pairs of random-play segments, recorded as a run records them (``VecSegmentRecorder``)."""
    buffer = SegmentBuffer(10 * labels)
    venv = build_vec_env(EnvSpec(env_id), 4, seed=0)
    recorder = VecSegmentRecorder(venv, buffer, length, seed=0)
    steps = 4 * length * labels
    while len(buffer) < 2 * labels:
        collect_random(recorder, steps, seed=0)
    segments = buffer.recent(2 * labels)
    pairs = []
    for i in range(labels):
        left, right = segments[2 * i], segments[2 * i + 1]
        target = 0.5 if left.true_return == right.true_return else float(right.true_return > left.true_return)
        pairs.append(LabeledPair(left, right, target, pair_id=i))
    return fit_both_ways(f"random play, {env_id}", gym.make(env_id), pairs, [labels // 4, labels // 2, labels], RewardModelConfig(seed=0))


def fit_both_ways(name: str, env: gym.Env, labeled: list, rounds: list[int], reward_config: RewardModelConfig) -> dict:
    trainers = {
        mode: RewardTrainer(build_reward_model(env.observation_space, env.action_space, reward_config), reward_config)
        for mode in ("flushed", "kept")
    }
    rows = []
    for n in rounds:
        row: dict = {"labels": n}
        for mode, trainer in trainers.items():
            # "kept": the fit without its flushing decorator, so subnormals are computed as they come.
            fit = RewardTrainer.fit if mode == "flushed" else RewardTrainer.fit.__wrapped__
            started = time.process_time()
            stats = fit(trainer, labeled[:n])
            row[f"{mode}_cpu_s"] = time.process_time() - started
            row["steps"] = stats.steps
        a, b = (t.model.state_dict() for t in trainers.values())
        row["same_model"] = all(torch.equal(a[k], b[k]) for k in a)
        rows.append(row)
    total = {mode: sum(r[f"{mode}_cpu_s"] for r in rows) for mode in ("flushed", "kept")}
    return {"run": name, "env_id": env.spec.id, "labels": len(labeled), "rounds": rows, "total_cpu_s": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="folders of finished `prefloop train` runs")
    parser.add_argument("--random-play", nargs="*", default=[], metavar="ENV", help="fit random-play pairs of these envs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for result in (*(replay(run) for run in args.runs), *(random_play(env_id) for env_id in args.random_play)):
        results.append(result)
        print(f"{result['env_id']} ({result['labels']} labels, {result['run']})")
        print(f"  {'labels':>6} {'steps':>5} {'kept s':>7} {'flushed s':>9}  same model")
        for r in result["rounds"]:
            print(f"  {r['labels']:>6} {r['steps']:>5} {r['kept_cpu_s']:>7.2f} {r['flushed_cpu_s']:>9.2f}  {r['same_model']}")
        t = result["total_cpu_s"]
        print(f"  all fits: {t['kept']:.2f} s kept, {t['flushed']:.2f} s flushed ({t['flushed'] / t['kept']:.2f}x)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
