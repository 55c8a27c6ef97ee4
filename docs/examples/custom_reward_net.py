"""A reward network of your own; the ensemble, Bradley-Terry fit and normalisation stay prefloop's."""

import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from prefloop.reward_models import RewardModelConfig, load_reward_model
from torch import nn

from prefloop.training.config import TrainConfig
from prefloop.training.loop import train


class GatedReward(nn.Module):
    """r(obs, action): obs ``(B, *obs_shape)`` and action ``(B, flatdim(action_space))``, both
    standardised by prefloop (a Discrete action arrives one-hot) -> reward ``(B,)``."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space) -> None:
        super().__init__()
        n_in = gym.spaces.flatdim(observation_space) + gym.spaces.flatdim(action_space)
        self.value = nn.Sequential(nn.Linear(n_in, 32), nn.SiLU(), nn.Linear(32, 1))
        self.gate = nn.Sequential(nn.Linear(n_in, 1), nn.Sigmoid())

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs.flatten(1), action], dim=1)
        return (self.value(x) * self.gate(x)).squeeze(1)


config = TrainConfig(
    env_id="CartPole-v1",
    run_dir=Path("runs") / time.strftime("gated-%Y%m%d-%H%M%S"),
    reward_model=RewardModelConfig(n_members=3, member_factory=GatedReward),
    labels=30,
    steps=4000,
    eval_episodes=3,
    progress_bar=False,
)
result = train(config)
print("labels:", result.labels_used, "eval return:", result.eval_return_mean)

# Checkpoints hold the members' weights and the factory's import path; loading needs the factory
# (here passed again, since this script's GatedReward cannot be imported from elsewhere).
checkpoint = sorted((config.run_dir / "checkpoints").glob("step-*"))[-1]
model = load_reward_model(checkpoint / "reward_model", member_factory=GatedReward)
obs = np.zeros((2, 4), dtype=np.float32)
print("members:", type(model.members[0]).__name__, "rewards:", model.predict(obs, np.array([0, 1])))
