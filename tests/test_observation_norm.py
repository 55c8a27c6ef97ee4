"""Observations standardised for the policy (``normalize_observations``): the policy sees them
standardised, everything that judges behaviour -- segments for raters and the reward model, the
replay buffer's relabelling, the true-reward evaluation's env -- keeps the env's own, the statistics
survive a checkpoint, and evaluation uses the training statistics."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from prefloop.envs import EnvSpec
from prefloop.envs.observation_norm import (
    check_stats,
    frozen_copy,
    load_stats,
    normalizable,
    normalize_observations,
    stats_to_json,
)
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from prefloop.config_files import ConfigError
from prefloop.store import PreferenceStore, sqlite_url
from prefloop.training.algos import algorithm_class
from prefloop.training.checkpoints import checkpoint_problems
from prefloop.training.config import TrainConfig
from prefloop.training.evaluation import evaluate
from prefloop.training.loop import train
from prefloop.training.resume_state import (
    OBSERVATION_STATS_FILE,
    restore_resume_state,
    save_resume_state,
)


def _on_unit_circle(obs: np.ndarray) -> bool:
    """Pendulum's raw observation is (cos, sin, angular velocity): standardised ones leave the circle."""
    return bool(np.allclose(obs[..., 0] ** 2 + obs[..., 1] ** 2, 1.0, atol=1e-4))


def _pendulum_venv(seed: int = 0) -> DummyVecEnv:
    venv = DummyVecEnv([lambda: gym.make("Pendulum-v1")])
    venv.seed(seed)
    return venv


