"""PEBBLE's unsupervised pre-training: novel states pay, and an off-policy run starts with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from prefloop.reward_models import RewardModelConfig, load_reward_model

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


def pebble_ppo_run(tmp_path: Path, name: str) -> TrainConfig:
    return TrainConfig(env_id="CartPole-v1", run_dir=tmp_path / name, steps=4_096, unsupervised_steps=2_048, labels=12,
                       seed=1, algo_kwargs={"n_steps": 256}, eval_episodes=3, progress_bar=False, background_fit=False)


@pytest.mark.slow
def test_first_round_is_asked_before_explorations_last_update_and_computes_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A simulated teacher's first round comes at exploration's last rollout end, so that its fit
    can overlap the policy's last exploration update; nothing that update does reaches the round or
    the reward model, so the run is the one that asks after exploration, bit for bit."""
    from stable_baselines3 import PPO

    from prefloop.training.callbacks import AtLastRolloutEnd
    from prefloop.training.learner import PreferenceLearner

    torch.set_num_threads(1)
    events: list[tuple[str, int]] = []
    ppo_train, ask = PPO.train, PreferenceLearner.ask

    def recorded_train(self: PPO) -> None:
        events.append(("policy update", self.num_timesteps))
        ppo_train(self)

    def recorded_ask(self: PreferenceLearner, target_pairs: int, env_step: int) -> int:
        events.append(("ask", target_pairs))
        return ask(self, target_pairs, env_step)

    monkeypatch.setattr(PPO, "train", recorded_train)
    monkeypatch.setattr(PreferenceLearner, "ask", recorded_ask)
    early = train(pebble_ppo_run(tmp_path, "early"))
    assert events[:2] == [("ask", 3), ("policy update", 2_048)]  # 3 = the first round: a quarter of 12

    events.clear()
    monkeypatch.setattr(AtLastRolloutEnd, "_on_rollout_end", lambda self: None)  # asked once learn has returned
    after = train(pebble_ppo_run(tmp_path, "after"))
    assert events[:2] == [("policy update", 2_048), ("ask", 3)]
    assert early.eval_returns == after.eval_returns
    assert early.curve == after.curve
    assert json.dumps(early.reward_model) == json.dumps(after.reward_model)  # the last fit's stats (NaN != NaN)
    weights = [load_reward_model(max(p for p in (tmp_path / name / "checkpoints").iterdir() if p.name.startswith("step-") and "." not in p.name) / "reward_model").state_dict()
               for name in ("early", "after")]
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key

