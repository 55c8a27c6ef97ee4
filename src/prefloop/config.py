"""The configuration of one run, as typed dataclasses; the CLI only fills these in.

``TrainConfig.resolve()`` fills every ``None`` from the env's preset, so what a run actually used
is written to ``config.json`` in full.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefloop.envs.presets import default_preset
from prefloop.query import QueryConfig
from prefloop.reward_models import RewardModelConfig
from prefloop.schedule import ScheduleConfig

REWARD_SOURCES = ("preferences", "true")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names it and the valid range."""


@dataclass(frozen=True)
class TrainConfig:
    """One preference-learning run (or, with ``reward_source="true"``, its true-reward baseline).

    Attributes:
        env_id: Gymnasium id.
        run_dir: the run folder (store, checkpoints, TensorBoard logs, summary, plots).
        teacher: ``human`` (raters in the app) or a simulated teacher preset (``oracle``,
            ``stochastic``, ``myopic``, ``mistake``, ``skip``, ``equal``).
        teacher_params: overrides of the preset, e.g. ``{"beta": 0.5}``.
        labels: label budget of the whole run.
        steps: env steps of the whole run (None: the preset's).
        algo: SB3 algorithm name (None: the preset's).
        algo_kwargs: hyper-parameters on top of the preset's for this algorithm.
        n_envs: parallel envs (None: the preset's).
        segment_length: steps per segment (None: the preset's).
        seed: seeds envs, policy, reward model, teacher and query selection.
        reward_source: ``"preferences"`` (learned reward) or ``"true"`` (the env's reward, baseline).
        eval_episodes: episodes of the final evaluation on the true reward.
        checkpoint_every: env steps between checkpoints (0: every 10% of the steps); label
            rounds and the end of the run checkpoint as well.
        torch_threads: torch intra-op threads; 1 is fastest for these small models.
        progress_bar: show a progress bar (off in benchmark workers).
        db_url: SQLAlchemy URL of the preference store (None: SQLite file in the run folder).
        when_behind: human raters only: when a label round comes before the raters answered the
            last one, ``"continue"`` training on the current reward model or ``"wait"`` for them.
        min_initial_labels: human raters, ``continue``: labels needed before the policy starts.
        gold_fraction: human raters: share of pairs with a known answer (quality control).
        raters_per_pair: labels wanted per pair (> 1 measures agreement between raters).
        unsupervised_steps: env steps of PEBBLE's unsupervised pre-training (state-entropy
            exploration) before the first query; 0 starts from a random policy's segments instead.
        guideline: the question shown to human raters above the two clips (None: the preset's).
        run_name: the run's name in the store (None: the run folder's name, fixed at creation so
            a renamed folder still finds its labels).
    """

    env_id: str
    run_dir: Path
    teacher: str = "oracle"
    teacher_params: dict[str, float] = field(default_factory=dict)
    labels: int = 200
    steps: int | None = None
    algo: str | None = None
    algo_kwargs: dict[str, Any] = field(default_factory=dict)
    n_envs: int | None = None
    segment_length: int | None = None
    seed: int = 0
    reward_source: str = "preferences"
    query: QueryConfig = field(default_factory=QueryConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    segment_buffer: int = 2000
    eval_episodes: int = 10
    checkpoint_every: int = 0
    torch_threads: int = 1
    progress_bar: bool = True
    db_url: str | None = None
    run_name: str | None = None
    guideline: str | None = None
    when_behind: str = "continue"
    min_initial_labels: int = 10
    gold_fraction: float = 0.05
    raters_per_pair: int = 1
    unsupervised_steps: int = 0
    env_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.labels >= 0, "labels", self.labels, "an integer >= 0")
        _check(self.steps is None or self.steps > 0, "steps", self.steps, "an integer > 0")
        _check(self.n_envs is None or self.n_envs >= 1, "n_envs", self.n_envs, "an integer >= 1")
        _check(self.segment_length is None or self.segment_length >= 2, "segment_length", self.segment_length, "an integer >= 2")
        _check(self.reward_source in REWARD_SOURCES, "reward_source", self.reward_source, f"one of {REWARD_SOURCES}")
        _check(self.eval_episodes >= 1, "eval_episodes", self.eval_episodes, "an integer >= 1")
        _check(self.torch_threads >= 1, "torch_threads", self.torch_threads, "an integer >= 1")
        _check(self.segment_buffer >= 2, "segment_buffer", self.segment_buffer, "an integer >= 2")
        _check(self.checkpoint_every >= 0, "checkpoint_every", self.checkpoint_every, "an integer >= 0")
        _check(self.when_behind in ("continue", "wait"), "when_behind", self.when_behind, "'continue' or 'wait'")
        _check(self.min_initial_labels >= 1, "min_initial_labels", self.min_initial_labels, "an integer >= 1")
        _check(0.0 <= self.gold_fraction < 1.0, "gold_fraction", self.gold_fraction, "a number in [0, 1)")
        _check(self.unsupervised_steps >= 0 and (self.steps is None or self.unsupervised_steps < self.steps),
               "unsupervised_steps", self.unsupervised_steps, "an integer >= 0 and below steps")
        _check(self.raters_per_pair >= 1, "raters_per_pair", self.raters_per_pair, "an integer >= 1")
        if self.reward_source == "preferences":
            _check(self.labels >= 1, "labels", self.labels, "an integer >= 1 for a preference run")

    def resolve(self) -> "TrainConfig":
        """A copy with every ``None`` filled from the env preset, and the preset's hyper-parameters merged."""
        preset = default_preset(self.env_id)
        algo = (self.algo or preset.algo).lower()
        return dataclasses.replace(
            self,
            run_dir=Path(self.run_dir),
            run_name=self.run_name or Path(self.run_dir).name,
            guideline=self.guideline or preset.guideline,
            algo=algo,
            steps=self.steps if self.steps is not None else preset.total_steps,
            n_envs=self.n_envs if self.n_envs is not None else preset.envs_for(algo),
            segment_length=self.segment_length if self.segment_length is not None else preset.segment_length,
            algo_kwargs={**preset.hyperparameters(algo), **self.algo_kwargs},
            env_kwargs={**preset.env_kwargs, **self.env_kwargs},
        )

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["run_dir"] = str(self.run_dir)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainConfig":
        data = dict(data)
        nested = {"query": QueryConfig, "reward_model": RewardModelConfig, "schedule": ScheduleConfig}
        for key, sub in nested.items():
            if key in data:
                values = dict(data[key])
                if key == "reward_model" and "hidden_sizes" in values:
                    values["hidden_sizes"] = tuple(values["hidden_sizes"])
                data[key] = sub(**values)
        data["run_dir"] = Path(data["run_dir"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**data)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc}); restore it from the run's checkpoints or start a new run") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a JSON object, got {type(data).__name__}")
        return cls.from_json(data)


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{name} must be {allowed}, got {value!r}")
