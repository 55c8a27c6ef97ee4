"""A teacher of your own: any object with ``rater_id`` and ``compare(left, right) -> Choice``."""

import json
import time
from pathlib import Path

import numpy as np

from prefloop.teachers.base import Teacher
from prefloop.training.config import TrainConfig
from prefloop.training.loop import train
from prefloop.types import Choice, Segment


class UprightTeacher:
    """Prefers the CartPole segment whose pole leans less (obs[:, 2] is the pole angle, radians)."""

    rater_id = "upright"

    def compare(self, left: Segment, right: Segment) -> Choice:
        # Steps from n_valid on are after the episode ended: a fallen pole counts as 0.21 rad there.
        lean = [np.where(np.arange(s.length) < s.n_valid, np.abs(s.obs[:, 2]), 0.21).mean() for s in (left, right)]
        if abs(lean[0] - lean[1]) < 1e-3:
            return Choice.EQUAL
        return Choice.LEFT if lean[0] < lean[1] else Choice.RIGHT


teacher = UprightTeacher()
assert isinstance(teacher, Teacher)  # the protocol is runtime-checkable
config = TrainConfig(
    env_id="CartPole-v1",
    run_dir=Path("runs") / time.strftime("upright-%Y%m%d-%H%M%S"),
    teacher=teacher,
    labels=30,
    steps=4000,
    eval_episodes=3,
    progress_bar=False,
)
result = train(config)
print("labels:", result.labels_used, "eval return:", result.eval_return_mean)
print("config.json teacher:", json.loads((config.run_dir / "config.json").read_text())["teacher"])
