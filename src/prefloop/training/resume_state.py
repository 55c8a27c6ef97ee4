"""What a checkpoint keeps beyond the policy and the reward model's weights, so that a resumed run
continues where it stopped rather than relearning:

- the off-policy replay buffer (SB3's ``save_replay_buffer``): without it a resumed SAC/TD3 run
  starts from an empty buffer and has to refill it before its updates mean anything;
- the reward model's Adam state and the trainer's counters (fits so far, labels already fitted),
  so the first fit after a resume takes the same steps it would have taken without the stop.

Files are written into the checkpoint's temporary folder, which ``RunDir.publish_checkpoint``
renames into place only once everything in it is written: a reader never sees half a buffer.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from stable_baselines3.common.base_class import BaseAlgorithm

from prefloop.serialization import strict_json
from prefloop.training.algos import is_off_policy

if TYPE_CHECKING:
    from prefloop.reward_models import RewardTrainer

log = logging.getLogger("prefloop")

REPLAY_BUFFER_FILE = "replay_buffer.pkl"
OPTIMIZER_FILE = "reward_optimizer.pt"
TRAINER_FILE = "reward_trainer.json"


def save_resume_state(folder: Path, model: BaseAlgorithm, trainer: "RewardTrainer | None") -> None:
    """Write the replay buffer (off-policy algorithms) and the reward trainer's state into ``folder``."""
    if is_off_policy(model):
        model.save_replay_buffer(folder / REPLAY_BUFFER_FILE)  # type: ignore[attr-defined]
    if trainer is not None:
        torch.save(trainer.optimizer.state_dict(), folder / OPTIMIZER_FILE)
        (folder / TRAINER_FILE).write_text(strict_json(trainer.counters()))


def restore_resume_state(folder: Path, model: BaseAlgorithm, trainer: "RewardTrainer | None") -> None:
    """Load what :func:`save_resume_state` wrote; a checkpoint written before these files existed
    resumes as before (empty buffer, fresh optimiser), with a warning saying so."""
    if is_off_policy(model):
        path = folder / REPLAY_BUFFER_FILE
        if path.is_file():
            model.load_replay_buffer(path)  # type: ignore[attr-defined]
            log.info("replay buffer restored: %d transitions", model.replay_buffer.size())  # type: ignore[attr-defined]
        else:
            log.warning("%s has no replay buffer (written by an older prefloop): the policy resumes with an empty one", folder)
    if trainer is not None:
        optimizer_path, counters_path = folder / OPTIMIZER_FILE, folder / TRAINER_FILE
        if optimizer_path.is_file():
            trainer.optimizer.load_state_dict(torch.load(optimizer_path, weights_only=True))
        if counters_path.is_file():
            trainer.restore_counters(json.loads(counters_path.read_text()))
