"""Once a model has been fitted on enough labels, a fit takes a smaller step budget per new label;
before that (and on the first fit) every label gets the full one."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from prefloop.reward_models import RewardModelConfig, RewardTrainer, build_reward_model

from prefloop.training.config import TrainConfig
from prefloop.types import LabeledPair, Segment

OBS = gym.spaces.Box(-1, 1, (3,), np.float32)
ACT = gym.spaces.Box(-1, 1, (1,), np.float32)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def _pairs(n: int) -> list[LabeledPair]:
    rng = np.random.default_rng(0)

    def segment() -> Segment:
        obs = rng.uniform(-1, 1, size=(8, 3)).astype(np.float32)
        actions = rng.uniform(-1, 1, size=(8, 1)).astype(np.float32)
        return Segment(obs, actions, obs[:, 0].copy(), 8, False, 0, 0, actions)

    segments = [segment() for _ in range(2 * n)]
    return [LabeledPair(segments[2 * i], segments[2 * i + 1],
                        float(segments[2 * i + 1].true_return > segments[2 * i].true_return), pair_id=i) for i in range(n)]


def test_fits_take_steps_per_label_until_warm_after_labels_then_warm_steps_per_label() -> None:
    # No early stop and no floor, so each budget is exactly what a fit takes.
    config = RewardModelConfig(n_members=2, hidden_sizes=(8,), steps_per_label=10, warm_steps_per_label=3,
                               warm_after_labels=25, min_steps_per_fit=1, stop_accuracy=1.5)
    trainer = RewardTrainer(build_reward_model(OBS, ACT, config), config)
    pairs = _pairs(50)

    assert trainer.fit(pairs[:20]).steps == 200  # 20 labels x 10, from scratch
    assert trainer.fit(pairs[:25]).steps == 50  # 5 new x 10: fitted on 20 < 25 so far
    assert trainer.fit(pairs[:35]).steps == 30  # 10 new x 3: fitted on 25
    assert trainer.fit(pairs[:35]).steps == 1  # nothing new: the floor

    resumed = RewardTrainer(build_reward_model(OBS, ACT, config), config)
    resumed.restore_counters(trainer.counters())
    assert resumed.fit(pairs[:45]).steps == 30  # a resumed model is as warm as it was: 10 new x 3


def test_by_default_warm_fits_take_half_the_steps_per_label_after_50_labels() -> None:
    config = RewardModelConfig(n_members=2, hidden_sizes=(8,), steps_per_label=7, min_steps_per_fit=1, stop_accuracy=1.5,
                               batch_size=8)  # so that 200 epochs do not cap the budgets
    trainer = RewardTrainer(build_reward_model(OBS, ACT, config), config)
    pairs = _pairs(70)
    assert trainer.fit(pairs[:13]).steps == 91  # a small first round: 13 x 7
    assert trainer.fit(pairs[:50]).steps == 259  # still few labels: 37 x 7
    assert trainer.fit(pairs[:60]).steps == 30  # 10 x 3 (7 // 2)


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "5"])
def test_warm_steps_per_label_is_checked(value: object) -> None:
    with pytest.raises(ValueError, match="warm_steps_per_label must be an int >= 1 or None"):
        RewardModelConfig(warm_steps_per_label=value)  # type: ignore[arg-type]


def test_a_run_recorded_before_the_setting_keeps_its_fit_budget(tmp_path: Path) -> None:
    saved = TrainConfig(env_id="Pendulum-v1", run_dir=tmp_path / "run").resolve().to_json()
    saved["reward_model"]["steps_per_label"] = 12
    del saved["reward_model"]["warm_steps_per_label"], saved["reward_model"]["warm_after_labels"]
    reward = TrainConfig.from_json(saved).reward_model
    assert reward.warm_steps_per_label == 12 and reward.warm_after_labels == 1
