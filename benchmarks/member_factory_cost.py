"""What a user's reward network (RewardModelConfig.member_factory) costs against the built-in
stacked MLPs of the same shape (3 members, 2x64 leaky ReLU, CartPole's spaces): the time of
``predict`` on 4 rows (one policy step of 4 envs, on every env step of RL training) and on 4,096
rows (relabelling, scoring). Usage: ``OMP_NUM_THREADS=1 python benchmarks/member_factory_cost.py``."""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from prefloop.reward_models import RewardEnsemble


class MLP(nn.Module):
    """The built-in members' architecture, as a user would write it."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space) -> None:
        super().__init__()
        n_in = gym.spaces.flatdim(observation_space) + gym.spaces.flatdim(action_space)
        self.net = nn.Sequential(nn.Linear(n_in, 64), nn.LeakyReLU(0.01), nn.Linear(64, 64), nn.LeakyReLU(0.01), nn.Linear(64, 1))

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], dim=1))


def seconds_per_call(model: RewardEnsemble, rows: int, calls: int, rng: np.random.Generator) -> float:
    obs = rng.standard_normal((rows, 4)).astype(np.float32)
    actions = rng.integers(0, 2, rows)
    model.predict(obs, actions)
    started = time.perf_counter()
    for _ in range(calls):
        model.predict(obs, actions)
    return (time.perf_counter() - started) / calls


def main() -> None:
    torch.set_num_threads(1)
    env = gym.make("CartPole-v1")
    rng = np.random.default_rng(0)
    for name, factory in (("stacked MLPs", None), ("member_factory", MLP)):
        model = RewardEnsemble(env.observation_space, env.action_space, n_members=3, member_factory=factory)
        small = seconds_per_call(model, 4, 3000, rng)
        large = seconds_per_call(model, 4096, 20, rng)
        print(f"{name:15s} predict 4 rows: {small * 1e3:6.3f} ms   4096 rows: {large * 1e3:6.2f} ms")


if __name__ == "__main__":
    main()
