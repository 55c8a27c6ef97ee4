"""The run folder: where one run keeps its config, store, checkpoints, logs and results.

    run_dir/
      config.json          the resolved TrainConfig
      prefs.sqlite         the preference store (segments, pairs, labels) unless --db-url is given
      checkpoints/         step-<N>/ {policy.zip, reward_model/, state.json}, the newest two kept
      tb/                  TensorBoard logs
      summary.json         the result, written at the end
      learning_curve.png   true (and learned) episode return vs. env steps

A checkpoint is written into a fresh ``step-<N>.tmp`` folder and renamed to ``step-<N>`` only when
complete (an atomic rename), so a crash mid-write never hides or damages the previous checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefloop.config import TrainConfig

KEEP_CHECKPOINTS = 2


class RunDirError(RuntimeError):
    """The run folder is not in the state the command needs; the message says what to do."""


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def store_path(self) -> Path:
        return self.path / "prefs.sqlite"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tb"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    def create(self, config: "TrainConfig") -> None:
        """Make the folder for a new run; refuse one that already holds anything."""
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise RunDirError(
                f"run folder {self.path} already exists. Pass --resume to continue that run, "
                "or choose a new --run-dir (nothing in it was changed)."
            )
        self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoints_dir.mkdir()
        config.save(self.config_path)

    def load_config(self) -> "TrainConfig":
        from prefloop.config import TrainConfig

        if not self.config_path.is_file():
            raise RunDirError(
                f"cannot resume: {self.config_path} does not exist. --resume continues a run folder made "
                "by an earlier `prefloop train`; to start a new run, leave out --resume."
            )
        return TrainConfig.load(self.config_path)

    def new_checkpoint_dir(self, env_step: int) -> Path:
        target = self.checkpoints_dir / f"step-{env_step:09d}.tmp"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        return target

    def publish_checkpoint(self, tmp_dir: Path) -> Path:
        final = tmp_dir.with_suffix("")
        shutil.rmtree(final, ignore_errors=True)
        tmp_dir.rename(final)
        for old in self._complete_checkpoints()[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint, or None when the run has none yet."""
        complete = self._complete_checkpoints()
        return complete[-1] if complete else None

    def _complete_checkpoints(self) -> list[Path]:
        if not self.checkpoints_dir.is_dir():
            return []
        found = [p for p in self.checkpoints_dir.glob("step-*") if p.suffix != ".tmp" and (p / "state.json").is_file()]
        return sorted(found)

    def write_result(self, result: dict[str, Any]) -> None:
        _write_atomic(self.summary_path, json.dumps(result, indent=2))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
