"""The configuration of one run, as typed dataclasses; the CLI only fills these in.

``TrainConfig.resolve()`` fills every ``None`` from the env's preset, so what a run actually used
is written to ``config.json`` in full.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefloop.config_files import ConfigError
from prefloop.config_files import is_one_line as _is_one_line
from prefloop.config_files import read_json as _read_json
from prefloop.config_files import short as _short
from prefloop.credentials import scrub_config
from prefloop.envs.presets import default_preset
from prefloop.reward_models import RewardModelConfig
from prefloop.serialization import strict_json
from prefloop.teachers.crowd import CROWD_PREFIX, parse_crowd_spec
from prefloop.teachers.simulated import HUMAN_TEACHER, RECORDED_PREFIX
from prefloop.training.query import QueryConfig
from prefloop.training.schedule import ScheduleConfig

REWARD_SOURCES = ("preferences", "true")
WHEN_BEHIND = ("pace", "wait", "continue")
MAX_GUIDELINE_CHARS = 500


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
        when_behind: raters answering in their own time (people, or a simulated teacher with
            ``answer_seconds``): ``"pace"`` (default) lets the policy train only as far as the
            answers so far unlock (:mod:`prefloop.training.pacing`); ``"wait"`` pauses at every label round
            until every asked pair is answered; ``"continue"`` never waits, training on the
            current reward model (a slow rater then makes the run worse, not longer).
        min_initial_labels: human raters, ``continue``: labels needed before the policy starts.
        gold_fraction: human raters: share of pairs with a known answer (quality control).
        raters_per_pair: labels wanted per pair (> 1 measures agreement between raters).
        answer_seconds: a simulated teacher answers through the store on a clock, like a person
            in the app: it claims a pair, takes this many seconds (the median), answers; 0 (the
            default) answers at once. See :mod:`prefloop.teachers.clock`.
        answer_seconds_sigma: spread of those times: each is ``answer_seconds * exp(sigma * z)``,
            ``z`` standard normal (a log-normal, the usual shape of human response times); 0 = fixed.
        unsupervised_steps: env steps of PEBBLE's unsupervised pre-training (state-entropy
            exploration) before the first query; 0 starts from a random policy's segments instead
            (None: the preset's, 0 for most envs).
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
    when_behind: str = "pace"
    min_initial_labels: int = 10
    gold_fraction: float = 0.05
    raters_per_pair: int = 1
    unsupervised_steps: int | None = None
    answer_seconds: float = 0.0
    answer_seconds_sigma: float = 0.0
    env_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(_is_one_line(self.env_id, 200) and bool(self.env_id.strip()), "env_id", self.env_id,
               "a Gymnasium id such as 'CartPole-v1' (at most 200 characters)")
        _check(self.labels >= 0, "labels", self.labels, "an integer >= 0")
        _check(self.steps is None or self.steps > 0, "steps", self.steps, "an integer > 0")
        _check(self.n_envs is None or self.n_envs >= 1, "n_envs", self.n_envs, "an integer >= 1")
        _check(self.segment_length is None or self.segment_length >= 2, "segment_length", self.segment_length, "an integer >= 2")
        _check(self.reward_source in REWARD_SOURCES, "reward_source", self.reward_source, f"one of {REWARD_SOURCES}")
        _check(self.eval_episodes >= 1, "eval_episodes", self.eval_episodes, "an integer >= 1")
        _check(self.torch_threads >= 1, "torch_threads", self.torch_threads, "an integer >= 1")
        _check(self.segment_buffer >= 2, "segment_buffer", self.segment_buffer, "an integer >= 2")
        _check(self.checkpoint_every >= 0, "checkpoint_every", self.checkpoint_every, "an integer >= 0")
        _check(self.when_behind in WHEN_BEHIND, "when_behind", self.when_behind, " or ".join(map(repr, WHEN_BEHIND)))
        for name in ("answer_seconds", "answer_seconds_sigma"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 3600, name, value,
                   "a number of seconds in [0, 3600]")
        _check(self.answer_seconds == 0 or (self.teacher != "human" and not self.teacher.startswith("recorded:")),
               "answer_seconds", self.answer_seconds, "0 unless the teacher is simulated (people take their own time)")
        _check(self.min_initial_labels >= 1, "min_initial_labels", self.min_initial_labels, "an integer >= 1")
        _check(0.0 <= self.gold_fraction < 1.0, "gold_fraction", self.gold_fraction, "a number in [0, 1)")
        _check(self.unsupervised_steps is None or (
            self.unsupervised_steps >= 0 and (self.steps is None or self.unsupervised_steps < self.steps)),
            "unsupervised_steps", self.unsupervised_steps, "an integer >= 0 and below steps")
        _check(self.raters_per_pair >= 1, "raters_per_pair", self.raters_per_pair, "an integer >= 1")
        _check(self.run_name is None or (_is_one_line(self.run_name, 200) and bool(self.run_name.strip())), "run_name",
               self.run_name, "a name of at most 200 characters without control characters")
        _check(self.guideline is None or _is_one_line(self.guideline, MAX_GUIDELINE_CHARS), "guideline",
               self.guideline, f"one line of at most {MAX_GUIDELINE_CHARS} characters without control characters")
        if self.reward_source == "preferences":
            _check(self.labels >= 1, "labels", self.labels, "an integer >= 1 for a preference run")
            self._check_fits_teacher()

    def _check_fits_teacher(self) -> None:
        """Refuse settings the run's teacher or query method would silently ignore."""
        human = self.teacher == HUMAN_TEACHER
        simulated = not human and not self.teacher.startswith(RECORDED_PREFIX)
        raters = _simulated_raters(self.teacher)
        if self.raters_per_pair > 1 and not human and raters < self.raters_per_pair:
            raise ConfigError(
                f"raters_per_pair {self.raters_per_pair} needs that many raters per pair: human raters "
                f"(teacher 'human') or a crowd of at least {self.raters_per_pair} (crowd:...); the "
                f"{_short(self.teacher, 40)} teacher has {raters}, so pairs would wait for ever; leave "
                "--raters-per-pair out"
            )
        if self.teacher_params and not simulated:
            raise ConfigError(
                f"teacher parameters ({', '.join(sorted(map(str, self.teacher_params)))}) apply to simulated "
                f"teachers only; the {_short(self.teacher, 40)} teacher has none: leave --teacher-param out"
            )
        if self.query.method == "disagreement" and self.reward_model.n_members < 2:
            raise ConfigError(
                "query 'disagreement' ranks pairs by how much the reward-model ensemble's members "
                f"disagree, which needs at least 2 members, got {self.reward_model.n_members}; use "
                "--ensemble 2 or more (default 3), or --query entropy / uniform"
            )

    def resolve(self) -> "TrainConfig":
        """A copy with every ``None`` filled from the env preset, and the preset's hyper-parameters merged."""
        preset = default_preset(self.env_id)
        algo = (self.algo or preset.algo).lower()
        return dataclasses.replace(
            self,
            run_dir=Path(self.run_dir),
            run_name=self.run_name or Path(self.run_dir).name,
            guideline=self.guideline if self.guideline and self.guideline.strip() else preset.guideline,
            unsupervised_steps=(
                self.unsupervised_steps if self.unsupervised_steps is not None
                else (preset.unsupervised_steps if self.reward_source == "preferences" else 0)
            ),
            algo=algo,
            steps=self.steps if self.steps is not None else preset.total_steps,
            n_envs=self.n_envs if self.n_envs is not None else preset.envs_for(algo),
            segment_length=self.segment_length if self.segment_length is not None else preset.segment_length,
            algo_kwargs={**preset.hyperparameters(algo), **self.algo_kwargs},
            env_kwargs={**preset.env_kwargs, **self.env_kwargs},
        )

    def to_json(self) -> dict[str, Any]:
        """The config as JSON values, ``db_url`` without its password (this goes into files)."""
        data = dataclasses.asdict(self)
        data["run_dir"] = str(self.run_dir)
        return scrub_config(data)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainConfig":
        """The config :meth:`to_json` wrote, every key and value checked against the field types.

        Raises:
            ConfigError: not an object, an unknown or missing key, a value of the wrong type (the
                message names the key, e.g. ``query.oversampling``), or one out of range.
        """
        return _dataclass_from_json(cls, data, "")

    def save(self, path: Path) -> None:
        path.write_text(strict_json(self.to_json(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        """Read a run folder's ``config.json``.

        Raises:
            ConfigError: one line naming the file and what is wrong with it (unreadable, not
                UTF-8 JSON, not an object, unknown/missing keys, wrong types, bad values).
        """
        hint = "fix it, or restore it from a backup of the run folder"
        data = _read_json(path, hint)
        try:
            return cls.from_json(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}; {hint}") from None


# What makes a run the run it is: a config.json that differs from the run's own record in one of
# these (an edited file, a file from another run) cannot continue it.
RUN_IDENTITY_KEYS = (
    "env_id", "env_kwargs", "run_name", "algo", "algo_kwargs", "seed", "n_envs", "segment_length",
    "reward_source", "teacher", "teacher_params", "labels", "steps", "raters_per_pair",
    "unsupervised_steps", "query", "reward_model", "schedule",
)


def config_differences(recorded: Any, current: dict[str, Any]) -> list[str]:
    """The run-identity settings (:data:`RUN_IDENTITY_KEYS`) in which ``current`` (a config as
    JSON) differs from ``recorded`` (the copy the run kept in its store or checkpoint), e.g.
    ``["env_id: the run has 'CartPole-v1', config.json 'Acrobot-v1'"]``; keys one of them lacks
    (an older version) are not compared. Values are cut short for the message."""
    if not isinstance(recorded, dict):
        return []
    current = json.loads(json.dumps(current))  # tuples -> lists, as recorded
    return [
        f"{key}: the run has {_short(recorded[key], 40)}, config.json {_short(current[key], 40)}"
        for key in RUN_IDENTITY_KEYS
        if key in recorded and key in current and recorded[key] != current[key]
    ]


def _simulated_raters(teacher: str) -> int:
    """How many simulated raters a teacher spec stands for: a crowd's members, else 1 (0: none
    simulated, e.g. a malformed crowd spec, which the teacher check reports itself)."""
    if not teacher.startswith(CROWD_PREFIX):
        return 1
    try:
        return sum(member.count for member in parse_crowd_spec(teacher))
    except ValueError:
        return 0


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{name} must be {allowed}, got {_short(value)}")


def _dataclass_from_json(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a JSON object, checking keys and value types; ``where`` is the
    key path so far (``"query."``) for the messages."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where.rstrip('.') or 'the config'} must be a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in data if k not in fields)
    if unknown:
        shown = ", ".join(_short(k, 40) for k in unknown[:5])
        raise ConfigError(f"unknown config keys {shown} in {where.rstrip('.') or 'the config'}; valid keys: {', '.join(sorted(fields))}")
    missing = [
        name for name, f in fields.items()
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing config keys {', '.join(where + m for m in missing)}")
    values = {name: _json_value(data[name], hints[name], where + name) for name in data}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where.rstrip('.') or 'config'}: {str(exc)[:300]}") from None


def _json_value(value: Any, annotation: Any, key: str) -> Any:
    """``value`` (parsed JSON) as the Python value of a field typed ``annotation``."""
    if annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation):
        return _dataclass_from_json(annotation, value, key + ".")
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _json_value(value, options[0], key)
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif annotation is Path:
        if isinstance(value, str) and value and "\x00" not in value:
            return Path(value)
    elif origin is dict:
        if isinstance(value, dict):
            return {k: _json_value(v, args[1], f"{key}.{k}") for k, v in value.items()}
    elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if isinstance(value, (list, tuple)):
            return tuple(_json_value(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    raise ConfigError(f"{key} must be {_type_words(annotation)}, got {_short(value)}")


def _type_words(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_words(a) for a in args)
    words = {bool: "true or false", int: "an integer (64 bits)", float: "a finite number", str: "a string",
             Path: "a non-empty path string", type(None): "null"}
    if annotation in words:
        return words[annotation]
    if origin is dict:
        return f"an object whose values are each {_type_words(args[1])}"
    if origin is tuple:
        return f"a list whose items are each {_type_words(args[0])}"
    return getattr(annotation, "__name__", str(annotation))
