"""A teacher that answers through the store in its own time, as a labelling service or people do."""

import json
import threading
import time
from pathlib import Path

import numpy as np

from prefloop.store import LeaseError, PreferenceStore
from prefloop.teachers.base import StoreTeacher
from prefloop.training.config import TrainConfig
from prefloop.training.loop import train
from prefloop.types import Choice, Segment


def lean(segment: Segment) -> float:
    """Mean |pole angle| of a CartPole segment; steps after the episode ended count as fallen."""
    return float(np.where(np.arange(segment.length) < segment.n_valid, np.abs(segment.obs[:, 2]), 0.21).mean())


class LabellingQueue:
    """Takes the run's pending pairs from the store and stores the answers that come back.

    The "service" here is a worker thread preferring the more upright pole; a real bridge would
    send each pair (its segments, or its clips) to a labelling queue and store each answer when
    it arrives, minutes later, from whoever answered it.
    """

    rater_ids = ("labeller-1",)  # who answers, when known in advance (rater checks count them)

    def __init__(self, poll_s: float = 0.05) -> None:
        self.poll_s = poll_s
        self.answered = 0
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, store_url: str, run_name: str) -> None:
        """Called once the run's store exists, before the first pairs are asked; returns at once."""
        self._thread = threading.Thread(target=self._work, args=(store_url, run_name), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Called when the run ends, however it ends."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def check_alive(self) -> None:
        """Optional: the trainer, waiting for answers, asks whether any can still come."""
        if self.error is not None:
            raise RuntimeError(f"the labelling queue stopped: {self.error!r}")

    def _work(self, store_url: str, run_name: str) -> None:
        rater = self.rater_ids[0]
        try:
            with PreferenceStore(store_url, run_name=run_name) as store:  # a connection of its own
                while not self._stop.is_set():
                    pair = store.claim_next(rater, lease_seconds=120)  # nobody else gets it meanwhile
                    if pair is None:  # nothing asked yet: the trainer asks a round at a time
                        self._stop.wait(self.poll_s)
                        continue
                    asked = time.monotonic()
                    choice = Choice.LEFT if lean(pair.left) < lean(pair.right) else Choice.RIGHT
                    try:
                        store.answer(pair.id, rater, choice, response_time_s=time.monotonic() - asked)
                        self.answered += 1
                    except LeaseError:  # withdrawn (training is over), or the lease ran out
                        pass
        except Exception as exc:  # kept for check_alive: the trainer must not wait for nobody
            self.error = exc


queue = LabellingQueue()
assert isinstance(queue, StoreTeacher)  # the protocol is runtime-checkable
config = TrainConfig(
    env_id="CartPole-v1",
    run_dir=Path("runs") / time.strftime("queue-%Y%m%d-%H%M%S"),
    teacher=queue,
    labels=20,
    steps=3000,
    eval_episodes=3,
    progress_bar=False,
)
result = train(config)  # the policy trains only as far as the answers so far allow (when_behind)
print("labels:", result.labels_used, "answered by the queue:", queue.answered, "eval return:", result.eval_return_mean)
print("config.json teacher:", json.loads((config.run_dir / "config.json").read_text())["teacher"])