@pytest.mark.parametrize("algo, algo_kwargs", [("ppo", {"n_steps": 256}), ("sac", {"learning_starts": 200})])
def test_run_normalizes_for_the_policy_only(tmp_path, algo, algo_kwargs):
    config = TrainConfig(env_id="Pendulum-v1", run_dir=tmp_path / "run", labels=12, steps=1_500, seed=0, algo=algo,
                         n_envs=2 if algo == "ppo" else 1, algo_kwargs=algo_kwargs, normalize_observations=True,
                         progress_bar=False, eval_episodes=2)
    result = train(config)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["normalize_observations"] is True

    with PreferenceStore(sqlite_url(tmp_path / "run" / "prefs.sqlite"), run_name="run", read_only=True) as store:
        pairs = store.labeled_pairs()
    assert len(pairs) >= 10
    assert all(_on_unit_circle(p.left.obs) and _on_unit_circle(p.right.obs) for p in pairs), \
        "segments (raters' clips, the reward model's input) hold the env's observations, not the policy's"

    final = sorted((tmp_path / "run" / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    stats = json.loads((final / OBSERVATION_STATS_FILE).read_text())
    assert np.shape(stats["mean"]) == (3,) and stats["count"] > 1_000
    assert not np.allclose(stats["var"], 1.0), "the statistics were learned from the run's observations"

    # The summary's evaluation is the final policy seeing observations as in training.
    normalized = normalize_observations(_pendulum_venv())
    load_stats(normalized, stats)
    model = algorithm_class(algo).load(final / "policy.zip", env=normalized, device="cpu")
    spec = EnvSpec("Pendulum-v1")
    assert evaluate(model, spec, 2, seed=10_000) == result.eval_returns
    model = algorithm_class(algo).load(final / "policy.zip", env=_pendulum_venv(), device="cpu")
    assert evaluate(model, spec, 2, seed=10_000) != result.eval_returns, "without its statistics it acts differently"

    # As if killed after the last checkpoint: --resume gives the policy its statistics back.
    (tmp_path / "run" / "summary.json").unlink()
    resumed = train(TrainConfig(env_id="Pendulum-v1", run_dir=tmp_path / "run"), resume=True)
    assert resumed.config.normalize_observations is True
    assert resumed.eval_returns == result.eval_returns


def test_off_policy_buffer_keeps_env_observations(tmp_path):
    """SAC relabels its replay buffer with the reward model, which reads the env's observations."""
    venv = normalize_observations(_pendulum_venv())
    from stable_baselines3 import SAC

    model = SAC("MlpPolicy", venv, learning_starts=50, seed=0, verbose=0)
    model.learn(120)
    stored = model.replay_buffer.observations[: model.replay_buffer.pos, 0]
    assert len(stored) > 100 and _on_unit_circle(stored)


def test_checkpoint_keeps_and_restores_statistics(tmp_path):
    venv = normalize_observations(_pendulum_venv())
    model = PPO("MlpPolicy", venv, n_steps=64, batch_size=64, seed=0)
    model.learn(256)
    save_resume_state(tmp_path, model, None)
    saved = venv.obs_rms

    fresh = PPO("MlpPolicy", normalize_observations(_pendulum_venv(1)), n_steps=64, batch_size=64, seed=1)
    restore_resume_state(tmp_path, fresh, None)
    restored = fresh.get_vec_normalize_env().obs_rms
    assert restored.count == saved.count
    np.testing.assert_array_equal(restored.mean, saved.mean)
    np.testing.assert_array_equal(restored.var, saved.var)


def test_frozen_copy_does_not_learn():
    venv = normalize_observations(_pendulum_venv())
    venv.reset()
    for _ in range(20):
        venv.step(np.zeros((1, 1), np.float32))
    frozen = frozen_copy(venv, _pendulum_venv(3))
    count = frozen.obs_rms.count
    frozen.reset()
    for _ in range(20):
        frozen.step(np.zeros((1, 1), np.float32))
    assert frozen.obs_rms.count == count and venv.obs_rms.count != count + 21


@pytest.mark.parametrize("data, match", [
    ({"count": 3, "mean": [0.0, 0.0], "var": [1.0, 1.0]}, "shape"),
    ({"count": 3, "mean": [0.0, 0.0, float("nan")], "var": [1.0, 1.0, 1.0]}, "non-finite"),
    ({"mean": [0.0, 0.0, 0.0]}, "malformed"),
    ([1, 2, 3], "must be an object"),
])
def test_statistics_that_do_not_fit_are_refused(data, match):
    venv = normalize_observations(_pendulum_venv())
    before = stats_to_json(venv)
    with pytest.raises(ValueError, match=match):
        load_stats(venv, data)
    assert stats_to_json(venv) == before


@pytest.mark.parametrize("data", [
    {"count": 3, "mean": [0.0, 0.0], "var": [1.0]},
    {"count": 0, "mean": [0.0], "var": [1.0]},
    {"count": float("inf"), "mean": [0.0], "var": [1.0]},
    {"count": 3, "mean": [0.0], "var": [-1.0]},
    {"count": 3, "mean": "abc", "var": [1.0]},
    {"keys": {}},
    {"keys": {"a": {"count": 3, "mean": [0.0]}}},
    {"keys": [1]},
])
def test_malformed_statistics_are_found_without_the_env(data):
    with pytest.raises(ValueError, match="observation statistics"):
        check_stats(data)


def test_a_checkpoint_whose_statistics_are_malformed_is_not_resumed_from(tmp_path):
    """``--resume`` and ``doctor`` skip it, naming the file, instead of failing in the middle of the restore."""
    venv = normalize_observations(_pendulum_venv())
    model = PPO("MlpPolicy", venv, n_steps=64, batch_size=64, seed=0)
    model.learn(64)
    checkpoint = tmp_path / "step-64"
    checkpoint.mkdir()
    (checkpoint / "state.json").write_text(json.dumps({"env_step": 64}))
    model.save(checkpoint / "policy.zip")
    stats = checkpoint / OBSERVATION_STATS_FILE
    stats.write_text(json.dumps(stats_to_json(venv)))
    assert checkpoint_problems(checkpoint, reward_model=False, algo="ppo") == []

    stats.write_text(json.dumps({"count": 64, "mean": [0.0, 0.0, 0.0], "var": [1.0, None, 1.0]}))
    problems = checkpoint_problems(checkpoint, reward_model=False, algo="ppo")
    assert len(problems) == 1 and problems[0].startswith(f"{OBSERVATION_STATS_FILE} does not load")


def test_only_vector_observations():
    assert normalizable(gym.spaces.Box(-1, 1, (4,)))
    assert normalizable(gym.spaces.Dict({"a": gym.spaces.Box(-1, 1, (2,)), "b": gym.spaces.Box(0, 1, (1,))}))
    assert not normalizable(gym.spaces.Discrete(5))
    assert not normalizable(gym.spaces.Box(0, 255, (64, 64, 3), dtype=np.uint8))


def test_run_on_discrete_observations_is_refused_before_writing(tmp_path):
    config = TrainConfig(env_id="FrozenLake-v1", run_dir=tmp_path / "run", labels=10, steps=1_000,
                         normalize_observations=True, progress_bar=False)
    with pytest.raises(ConfigError, match="vector observations.*--no-normalize-observations"):
        train(config)
    assert not (tmp_path / "run").exists()


def test_presets_decide_per_algorithm():
    hopper_ppo = TrainConfig(env_id="Hopper-v5", run_dir="r", algo="ppo").resolve()
    assert hopper_ppo.normalize_observations is True
    assert TrainConfig(env_id="Hopper-v5", run_dir="r", algo="sac").resolve().normalize_observations is False
    assert TrainConfig(env_id="CartPole-v1", run_dir="r").resolve().normalize_observations is False
    assert TrainConfig(env_id="Hopper-v5", run_dir="r", algo="ppo", normalize_observations=False).resolve().normalize_observations is False


def test_a_run_recorded_before_the_setting_resumes_without_it(tmp_path):
    """An older run's config.json has no normalize_observations: it trained on the env's own
    observations, so resuming it must not switch standardisation on (the MuJoCo PPO preset now does)."""
    recorded = TrainConfig(env_id="Hopper-v5", run_dir=tmp_path / "run", algo="ppo").resolve().to_json()
    del recorded["normalize_observations"]
    assert TrainConfig.from_json(recorded).resolve().normalize_observations is False
