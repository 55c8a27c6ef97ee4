#!/usr/bin/env bash
# The experiments behind docs/benchmarks.md, at step counts a 2-core CPU machine affords (about 2.5 hours).
# Each writes results.json, results.md and PNG plots into bench-out/<name>/. Interrupted? Run it
# again: --resume keeps every finished run.
set -euo pipefail
cd "$(dirname "$0")/.."
PF=${PREFLOOP:-.venv/bin/prefloop}
W=${WORKERS:-2}

# Classic control at 200 oracle labels, 3 seeds.
$PF bench --envs CartPole-v1 Pendulum-v1 --labels 200 --seeds 0 1 2 --workers "$W" --resume --out bench-out/core
$PF bench --envs Acrobot-v1 --labels 200 --seeds 0 1 2 --workers "$W" --resume --out bench-out/acrobot
$PF bench --envs MountainCarContinuous-v0 --labels 200 --seeds 0 1 2 --workers "$W" --resume --out bench-out/mountaincar

# The same CartPole sweep on a local Ray instance: the same numbers as the process pool above.
$PF bench --envs CartPole-v1 --labels 200 --seeds 0 1 2 --workers "$W" --resume --ray --out bench-out/core-ray

# B-Pref: noisy simulated teachers against the oracle (Pendulum, 100 labels, 4 seeds). "skip" is left
# out: with Pendulum's negative rewards B-Pref's rule skips almost every early pair (see docs).
$PF bench --envs Pendulum-v1 --labels 100 --seeds 0 1 2 3 --teachers oracle stochastic myopic mistake equal \
  --workers "$W" --resume --reuse bench-out/core --out bench-out/bpref-pendulum

# B-Pref mistakes, dose-response: flip rates 0.1 (the preset), 0.2, 0.3 on the same seeds.
$PF bench --envs Pendulum-v1 --labels 100 --seeds 0 1 2 3 --teachers oracle mistake mistake:epsilon=0.2 mistake:epsilon=0.3 \
  --workers "$W" --resume --reuse bench-out/core bench-out/bpref-pendulum --out bench-out/bpref-mistake-dose

# Query selection at small budgets: uniform vs ensemble disagreement vs entropy (Pendulum, 50 and 100 labels).
$PF bench --envs Pendulum-v1 --labels 50 100 --seeds 0 1 2 3 --queries uniform disagreement entropy \
  --workers "$W" --resume --reuse bench-out/core bench-out/bpref-pendulum --out bench-out/queries-pendulum

# Christiano et al.: ~700 synthetic labels nearly match RL on the true reward (Hopper-v5, SAC, 40k steps).
$PF bench --envs Hopper-v5 --labels 700 --seeds 0 1 2 --steps 40000 --workers "$W" --resume --out bench-out/mujoco-hopper
# ... with 100 labels as well (the 700-label runs and baselines reused), and at twice the steps.
$PF bench --envs Hopper-v5 --labels 100 700 --seeds 0 1 2 --steps 40000 --workers "$W" --resume --reuse bench-out/mujoco-hopper \
  --out bench-out/mujoco-hopper-labels
$PF bench --envs Hopper-v5 --labels 700 --seeds 0 1 --steps 80000 --workers "$W" --resume --out bench-out/mujoco-hopper-80k
