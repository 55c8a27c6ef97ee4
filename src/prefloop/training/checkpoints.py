"""Which checkpoint of a run folder can be resumed from: one check for ``--resume`` and ``doctor``.

A checkpoint (``checkpoints/step-<N>/``) is usable when its ``state.json`` is a JSON object with an
integer ``env_step``, its ``policy.zip`` loads with the run's SB3 algorithm, and (preference runs)
its reward model loads. A truncated or otherwise damaged newest checkpoint is skipped, with the
reason, for the newest one that loads.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefloop.training.rundir import RunDir


@dataclass
class CheckpointChoice:
    """The newest usable checkpoint (None: none is, the run starts its policy afresh) and the
    newer ones skipped, each with why."""

    checkpoint: Path | None
    state: dict[str, Any] = field(default_factory=dict)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def checkpoint_problems(checkpoint: Path, *, reward_model: bool, algo: str | None = None) -> list[str]:
    """Why ``checkpoint`` cannot be resumed from (empty: it can).

    Args:
        checkpoint: a ``step-<N>`` folder.
        reward_model: the run learns a reward model (a preference run), so it must load too.
        algo: the run's SB3 algorithm; when given, ``policy.zip`` is loaded with it (the same
            load ``--resume`` does), else only its zip structure is checked.
    """
    problems = []
    try:
        state = json.loads((checkpoint / "state.json").read_bytes().decode("utf-8"))
        if not isinstance(state, dict) or not isinstance(state.get("env_step"), int):
            problems.append("state.json has no integer env_step")
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        problems.append(f"state.json does not parse ({_first_line(exc)})")
    policy = checkpoint / "policy.zip"
    if not policy.is_file():
        problems.append("policy.zip is missing")
    else:
        try:
            with zipfile.ZipFile(policy) as archive:
                bad = archive.testzip()
                if bad is not None or "data" not in archive.namelist():
                    problems.append(f"policy.zip is damaged ({bad or 'no SB3 data entry'})")
        except (OSError, zipfile.BadZipFile) as exc:
            problems.append(f"policy.zip is not a readable zip ({_first_line(exc)})")
        else:
            if algo is not None and not problems:
                from prefloop.training.algos import (
                    algorithm_class,  # SB3 and torch: only when needed
                )

                try:
                    algorithm_class(algo).load(policy, device="cpu")
                except Exception as exc:  # noqa: BLE001 -- any failure to load is the finding itself
                    problems.append(f"policy.zip does not load ({type(exc).__name__}: {_first_line(exc)})")
    # SB3 and torch: only when needed
    from prefloop.envs.observation_norm import check_stats
    from prefloop.training.resume_state import OBSERVATION_STATS_FILE

    stats = checkpoint / OBSERVATION_STATS_FILE
    if stats.is_file():
        try:
            check_stats(json.loads(stats.read_bytes().decode("utf-8")))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            problems.append(f"{stats.name} does not load ({_first_line(exc)})")
    if reward_model:
        from prefloop.reward_models import load_reward_model
        from prefloop.training.resume_state import (
            OPTIMIZER_FILE,
            TRAINER_FILE,
            parse_trainer_state,
        )

        try:
            load_reward_model(checkpoint / "reward_model")
        except Exception as exc:  # noqa: BLE001 -- a truncated file fails in many ways
            problems.append(f"reward_model does not load ({_first_line(exc)})")
        optimizer, counters = checkpoint / OPTIMIZER_FILE, checkpoint / TRAINER_FILE
        if optimizer.is_file():
            import torch

            try:
                torch.load(optimizer, weights_only=True)
            except Exception as exc:  # noqa: BLE001 -- a truncated optimiser file fails in many ways, like the model
                problems.append(f"{OPTIMIZER_FILE} does not load ({_first_line(exc)})")
        if counters.is_file():
            try:
                parse_trainer_state(counters.read_bytes().decode("utf-8"))
            except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
                problems.append(f"{TRAINER_FILE} does not parse ({_first_line(exc)})")
    return problems


def newest_usable_checkpoint(run_dir: RunDir, *, reward_model: bool, algo: str | None) -> CheckpointChoice:
    """The newest complete checkpoint that loads (see :func:`checkpoint_problems`); newer damaged
    ones are listed in ``skipped`` and left where they are (nothing is moved or deleted)."""
    choice = CheckpointChoice(None)
    for checkpoint in reversed(run_dir.complete_checkpoints()):
        problems = checkpoint_problems(checkpoint, reward_model=reward_model, algo=algo)
        if not problems:
            choice.checkpoint = checkpoint
            choice.state = json.loads((checkpoint / "state.json").read_bytes().decode("utf-8"))
            return choice
        choice.skipped.append((checkpoint, "; ".join(problems)))
    return choice


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
