"""PEBBLE's unsupervised pre-training: novel states pay, and an off-policy run starts with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from prefloop.reward_models import RewardModelConfig

from prefloop.training.config import TrainConfig
from prefloop.training.exploration import StateEntropyReward
from prefloop.training.loop import train


def test_state_entropy_reward_pays_more_for_unvisited_states() -> None:
    reward = StateEntropyReward(capacity=500, k=3)
    rng = np.random.default_rng(0)
    for _ in range(20):  # the agent has so far stayed near the origin
        reward.predict(rng.normal(0, 0.1, size=(10, 3)).astype(np.float32), np.zeros((10, 1)))
    familiar = reward.predict(rng.normal(0, 0.1, size=(5, 3)).astype(np.float32), np.zeros((5, 1)))
    novel = reward.predict(np.full((5, 3), 4.0, dtype=np.float32), np.zeros((5, 1)))
    assert novel.min() > 3 * familiar.max()
    assert familiar.dtype == np.float32 and (familiar >= 0).all()


@pytest.mark.slow
def test_sac_run_with_unsupervised_pretraining_then_preferences(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    result = train(TrainConfig(
        env_id="Pendulum-v1", run_dir=tmp_path / "run", algo="sac", steps=1_200, unsupervised_steps=400,
        labels=12, seed=0, progress_bar=False, eval_episodes=1,
        algo_kwargs={"learning_starts": 100, "train_freq": 4, "gradient_steps": 1},
        reward_model=RewardModelConfig(epochs=10),
    ))
    assert result.labels_used == 12
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["config"]["unsupervised_steps"] == 400
