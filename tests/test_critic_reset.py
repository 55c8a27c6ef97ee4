"""PEBBLE's critic reset: after unsupervised exploration an off-policy learner starts the learned
reward with a fresh critic; its actor, entropy coefficient and replay buffer stay."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from prefloop.reward_models import RewardModelConfig
from stable_baselines3 import DQN, PPO, SAC, TD3

from prefloop.cli.arguments import add_run_arguments
from prefloop.training.algos import reset_critic, reset_critic_after_exploration
from prefloop.training.config import TrainConfig
from prefloop.training.loop import train


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def _copy(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("algo", [SAC, TD3])
def test_the_critic_is_fresh_and_everything_else_stays(algo) -> None:
    model = algo("MlpPolicy", gym.make("Pendulum-v1"), learning_starts=50, buffer_size=1_000, seed=0, verbose=0)
    model.learn(200)
    critic_before, actor_before = _copy(model.critic), _copy(model.actor)
    stored = model.replay_buffer.size()
    assert model.critic.optimizer.state  # Adam has moments from the 150 updates

    assert reset_critic(model) is True

    assert all(not torch.equal(a, b) for a, b in zip(critic_before, model.critic.parameters()) if a.dim() == 2)
    assert all(torch.equal(a, b) for a, b in zip(model.critic.parameters(), model.critic_target.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(actor_before, model.actor.parameters()))
    assert not model.critic.optimizer.state
    assert {id(p) for g in model.critic.optimizer.param_groups for p in g["params"]} == {id(p) for p in model.critic.parameters()}
    assert model.replay_buffer.size() == stored
    model.learn(100)  # and it trains on
    assert model.critic.optimizer.state


@pytest.mark.parametrize("build", [
    lambda: PPO("MlpPolicy", gym.make("Pendulum-v1"), n_steps=64, seed=0, verbose=0),
    lambda: DQN("MlpPolicy", gym.make("CartPole-v1"), learning_starts=10, seed=0, verbose=0),
])
def test_learners_without_a_separate_critic_are_left_alone(build) -> None:
    model = build()
    before = _copy(model.policy)
    assert reset_critic(model) is False
    assert all(torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))


def test_off_by_default_on_with_the_flag_and_off_for_runs_recorded_before(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    assert parser.parse_args([]).reset_critic is False
    assert parser.parse_args(["--reset-critic"]).reset_critic is True
    saved = TrainConfig(env_id="MountainCarContinuous-v0", run_dir=tmp_path / "run", reset_critic=True).resolve().to_json()
    assert saved["reset_critic"] is True
    assert TrainConfig.from_json(saved).reset_critic is True
    del saved["reset_critic"]
    assert TrainConfig.from_json(saved).reset_critic is False


@pytest.mark.slow
def test_a_run_resets_the_critic_after_its_exploration_steps(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = TrainConfig(
        env_id="Pendulum-v1", run_dir=tmp_path / "run", algo="sac", steps=700, labels=6, seed=0, progress_bar=False,
        eval_episodes=1, unsupervised_steps=300, reset_critic=True, algo_kwargs={"learning_starts": 100, "train_freq": 8, "gradient_steps": 1},
        reward_model=RewardModelConfig(epochs=5),
    )
    with caplog.at_level(logging.INFO, logger="prefloop"):
        train(config)
    assert any("critic reset after 300 steps of exploration" in r.getMessage() for r in caplog.records)


def test_a_run_where_it_cannot_apply_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = TrainConfig(env_id="CartPole-v1", run_dir=tmp_path / "run", steps=1_500, labels=6, seed=0,
                         progress_bar=False, eval_episodes=1, reset_critic=True, reward_model=RewardModelConfig(epochs=5))
    with caplog.at_level(logging.WARNING, logger="prefloop"):
        train(config)
    assert any("--reset-critic did nothing: it resets the critic after --unsupervised-steps" in r.getMessage()
               for r in caplog.records)


def test_a_learner_it_cannot_reset_is_named_with_its_package(caplog: pytest.LogCaptureFixture) -> None:
    """SBX's SAC is an SB3 off-policy algorithm named SAC as well: "not of SAC" would read as a bug,
    so the class is named with its package."""
    model = DQN("MlpPolicy", gym.make("CartPole-v1"), learning_starts=10, buffer_size=1_000, seed=0, verbose=0)
    with caplog.at_level(logging.WARNING, logger="prefloop"):
        reset_critic_after_exploration(model, 300)
    assert any("did nothing: it resets the critic of stable_baselines3's SAC, TD3 or DDPG, not of stable_baselines3's DQN"
               in r.getMessage() for r in caplog.records)
