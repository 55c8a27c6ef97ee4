"""What `prefloop run`/`train` print in the terminal: log lines on their own lines above the
progress bar, a bar counting the same env steps as the log, no "nan" in log lines."""

from __future__ import annotations

import io
import logging
import math
import sys

import gymnasium as gym
import pytest
from stable_baselines3 import PPO

from prefloop.cli.main import CurrentStderrHandler
from prefloop.reward_models import RewardModelConfig
from prefloop.training.callbacks import StepProgressBar, metric_text
from prefloop.training.report import validation_text


def test_log_lines_go_to_the_stderr_of_the_moment_so_the_progress_bar_can_put_them_above_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logger = logging.getLogger("prefloop.test-terminal")
    handler = CurrentStderrHandler()
    logger.addHandler(handler)
    logger.propagate = False
    try:
        redirected = io.StringIO()  # what rich's live display puts in place of stderr
        monkeypatch.setattr(sys, "stderr", redirected)
        logger.warning("step 2256: waiting for raters")
        assert redirected.getvalue() == "step 2256: waiting for raters\n"
    finally:
        logger.removeHandler(handler)


def test_a_metric_not_computed_yet_reads_not_yet_instead_of_nan() -> None:
    assert metric_text(math.nan) == "not yet" and metric_text(0.8333) == "0.83"


def test_validation_accuracy_says_how_many_held_out_pairs_it_is_measured_on() -> None:
    # Early in a run 2 held-out pairs give 0.00 or 0.50: the count tells the user not to read much into it.
    assert validation_text({"val_accuracy": 0.0, "val_pairs": 2.0}, held_out=True) == "0.00 on 2 held-out pairs"
    assert validation_text({"val_accuracy": 0.875, "val_pairs": 1.0}, held_out=True) == "0.88 on 1 held-out pair"
    assert validation_text({"val_accuracy": math.nan, "val_pairs": 0.0}, held_out=True) == "not yet"
    assert validation_text({"val_accuracy": 0.9}, held_out=True) == "0.90"  # fit stats from before the count was kept


def test_without_a_held_out_split_the_accuracy_does_not_claim_held_out_pairs() -> None:
    # The default trains on every label (val_fraction=0): accuracy is judged on each pair before
    # the fit that learns it, and "on 12 held-out pairs" would tell a user pairs were withheld.
    held_out = RewardModelConfig().val_fraction > 0
    text = validation_text({"val_accuracy": 0.75, "val_pairs": 12.0}, held_out=held_out)
    assert text == "0.75 on 12 pairs (each judged before the model learned it)"
    assert validation_text({"val_accuracy": 1.0, "val_pairs": 1.0}, held_out=held_out) == (
        "1.00 on 1 pair (judged before the model learned it)")
    assert validation_text({"val_accuracy": math.nan, "val_pairs": 0.0}, held_out=held_out) == "not yet"


def test_the_summary_says_why_the_accuracy_rests_on_fewer_pairs_than_labels() -> None:
    from prefloop.training.report import _prequential_note

    # A new user saw "1.00 on 13 pairs" after a 30-label run and asked where the other 17 went.
    assert _prequential_note({"val_pairs": 13.0}, held_out=False, labels_used=30) == (
        "; not judged: the first round's pairs and ties")
    assert _prequential_note({"val_pairs": 50.0}, held_out=False, labels_used=200).endswith(
        "and all but the newest 50")
    assert _prequential_note({"val_pairs": 13.0}, held_out=True, labels_used=30) == ""  # a real split: no note
    assert _prequential_note({"val_pairs": 0.0}, held_out=False, labels_used=30) == ""  # "not yet" says it


def test_the_progress_bar_counts_the_runs_env_steps_like_the_log() -> None:
    env = gym.make("CartPole-v1")
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu")
    bar = StepProgressBar(step_offset=2000, total=2128, with_eta=False)
    seen: list[float] = []
    original = bar._on_step

    def on_step() -> bool:
        seen.append(bar._progress.tasks[0].completed)
        return original()

    bar._on_step = on_step  # type: ignore[method-assign]
    model.learn(128, callback=bar)
    assert seen[0] == 2000  # the steps before learn() (random segments) count, as in the log
    assert bar._progress is None  # stopped with training
    assert max(seen) <= 2128


def test_the_run_summary_reports_the_env_steps_the_run_took_not_only_the_ones_asked(tmp_path) -> None:
    from prefloop.training.config import TrainConfig
    from prefloop.training.loop import RunResult
    from prefloop.training.report import run_summary_rows

    def steps_row(asked: int, ran: int | None) -> str:
        config = TrainConfig(env_id="CartPole-v1", run_dir=tmp_path, steps=asked, algo="ppo")
        result = RunResult(config=config, eval_return_mean=9.0, eval_return_std=1.0, eval_returns=[9.0], labels_used=20,
                           wall_time_s=1.0, cpu_time_s=1.0, reward_learning_time_s=0.5,
                           curve=[{"env_step": 1024.0, "true_return": 9.0, "learned_return": 1.0}], env_steps=ran)
        return dict(run_summary_rows(result))["env steps"]

    # The run's own count, not the curve's last point (which is only where an episode had ended).
    assert steps_row(2000, 2248) == "2,248 (asked 2,000; the algorithm finishes the rollout it is in)"
    assert steps_row(2048, 2048) == "2,048"
    assert steps_row(2048, None) == "2,048"  # a summary written before the count was kept


def test_the_run_summary_says_why_nothing_was_judged_not_not_yet(tmp_path) -> None:
    # MountainCar-v0 with an oracle: every label a tie, every true segment return -L. The summary
    # at the end of the run said "not yet" and "-", as if more were coming.
    from prefloop.training.config import TrainConfig
    from prefloop.training.loop import RunResult
    from prefloop.training.report import run_summary_rows

    config = TrainConfig(env_id="MountainCar-v0", run_dir=tmp_path, steps=10_000, algo="ppo")
    result = RunResult(config=config, eval_return_mean=-200.0, eval_return_std=0.0, eval_returns=[-200.0], labels_used=30,
                       wall_time_s=1.0, cpu_time_s=1.0, reward_learning_time_s=0.5, curve=[], env_steps=10_000,
                       reward_model={"val_accuracy": None, "val_pairs": 0.0, "segment_return_pearson": None})
    rows = dict(run_summary_rows(result))
    assert rows["reward-model val accuracy"].startswith("none: no pair answered after the first round had a preferred clip")
    assert rows["learned vs true segment return (Pearson)"] == "- (undefined: the recent segments' true or learned returns do not vary)"
    result.reward_model = {"val_accuracy": 0.75, "val_pairs": 12.0, "segment_return_pearson": 0.5}
    rows = dict(run_summary_rows(result))
    assert rows["reward-model val accuracy"] == (
        "0.75 on 12 pairs (each judged before the model learned it); not judged: the first round's pairs and ties")
    assert rows["learned vs true segment return (Pearson)"] == "0.50"
