"""The trainer's status line (rater page and dashboard) tells a stopped trainer from a waiting one."""

from __future__ import annotations

from prefloop.apps.dashboard import Progress, trainer_status_line

NOW = 1_800_000_000.0


def test_a_trainer_silent_past_its_publishing_interval_is_said_not_to_run() -> None:
    waiting = Progress(status="waiting_for_labels", env_step=2256, total_steps=60000, updated_at=NOW - 72)
    line = trainer_status_line(waiting, NOW)
    assert line.startswith("No trainer is running for this run (last heard 72 s ago")
    assert "waiting for your comparisons" not in line


def test_a_trainer_heard_recently_or_a_finished_run_keeps_its_status() -> None:
    waiting = Progress(status="waiting_for_labels", env_step=2256, total_steps=60000, updated_at=NOW - 8)
    assert "waiting for your comparisons" in trainer_status_line(waiting, NOW)
    told = Progress(status="waiting_for_labels", env_step=2256, total_steps=60000, updated_at=NOW - 8,
                    message="waiting for raters: 10 of 15 pairs answered")
    assert "4% of training done. Waiting for raters: 10 of 15 pairs answered (updated" in trainer_status_line(told, NOW)
    finished = Progress(status="finished", updated_at=NOW - 3 * 3600)
    assert "finished" in trainer_status_line(finished, NOW)
    # an evaluation of a slow env may take minutes between two messages
    evaluating = Progress(status="evaluating", updated_at=NOW - 120)
    assert "evaluating" in trainer_status_line(evaluating, NOW)
    assert "No trainer is running" in trainer_status_line(Progress(status="evaluating", updated_at=NOW - 3600), NOW)


def test_a_finished_runs_return_comes_with_random_play_and_the_envs_solved_threshold() -> None:
    from prefloop.envs import EnvSpec

    from prefloop.training.config import TrainConfig
    from prefloop.training.evaluation import result_context

    config = TrainConfig(env_id="CartPole-v1", run_dir="unused", eval_episodes=3, seed=0)
    context = result_context(480.0, EnvSpec("CartPole-v1"), config)
    assert context["eval_return_mean"] == 480.0 and context["reward_threshold"] == 475.0
    assert 5.0 < context["random_return_mean"] < 100.0  # random CartPole falls within a few dozen steps
