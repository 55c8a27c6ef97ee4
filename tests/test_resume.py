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
