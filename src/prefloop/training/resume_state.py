"""What a checkpoint keeps beyond the policy and the reward model's weights, so that a resumed run
continues where it stopped rather than relearning:

- the off-policy replay buffer (SB3's ``save_replay_buffer``): without it a resumed SAC/TD3 run
  starts from an empty buffer and has to refill it before its updates mean anything;
- the reward model's Adam state and the trainer's counters (fits so far, labels already fitted),
  so the first fit after a resume takes the same steps it would have taken without the stop;
- the policy's observation statistics (runs with ``normalize_observations``), without which the
  resumed policy would see differently scaled observations until new statistics settle;
- each rater's estimated reliability (error rate, temperature, flag), so the first gradient steps
  after a resume weight the raters as before the stop rather than everyone at the prior (a flagged
  adversarial rater would otherwise train the model at full weight until the first E-step).

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

from prefloop.envs.observation_norm import load_stats, stats_to_json
from prefloop.reward_models import RaterEstimate
from prefloop.serialization import strict_json
from prefloop.training.algos import is_off_policy

if TYPE_CHECKING:
    from prefloop.reward_models import RewardTrainer

log = logging.getLogger("prefloop")

REPLAY_BUFFER_FILE = "replay_buffer.pkl"
OPTIMIZER_FILE = "reward_optimizer.pt"
TRAINER_FILE = "reward_trainer.json"
OBSERVATION_STATS_FILE = "observation_stats.json"


def save_resume_state(folder: Path, model: BaseAlgorithm, trainer: "RewardTrainer | None") -> None:
    """Write the replay buffer (off-policy algorithms) and the reward trainer's state into ``folder``."""
    if is_off_policy(model):
        model.save_replay_buffer(folder / REPLAY_BUFFER_FILE)  # type: ignore[attr-defined]
    normalizer = model.get_vec_normalize_env()
    if normalizer is not None:
        (folder / OBSERVATION_STATS_FILE).write_text(strict_json(stats_to_json(normalizer)))
    if trainer is not None:
        torch.save(trainer.optimizer.state_dict(), folder / OPTIMIZER_FILE)
        estimates = trainer.rater_estimates
        state = {**trainer.counters(), "rater_estimates": None if estimates is None else [e.to_json() for e in estimates]}
        (folder / TRAINER_FILE).write_text(strict_json(state))


def parse_trainer_state(text: str) -> tuple[dict[str, int], list[RaterEstimate] | None]:
    """The counters and rater estimates of a ``reward_trainer.json`` (estimates None: plain loss,
    or a checkpoint written before they were kept).

    Raises:
        ValueError: it is not JSON, not an object, or an estimate is malformed (one line saying which).
    """
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{TRAINER_FILE} holds {type(data).__name__}, not an object")
    counters = {key: data[key] for key in ("n_fits", "pairs_fitted") if key in data}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counters.values()):
        raise ValueError(f"{TRAINER_FILE} counters are not integers >= 0: {counters}")
    raw = data.get("rater_estimates")
    if raw is None:
        return counters, None
    if not isinstance(raw, list):
        raise ValueError(f"{TRAINER_FILE} rater_estimates is {type(raw).__name__}, not a list")
    return counters, [RaterEstimate.from_json(item) for item in raw]


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
    normalizer = model.get_vec_normalize_env()
    if normalizer is not None:
        path = folder / OBSERVATION_STATS_FILE
        if path.is_file():
            load_stats(normalizer, json.loads(path.read_text()))
            rms = normalizer.obs_rms  # a Dict observation's keys all count the same observations
            count = (next(iter(rms.values())) if isinstance(rms, dict) else rms).count
            log.info("observation statistics restored (%d observations)", int(count))
        else:
            log.warning("%s has no observation statistics (written without normalize_observations): the policy "
                        "resumes with fresh ones", folder)
    if trainer is not None:
        optimizer_path, counters_path = folder / OPTIMIZER_FILE, folder / TRAINER_FILE
        if optimizer_path.is_file():
            trainer.load_optimizer_state(torch.load(optimizer_path, weights_only=True))
        if counters_path.is_file():
            counters, estimates = parse_trainer_state(counters_path.read_text())
            trainer.restore_counters(counters)
            trainer.restore_rater_estimates(estimates)
            if estimates:
                log.info("rater reliability restored: %s", ", ".join(
                    f"{e.rater_id} {e.error_rate:.2f}{' (flagged)' if e.flagged else ''}" for e in estimates))
