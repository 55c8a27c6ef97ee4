"""A run killed with SIGKILL resumes from its last checkpoint and loses no label."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prefloop.store import PreferenceStore, sqlite_url
from prefloop.training.config import TrainConfig


def prefloop(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "prefloop.cli", *args], env=env, **kwargs)


def stored_labels(run: Path) -> list[tuple[int, str, str]]:
    with PreferenceStore(sqlite_url(run / "prefs.sqlite"), run_name=run.name) as store:
        return [(label.pair_id, label.rater_id, label.choice.value) for label in store.labels()]


@pytest.mark.slow
def test_sigkill_then_resume_keeps_every_label_and_finishes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "--env", "CartPole-v1", "--steps", "16000", "--labels", "40", "--run-dir", str(run),
            "--no-progress", "--eval-episodes", "2"]
    proc = prefloop(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        # wait until the run has checkpointed after at least one label round, then kill it hard
        while not list((run / "checkpoints").glob("step-*[0-9]")) or len(stored_labels(run)) <= 10:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = stored_labels(run)
    assert not (run / "summary.json").exists(), "killed before the end"

    resumed = prefloop("train", "--resume", "--run-dir", str(run), "--no-progress",
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    after = stored_labels(run)
    assert after[: len(before)] == before, "labels stored before the kill are kept unchanged"
    assert len(after) == 40 and len({pair for pair, _, _ in after}) == 40, "every pair answered exactly once"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["labels_used"] == 40
    assert summary["curve"][-1]["env_step"] > 8000


def test_a_resumed_peoples_run_needs_no_more_answers_than_its_first_round_did() -> None:
    """After a stop, people who had answered what the first round needed are not asked for every pair
    asked since before the policy trains again (pace and continue; "wait" waits for them all)."""
    import dataclasses

    from prefloop.training.first_round import first_labels
    from prefloop.training.schedule import LabelRound

    class PeoplesLearner:  # the learner as first_labels sees it when people answer in the app
        teacher = None

        def __init__(self, config: TrainConfig) -> None:
            self.config = config
            self.needed: list[bool] = []

        def pairs_asked(self) -> int:
            return 9  # the first round's 3, and 6 more asked after it before the stop

        def wait_for_raters(self, done, what, env_step, curve) -> None:
            self.needed = [done({"labels": n}) for n in range(10)]

        def fit(self, env_step: int) -> None: ...

        def publish_progress(self, *args, **kwargs) -> None: ...

    config = TrainConfig(env_id="CartPole-v1", run_dir="r", teacher="human", labels=12, min_initial_labels=10)
    for when_behind, first_enough in (("pace", 3), ("continue", 3), ("wait", 9)):
        learner = PeoplesLearner(dataclasses.replace(config, when_behind=when_behind))
        first_labels(learner, lambda then: then(), LabelRound(0, 3), 0, True, 2_000, [])  # type: ignore[arg-type]
        assert learner.needed.index(True) == first_enough, when_behind
