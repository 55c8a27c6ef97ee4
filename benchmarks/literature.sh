#!/usr/bin/env bash
# The experiments behind docs/benchmarks.md, at CPU-affordable step counts (2 cores: about an hour).
# Each writes results.json, results.md and PNG plots into bench-out/<name>/.
set -euo pipefail
cd "$(dirname "$0")/.."
PF=${PREFLOOP:-.venv/bin/prefloop}
W=${WORKERS:-2}

# Classic control at 200 oracle labels, 3 seeds (CartPole and Pendulum: bench-out/core).
$PF bench --envs CartPole-v1 Pendulum-v1 --labels 200 --seeds 0 1 2 --workers "$W" --out bench-out/core
$PF bench --envs Acrobot-v1 MountainCarContinuous-v0 --labels 200 --seeds 0 1 2 --workers "$W" --out bench-out/classic2

# B-Pref: noisy simulated teachers against the oracle (Pendulum, 100 labels).
$PF bench --envs Pendulum-v1 --labels 100 --seeds 0 1 2 --teachers oracle stochastic mistake myopic skip equal \
  --workers "$W" --out bench-out/bpref-teachers

# Query selection at small budgets: ensemble disagreement vs uniform (Pendulum, 25 and 50 labels).
$PF bench --envs Pendulum-v1 --labels 25 50 --seeds 0 1 2 --queries disagreement uniform \
  --workers "$W" --out bench-out/query-selection

# Christiano et al.: ~700 synthetic labels nearly match RL on the true reward (MuJoCo, SAC, 30k steps).
$PF bench --envs HalfCheetah-v5 --labels 700 --seeds 0 1 --steps 30000 --workers "$W" --out bench-out/mujoco-700

# The same sweep on a local Ray instance gives the same numbers as the process pool.
$PF bench --envs CartPole-v1 --labels 200 --seeds 0 1 2 --workers "$W" --ray --out bench-out/core-ray
