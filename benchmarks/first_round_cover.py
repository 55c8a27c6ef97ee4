"""The first label round, uniform pairs against k-center coverage (``+cover``), without any RL.

Plays a preset's random steps (what a run's first round sees), asks ``--labels`` oracle labels on
pairs picked uniformly or by k-center coverage, fits the default reward model once and reports its
accuracy on 300 held-out random pairs. On Pendulum-v1 it also scores the model on a grid of states
(angle x angular velocity, no torque) against the true reward: the correlation, and where the model
puts fast spinning between hanging still (0) and upright still (1); the true reward puts it at 0.17.

    python benchmarks/first_round_cover.py --env Pendulum-v1 --seeds 4
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from prefloop.envs import EnvSpec, SegmentBuffer, VecSegmentRecorder
from prefloop.reward_models import RewardModelConfig, RewardTrainer, build_reward_model

from prefloop.teachers import make_teacher
from prefloop.training.config import TrainConfig
from prefloop.training.loop import build_vec_env, collect_random, initial_random_steps
from prefloop.training.query import QueryConfig, select_pairs
from prefloop.types import LabeledPair


def pendulum_grid() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """States on a 41 x 33 grid: angle (rad), angular velocity, observation, true reward at zero torque."""
    angle, velocity = (g.ravel() for g in np.meshgrid(np.linspace(-np.pi, np.pi, 41), np.linspace(-8, 8, 33), indexing="ij"))
    obs = np.stack([np.cos(angle), np.sin(angle), velocity], -1).astype(np.float32)
    return angle, velocity, obs, -(angle**2 + 0.1 * velocity**2)


def labelled(pairs, teacher) -> list[LabeledPair]:
    out = []
    for k, pair in enumerate(pairs):
        target = teacher.compare(pair.left, pair.right).target
        if target is not None:
            out.append(LabeledPair(pair.left, pair.right, target, pair_id=k))
    return out


def check_seed(env_id: str, seed: int, n_labels: int) -> dict[str, str]:
    config = TrainConfig(env_id=env_id, run_dir="/tmp/unused", seed=seed).resolve()
    venv = build_vec_env(EnvSpec(env_id, config.env_kwargs), config.n_envs, seed)
    buffer = SegmentBuffer(100_000)
    collect_random(VecSegmentRecorder(venv, buffer, config.segment_length, seed=seed), initial_random_steps(config), seed)
    segments = buffer.recent()
    teacher = make_teacher("oracle", seed=seed)
    held_out = labelled(select_pairs(segments, 300, QueryConfig(method="uniform"), np.random.default_rng(1000 + seed)), teacher)
    lines = {}
    for method in ("uniform", "kcenter"):
        pairs = select_pairs(segments, n_labels, QueryConfig(method=method), np.random.default_rng(seed))
        reward_config = RewardModelConfig(seed=seed)
        model = build_reward_model(venv.observation_space, venv.action_space, reward_config)
        RewardTrainer(model, reward_config).fit(labelled(pairs, teacher))
        probs = model.preference_probs([p.left for p in held_out], [p.right for p in held_out]).mean(0)
        decided = [(p, t) for p, t in zip(probs, (q.target for q in held_out)) if t in (0.0, 1.0)]
        line = f"held-out accuracy {np.mean([(p > 0.5) == (t == 1.0) for p, t in decided]):.2f}"
        if env_id == "Pendulum-v1":
            angle, velocity, obs, true = pendulum_grid()
            reward = model.predict(obs, np.zeros((len(obs), 1), np.float32))
            upright = reward[(np.abs(angle) < 0.3) & (np.abs(velocity) < 1)].mean()
            hanging = reward[(np.abs(angle) > 2.8) & (np.abs(velocity) < 1)].mean()
            spinning = reward[np.abs(velocity) > 6].mean()
            line += (f", grid correlation {np.corrcoef(reward, true)[0, 1]:.2f}, "
                     f"spinning at {(spinning - hanging) / (upright - hanging):.2f} (true 0.17)")
        lines[method] = line
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--seeds", type=int, default=4, help="seeds 0..N-1")
    parser.add_argument("--labels", type=int, default=13, help="the first round of a 50-label run asks 13")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for seed in range(args.seeds):
        for method, line in check_seed(args.env, seed, args.labels).items():
            print(f"seed {seed} {method:8s} {line}", flush=True)


if __name__ == "__main__":
    main()
