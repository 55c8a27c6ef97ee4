"""The whole loop on CartPole: it learns a reward that ranks like the true return, deterministically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from prefloop.envs import EnvSpec, SegmentBuffer, VecSegmentRecorder
from prefloop.reward_models import RewardModelConfig, load_reward_model
from scipy import stats

from prefloop.store import PreferenceStore, sqlite_url
from prefloop.training.config import TrainConfig
from prefloop.training.loop import build_vec_env, collect_random, train
from prefloop.training.rundir import RunDir
from prefloop.training.schedule import ScheduleConfig, label_rounds


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def small_config(run_dir: Path, **changes) -> TrainConfig:
    base = dict(
        env_id="CartPole-v1", run_dir=run_dir, labels=40, steps=6_000, seed=0, progress_bar=False,
        eval_episodes=3, reward_model=RewardModelConfig(epochs=30),
    )
    base.update(changes)
    return TrainConfig(**base)


def held_out_segments(seed: int) -> list:
    """Segments of random play the run never saw (different env seeds)."""
    buffer = SegmentBuffer(500)
    recorder = VecSegmentRecorder(build_vec_env(EnvSpec("CartPole-v1"), 4, seed=seed), buffer, 50, seed=seed)
    collect_random(recorder, 3_000, seed)
    return buffer.recent()


@pytest.mark.slow
def test_short_run_learns_a_reward_that_ranks_held_out_segments_like_the_true_return(tmp_path: Path) -> None:
    result = train(small_config(tmp_path / "run"))
    run = RunDir(tmp_path / "run")
    model = load_reward_model(run.latest_checkpoint() / "reward_model")
    segments = held_out_segments(seed=12345)
    true_returns = [s.true_return for s in segments]
    assert len(set(true_returns)) > 5, "held-out segments must differ in true return"
    rho = stats.spearmanr(model.predict_segment_returns(segments), true_returns).statistic
    assert rho > 0.6, f"learned reward ranks held-out segments badly: Spearman {rho:.2f} (chance: 0)"

    # staying alive must pay: the learned per-step reward of real CartPole states is positive
    obs = np.concatenate([s.obs[: s.n_valid] for s in segments])
    actions = np.concatenate([s.actions[: s.n_valid] for s in segments])
    assert np.mean(model.predict(obs, actions) > 0) > 0.9

    # every asked pair was answered and stored, the run folder has what the README promises
    with PreferenceStore(sqlite_url(run.store_path), run_name="run") as store:
        counts = store.counts()
    assert counts["labels"] == counts["pairs"] == 40 == result.labels_used
    summary = json.loads(run.summary_path.read_text())
    assert summary["labels_used"] == 40 and len(summary["eval_returns"]) == 3
    assert (run.path / "learning_curve.png").stat().st_size > 1000
    assert any(run.tensorboard_dir.rglob("events.out.tfevents*"))


@pytest.mark.slow
def test_same_seed_same_labels_and_reward_model(tmp_path: Path) -> None:
    def run(name: str, seed: int) -> tuple[list, dict]:
        cfg = small_config(tmp_path / name, steps=3_000, labels=20, seed=seed)
        train(cfg)
        with PreferenceStore(sqlite_url(cfg.run_dir / "prefs.sqlite"), run_name=name) as store:
            labels = [(label.pair_id, label.choice) for label in store.labels()]
            pairs = [(p.left.true_return, p.right.true_return) for p in store.labeled_pairs()]
        model = load_reward_model(RunDir(cfg.run_dir).latest_checkpoint() / "reward_model")
        return labels + pairs, {k: v.clone() for k, v in model.state_dict().items()}

    labels_a, weights_a = run("a", seed=3)
    labels_b, weights_b = run("b", seed=3)
    labels_c, _ = run("c", seed=4)
    assert labels_a == labels_b
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert labels_a != labels_c


def test_label_schedule_front_loads_and_spends_the_budget_exactly() -> None:
    rounds = label_rounds(200, 100_000, ScheduleConfig(initial_fraction=0.25, rounds=10, label_until=0.5))
    assert rounds[0].at_step == 0 and rounds[0].cumulative_labels == 50
    assert rounds[-1].cumulative_labels == 200 and rounds[-1].at_step == 50_000
    increments = np.diff([r.cumulative_labels for r in rounds[1:]])
    assert increments[0] > increments[-1], "earlier rounds ask for more labels than later ones"
    assert all(b.at_step > a.at_step for a, b in zip(rounds, rounds[1:]))


def test_a_run_whose_every_answer_is_cant_tell_finishes_and_keeps_the_answers(tmp_path: Path) -> None:
    # A skip teacher whose threshold no CartPole segment reaches: every pair is skipped, so there
    # is never a usable label. The run must go on (reward model untrained), not crash in a fit.
    cfg = small_config(tmp_path / "skip", steps=2_000, labels=12, teacher="skip", teacher_params={"skip_threshold": 1000.0})
    result = train(cfg)
    assert result.reward_model["labels"] == 0
    with PreferenceStore(sqlite_url(cfg.run_dir / "prefs.sqlite"), run_name="skip") as store:
        choices = [label.choice.value for label in store.labels()]
    assert len(choices) == 12 and set(choices) == {"cant_tell"}
