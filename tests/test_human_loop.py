"""The trainer with people as the teacher: pairs go to the store, the trainer waits or goes on,
and retrains whenever labels arrive -- here the "people" are a thread answering through the store,
exactly the calls the rater app makes."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from prefloop.reward_models import RewardModelConfig

from prefloop.store import PreferenceStore, sqlite_url
from prefloop.teachers import make_teacher
from prefloop.training.config import TrainConfig
from prefloop.training.loop import train


class ThreadRater:
    """Answers pending pairs like a person in the app would."""

    def __init__(self, url: str, run_name: str, rater_id: str = "alice"):
        self.url, self.run_name, self.rater_id = url, run_name, rater_id
        self.stop = threading.Event()
        self.answered = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        oracle = make_teacher("oracle")
        with PreferenceStore(self.url, run_name=self.run_name) as store:
            while not self.stop.is_set():
                pair = store.claim_next(self.rater_id)
                if pair is None:
                    self.stop.wait(0.05)
                    continue
                store.answer(pair.id, self.rater_id, oracle.compare(pair.left, pair.right), 1.5)
                self.answered += 1


@pytest.mark.slow
@pytest.mark.parametrize("when_behind", ["pace", "wait", "continue"])
def test_training_with_raters_answering_through_the_store(tmp_path: Path, when_behind: str) -> None:
    torch.set_num_threads(1)
    run = tmp_path / "run"
    config = TrainConfig(
        env_id="CartPole-v1", run_dir=run, teacher="human", labels=24, steps=5_000, seed=0,
        progress_bar=False, eval_episodes=2, when_behind=when_behind, gold_fraction=0.1,
        reward_model=RewardModelConfig(epochs=20),
    )
    raters: list[ThreadRater] = []

    def start_raters(run_dir, url: str, run_name: str) -> None:
        raters.append(ThreadRater(url, run_name))
        raters[0].thread.start()

    try:
        result = train(config, on_ready=start_raters)
    finally:
        for rater in raters:
            rater.stop.set()
            rater.thread.join(timeout=10)
    with PreferenceStore(sqlite_url(run / "prefs.sqlite"), run_name="run") as store:
        counts = store.counts()
        labels = store.labels()
        gold = [p for p in store.labeled_pairs() if p.extra.get("gold_choice")]
        progress = json.loads(store.get_meta("progress"))
        assert json.loads(store.get_meta("env_spec"))["env_id"] == "CartPole-v1"
        assert store.get_meta("guideline")
    assert counts["pairs"] == 24 and all(label.rater_id == "alice" for label in labels)
    assert result.labels_used == len(labels) >= 10, "the policy started only after the first labels"
    assert gold, "quality-control pairs with a known answer are mixed in"
    assert progress["status"] == "finished" and progress["fit_history"]
    if when_behind in ("pace", "wait"):
        assert len(labels) == 24, "waiting for the raters means every asked pair was answered"
        assert result.labels_fitted == 24 and result.pairs_withdrawn == 0
    assert counts["pending"] + counts["claimed"] == 0, "nothing is left to serve once training is over"
    assert counts["withdrawn"] == result.pairs_withdrawn == 24 - counts["answered"]
