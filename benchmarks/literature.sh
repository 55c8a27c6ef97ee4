#!/usr/bin/env bash
# The experiments behind docs/benchmarks.md, at step counts a 2-core CPU machine affords (~40 min).
# Each writes results.json, results.md and PNG plots into bench-out/<name>/.
set -euo pipefail
cd "$(dirname "$0")/.."
PF=${PREFLOOP:-.venv/bin/prefloop}
W=${WORKERS:-2}

# Classic control at 200 oracle labels, 3 seeds.
$PF bench --envs CartPole-v1 Pendulum-v1 --labels 200 --seeds 0 1 2 --workers "$W" --out bench-out/core
$PF bench --envs Acrobot-v1 --labels 200 --seeds 0 1 2 --workers "$W" --out bench-out/acrobot
$PF bench --envs MountainCarContinuous-v0 --labels 200 --seeds 0 1 2 --workers "$W" --out bench-out/mountaincar

# The same CartPole sweep on a local Ray instance: the same numbers as the process pool above.
$PF bench --envs CartPole-v1 --labels 200 --seeds 0 1 2 --workers "$W" --ray --out bench-out/core-ray

# B-Pref: noisy simulated teachers against the oracle (Pendulum, 100 labels).
$PF bench --envs Pendulum-v1 --labels 100 --seeds 0 1 --teachers oracle stochastic mistake equal \
  --workers "$W" --out bench-out/bpref-teachers

# Query selection at a small budget: ensemble disagreement vs uniform (Pendulum, 50 labels).
$PF bench --envs Pendulum-v1 --labels 50 --seeds 0 1 --queries disagreement uniform \
  --workers "$W" --out bench-out/query-selection

# Christiano et al.: ~700 synthetic labels nearly match RL on the true reward (MuJoCo, SAC, 20k steps).
$PF bench --envs HalfCheetah-v5 --labels 700 --seeds 0 --steps 20000 --workers "$W" --out bench-out/mujoco-700
