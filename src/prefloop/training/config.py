"""The configuration of one run, as typed dataclasses; the CLI only fills these in.

``TrainConfig.resolve()`` fills every ``None`` from the env's preset, so what a run actually used
is written to ``config.json`` in full.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefloop.config_files import ConfigError, dataclass_from_json
from prefloop.config_files import is_one_line as _is_one_line
from prefloop.config_files import read_json as _read_json
from prefloop.config_files import short as _short
from prefloop.credentials import scrub_config
from prefloop.envs.presets import default_preset
from prefloop.import_paths import (
    OBJECT_PREFIX,
    ImportPathError,
    describe,
    is_import_path,
)
from prefloop.import_paths import load as load_import_path
from prefloop.reward_models import RewardModelConfig
from prefloop.serialization import strict_json
from prefloop.teachers.base import StoreTeacher, Teacher, recorded_name
from prefloop.teachers.crowd import CROWD_PREFIX, parse_crowd_spec
from prefloop.teachers.simulated import HUMAN_TEACHER, RECORDED_PREFIX
from prefloop.training.query import DEFAULT_QUERY, QueryConfig
from prefloop.training.schedule import ScheduleConfig

REWARD_SOURCES = ("preferences", "true")
WHEN_BEHIND = ("pace", "wait", "continue")
MAX_GUIDELINE_CHARS = 500


@dataclass(frozen=True)
class TrainConfig:
    """One preference-learning run (or, with ``reward_source="true"``, its true-reward baseline).

    Attributes:
        env_id: Gymnasium id; with ``env_factory``, the env's name (any one line, e.g. ``"Maze"``).
        env_factory: your own env instead of ``gymnasium.make(env_id)``: a callable taking
            ``render_mode=None`` (``"rgb_array"`` for clips) and ``env_kwargs`` and returning a
            ``gymnasium.Env`` -- an unregistered env, or a registered one in your wrappers. Also
            its import path ``"package.module:make_env"``; config.json records it that way (the
            clip worker and ``--resume`` import it again when it is a top-level function of an
            importable module). See docs/extending.md.
        run_dir: the run folder (store, checkpoints, TensorBoard logs, summary, plots).
        teacher: ``human`` (raters in the app), a simulated teacher preset (``oracle``,
            ``stochastic``, ``myopic``, ``mistake``, ``skip``, ``equal``), a ``crowd:``,
            ``fitted:`` or ``recorded:`` spec, or your own object satisfying
            :class:`prefloop.teachers.base.Teacher` (answers when asked) or
            :class:`prefloop.teachers.base.StoreTeacher` (answers through the store in its own
            time, as people in ``prefloop.apps.teacher.RaterApp`` do). config.json records an
            object as ``"object:module:Class"`` (a resumed run must be given the object again), or
            as ``"human"`` when it says so (``recorded_as``: the rater app).
        teacher_params: overrides of the preset, e.g. ``{"beta": 0.5}``.
        labels: label budget of the whole run.
        steps: env steps of the whole run (None: the preset's).
        algo: SB3 algorithm name (None: the preset's), or any SB3-compatible algorithm class
            (``sb3_contrib.TRPO``) or its import path (``"sb3_contrib:TRPO"``).
        policy: the algorithm's policy: a name (``"MlpPolicy"``), a policy class or its import
            path (None: ``"CnnPolicy"`` for image observations, else ``"MlpPolicy"``); its options
            go in ``algo_kwargs["policy_kwargs"]``.
        algo_kwargs: hyper-parameters on top of the preset's for this algorithm.
        n_envs: parallel envs (None: the preset's).
        normalize_observations: the policy sees observations standardised by running statistics
            (SB3's VecNormalize; the reward model and raters' clips keep the env's own), as
            rl-baselines3-zoo does for PPO on MuJoCo (None: the preset's for the algorithm, else off).
        segment_length: steps per segment (None: the preset's).
        seed: seeds envs, policy, reward model, teacher and query selection.
        reward_source: ``"preferences"`` (learned reward) or ``"true"`` (the env's reward, baseline).
        eval_episodes: episodes of the final evaluation on the true reward.
        checkpoint_every: env steps between checkpoints (0: every 10% of the steps); label
            rounds and the end of the run checkpoint as well.
        torch_threads: torch's and numpy's BLAS threads in the run; 1 is fastest for these models.
        progress_bar: show a progress bar (off in benchmark workers).
        background_fit: fit the reward model in a second process while the policy collects its
            next rollout, for learners that take a rollout's rewards at its end (PPO, A2C); where a
            core is free the policy no longer waits on the fit. Where rollouts are at least 2,048
            env steps the run computes exactly what it would without; shorter ones take a warm fit
            (of a model fitted on ``warm_after_labels`` labels) back at the first rollout end 2,048
            env steps on, a different run but the same every time
            (:mod:`prefloop.training.background_fit`). Other learners, whose steps read the reward
            at once, always fit in their own process. None (default): decided when the run starts,
            on for runs of at least 20,000 env steps whose rollouts are at least 2,048 env steps,
            or whose simulated teacher answers in the trainer's process (shorter rollouts too;
            :func:`~prefloop.training.background_fit.wants_background_fit`).
        db_url: SQLAlchemy URL of the preference store (None: SQLite file in the run folder).
        when_behind: raters answering in their own time (people, or a simulated teacher with
            ``answer_seconds``): ``"pace"`` (default) lets the policy train only as far as the
            answers so far unlock (:mod:`prefloop.training.pacing`); ``"wait"`` pauses at every label round
            until every asked pair is answered; ``"continue"`` never waits, training on the
            current reward model (a slow rater then makes the run worse, not longer).
        min_initial_labels: human raters, ``continue``: labels needed before the policy starts.
        gold_fraction: human raters: share of pairs with a known answer (quality control).
        probation_checks: with several raters and per-rater reliability, each rater's first answers
            are this many gold checks (known answers that measure the rater and are not labels),
            and a flagged rater gets checks only (:mod:`prefloop.training.rater_checks`); 0 turns
            both off. The run asks at least this many gold pairs in its first round.
        raters_per_pair: labels wanted per pair (> 1 measures agreement between raters).
        answer_seconds: a simulated teacher answers through the store on a clock, like a person
            in the app: it claims a pair, takes this many seconds (the median), answers; 0 (the
            default) answers at once. See :mod:`prefloop.teachers.clock`.
        answer_seconds_sigma: spread of those times: each is ``answer_seconds * exp(sigma * z)``,
            ``z`` standard normal (a log-normal, the usual shape of human response times); 0 = fixed.
        unsupervised_steps: env steps of PEBBLE's unsupervised pre-training (state-entropy
            exploration) before the first query; 0 starts from a random policy's segments instead
            (None: the preset's, 0 for most envs).
        reset_critic: after unsupervised pre-training, an off-policy learner (SAC, TD3, DDPG)
            starts the learned reward with a fresh critic, as PEBBLE does (its values were those
            of the exploration reward); no effect without pre-training or on other learners. Off by
            default: on MountainCarContinuous, the one preset it reaches whose runs are affordable
            here, it did not help (docs/benchmarks.md, "Critic reset").
        guideline: the question shown to human raters above the two clips (None: the preset's).
        run_name: the run's name in the store (None: the run folder's name, fixed at creation so
            a renamed folder still finds its labels).
    """

    env_id: str
    run_dir: Path
    teacher: str | Teacher | StoreTeacher = "oracle"
    teacher_params: dict[str, float] = field(default_factory=dict)
    labels: int = 200
    steps: int | None = None
    algo: str | type | None = None
    policy: str | type | None = None
    algo_kwargs: dict[str, Any] = field(default_factory=dict)
    n_envs: int | None = None
    normalize_observations: bool | None = None
    segment_length: int | None = None
    seed: int = 0
    reward_source: str = "preferences"
    query: QueryConfig = field(default_factory=lambda: QueryConfig.from_spec(DEFAULT_QUERY))
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    segment_buffer: int = 2000
    eval_episodes: int = 10
    checkpoint_every: int = 0
    torch_threads: int = 1
    progress_bar: bool = True
    background_fit: bool | None = None
    db_url: str | None = None
    run_name: str | None = None
    guideline: str | None = None
    when_behind: str = "pace"
    min_initial_labels: int = 10
    gold_fraction: float = 0.05
    probation_checks: int = 5
    raters_per_pair: int = 1
    unsupervised_steps: int | None = None
    reset_critic: bool = False
    answer_seconds: float = 0.0
    answer_seconds_sigma: float = 0.0
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    env_factory: Callable[..., Any] | str | None = None

    def __post_init__(self) -> None:
        _check(isinstance(self.teacher, (str, Teacher, StoreTeacher)), "teacher", self.teacher,
               "a teacher name such as 'oracle' or an object with rater_id and compare(left, right) -> Choice "
               "(prefloop.teachers.base.Teacher), or with start(store_url, run_name) and stop() "
               "(prefloop.teachers.base.StoreTeacher)")
        if isinstance(self.teacher, StoreTeacher):
            recorded = getattr(self.teacher, "recorded_as", None)
            _check(recorded is None or recorded == HUMAN_TEACHER, "teacher.recorded_as", recorded,
                   f"{HUMAN_TEACHER!r} (people answer) or absent")
        _check_user_object(self.env_factory, "env_factory", "a function returning a gymnasium.Env, or its import path module:function")
        _check_user_object(self.algo, "algo", "an algorithm name such as 'ppo', an SB3 algorithm class, or its import path sb3_contrib:TRPO", names=True)
        _check_user_object(self.policy, "policy", "a policy name such as 'MlpPolicy', a policy class, or its import path", names=True)
        _check(_is_one_line(self.env_id, 200) and bool(self.env_id.strip()), "env_id", self.env_id,
               "a Gymnasium id such as 'CartPole-v1' (at most 200 characters)")
        for name, value in vars(self).items():  # what config.json can hold, or --resume could not read it back
            if isinstance(value, int) and not isinstance(value, bool):
                _check(-(2**63) <= value < 2**63, name, value, "an integer that fits in 64 bits")
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
        _check(self.answer_seconds == 0 or not self.answers_in_own_time and not self.teacher_name.startswith(RECORDED_PREFIX),
               "answer_seconds", self.answer_seconds, "0 unless the teacher is simulated (people take their own time)")
        _check(self.min_initial_labels >= 1, "min_initial_labels", self.min_initial_labels, "an integer >= 1")
        _check(0.0 <= self.gold_fraction < 1.0, "gold_fraction", self.gold_fraction, "a number in [0, 1)")
        _check(isinstance(self.probation_checks, int) and 0 <= self.probation_checks <= 50, "probation_checks",
               self.probation_checks, "an integer from 0 to 50")
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
        human = self.answers_in_own_time  # people, or your store teacher: any number of raters
        simulated = isinstance(self.teacher, str) and not human and not self.teacher.startswith((RECORDED_PREFIX, OBJECT_PREFIX))
        raters = _simulated_raters(self.teacher)
        if self.raters_per_pair > 1 and not human and raters < self.raters_per_pair:
            raise ConfigError(
                f"raters_per_pair {self.raters_per_pair} needs that many raters per pair: human raters "
                f"(teacher 'human') or a crowd of at least {self.raters_per_pair} (crowd:...); the "
                f"{_short(self.teacher_name, 40)} teacher has {raters}, so pairs would wait for ever; leave "
                "--raters-per-pair out"
            )
        if self.teacher_params and not simulated:
            raise ConfigError(
                f"teacher parameters ({', '.join(sorted(map(str, self.teacher_params)))}) apply to simulated "
                f"teachers only; the {_short(self.teacher_name, 40)} teacher has none: leave --teacher-param out"
            )
        if self.query.method == "disagreement" and self.reward_model.n_members < 2:
            raise ConfigError(
                "query 'disagreement' ranks pairs by how much the reward-model ensemble's members "
                f"disagree, which needs at least 2 members, got {self.reward_model.n_members}; use "
                "--ensemble 2 or more (default 3), or --query entropy / uniform"
            )

    @property
    def teacher_name(self) -> str:
        """The teacher as config.json names it: its spec, or ``"object:module:Class"`` for an object
        (``"human"`` for the rater app)."""
        return _name_of(self.teacher)

    @property
    def answers_in_own_time(self) -> bool:
        """Whether the teacher answers through the store in its own time (people, a store teacher),
        not when asked."""
        return self.teacher == HUMAN_TEACHER or isinstance(self.teacher, StoreTeacher)

    def resolve(self) -> "TrainConfig":
        """A copy with every ``None`` filled from the env preset, and the preset's hyper-parameters merged."""
        preset = default_preset(self.env_id)
        steps = self.steps if self.steps is not None else preset.total_steps
        if self.unsupervised_steps is None and self.reward_source == "preferences" and preset.unsupervised_steps >= steps:
            raise ConfigError(f"{self.env_id}'s preset explores for {preset.unsupervised_steps} steps before asking "
                              f"(PEBBLE's unsupervised steps), which leaves none of steps={steps} to learn from preferences: give more --steps, or fewer "
                              "--unsupervised-steps (0: no exploration)")
        algo = self.algo or preset.algo
        named = isinstance(algo, str) and not is_import_path(algo)
        if named:
            algo = algo.lower()  # type: ignore[union-attr]
        return dataclasses.replace(
            self,
            run_dir=Path(self.run_dir),
            run_name=self.run_name or Path(self.run_dir).name,
            guideline=(self.guideline if self.guideline and self.guideline.strip()
                       else preset.guideline_for({**preset.env_kwargs, **self.env_kwargs})),
            unsupervised_steps=(
                self.unsupervised_steps if self.unsupervised_steps is not None
                else (preset.unsupervised_steps if self.reward_source == "preferences" else 0)
            ),
            algo=algo,
            steps=steps,
            n_envs=self.n_envs if self.n_envs is not None else (preset.envs_for(algo) if named else _envs_for_class(algo)),
            segment_length=self.segment_length if self.segment_length is not None else preset.segment_length,
            normalize_observations=(
                self.normalize_observations if self.normalize_observations is not None
                else named and preset.normalize_observations.get(algo, False)  # type: ignore[arg-type]
            ),
            reward_model=(
                self.reward_model if self.reward_model.action_squares is not None
                else dataclasses.replace(self.reward_model, action_squares=preset.action_squares)
            ),
            algo_kwargs={**(preset.hyperparameters(algo) if named else {}), **self.algo_kwargs},
            env_kwargs={**preset.env_kwargs, **self.env_kwargs},
        )

    def to_json(self) -> dict[str, Any]:
        """The config as JSON values, ``db_url`` without its password (this goes into files).

        Python objects (a teacher, a query rule, factories, an algorithm class) are written as
        their names (:func:`prefloop.import_paths.describe`)."""
        data = dataclasses.asdict(self.described())
        data["run_dir"] = str(self.run_dir)
        return scrub_config(data)

    def described(self) -> "TrainConfig":
        """A copy with every Python object replaced by its name (what config.json holds)."""
        values: dict[str, Any] = {}
        for path in USER_OBJECT_FIELDS:
            value = _get(self, path)
            if value is not None and not isinstance(value, str):
                values[".".join(path)] = _name_of(value)
        return _with_values(self, values) if values else self

    def with_objects_of(self, given: "TrainConfig") -> "TrainConfig":
        """This config (read from a run's config.json) with the Python objects of ``given`` put back
        where config.json holds their names: how a resumed run gets its teacher, query rule,
        factories and classes again. Names that do not match are left as they are."""
        values: dict[str, Any] = {}
        for path in USER_OBJECT_FIELDS:
            recorded, object_ = _get(self, path), _get(given, path)
            if isinstance(recorded, str) and object_ is not None and not isinstance(object_, str) and _name_of(object_) == recorded:
                values[".".join(path)] = object_
        return _with_values(self, values) if values else self

    def check_objects(self) -> None:
        """Raise :class:`ConfigError` (one line) when config.json names a Python object that cannot
        be rebuilt from its name (an instance, or a function defined in a script): ``--resume``
        cannot continue such a run; Python can, given the object again."""
        for path in USER_OBJECT_FIELDS:
            value = _get(self, path)
            if not isinstance(value, str) or not (value.startswith(OBJECT_PREFIX) or is_import_path(value)):
                continue
            name = ".".join(path)
            how = (f"resume it from Python with the same object: train(dataclasses.replace(TrainConfig.load(path), "
                   f"{path[0]}=...), resume=True)")
            if value.startswith(OBJECT_PREFIX):
                raise ConfigError(f"the run's {name} was a Python object ({value[len(OBJECT_PREFIX):]}) that prefloop "
                                  f"cannot rebuild from config.json; {how}")
            try:
                load_import_path(value, name)
            except ImportPathError as exc:
                raise ConfigError(f"{exc}; or {how}") from None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainConfig":
        """The config :meth:`to_json` wrote, every key and value checked against the field types.

        Raises:
            ConfigError: not an object, an unknown or missing key, a value of the wrong type (the
                message names the key, e.g. ``query.oversampling``), or one out of range.
        """
        if isinstance(data, dict) and "normalize_observations" not in data:
            data = {**data, "normalize_observations": False}  # written before the setting: it ran without
        if isinstance(data, dict) and "reset_critic" not in data:
            data = {**data, "reset_critic": False}  # likewise (and the default)
        reward = data.get("reward_model") if isinstance(data, dict) else None
        if isinstance(reward, dict) and "action_squares" not in reward:
            reward = {**reward, "action_squares": False}  # likewise
            data = {**data, "reward_model": reward}
        if isinstance(reward, dict) and "warm_steps_per_label" not in reward and "steps_per_label" in reward:
            # likewise: every fit took steps_per_label per new label
            data = {**data, "reward_model": {"warm_after_labels": 1, **reward, "warm_steps_per_label": reward["steps_per_label"]}}
        return dataclass_from_json(cls, data)

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


# Where a TrainConfig may hold a user's Python object (written to config.json as its name).
USER_OBJECT_FIELDS: tuple[tuple[str, ...], ...] = (
    ("teacher",), ("env_factory",), ("algo",), ("policy",), ("query", "method"), ("reward_model", "member_factory"),
)


def _name_of(value: Any) -> str:
    """What config.json holds for a field's value: a name as it is, a store teacher's
    ``recorded_as`` (the rater app: ``"human"``), else the object's import path or ``"object:..."``."""
    if isinstance(value, str):
        return value
    return (recorded_name(value) if isinstance(value, StoreTeacher) else None) or describe(value)


def _get(config: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        config = getattr(config, name)
    return config


def _with_values(config: Any, values: dict[str, Any]) -> Any:
    """``config`` with dotted keys (``"query.method"``) replaced, nested dataclasses copied."""
    direct = {k: v for k, v in values.items() if "." not in k}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        if "." in key:
            head, rest = key.split(".", 1)
            nested.setdefault(head, {})[rest] = value
    for head, inner in nested.items():
        direct[head] = _with_values(getattr(config, head), inner)
    return dataclasses.replace(config, **direct)


def _check_user_object(value: Any, name: str, allowed: str, *, names: bool = False) -> None:
    """A field that takes a Python object: None, the object (callable), or a string (an import
    path; with ``names``, any name)."""
    if value is None or callable(value):
        return
    _check(isinstance(value, str) and (names or is_import_path(value)) and _is_one_line(value, 300) and bool(value.strip()),
           name, value, allowed)


def _envs_for_class(algo: Any) -> int:
    """Parallel envs for an algorithm given as a class or import path: 1 off-policy, 4 on-policy
    (as the presets do for SB3's own)."""
    from prefloop.training.algos import algorithm_class, is_off_policy_class

    return 1 if is_off_policy_class(algorithm_class(algo)) else 4


# What makes a run the run it is: a config.json that differs from the run's own record in one of
# these (an edited file, a file from another run) cannot continue it.
RUN_IDENTITY_KEYS = (
    "env_id", "env_kwargs", "run_name", "algo", "algo_kwargs", "seed", "n_envs", "normalize_observations", "segment_length",
    "reward_source", "teacher", "teacher_params", "env_factory", "policy", "labels", "steps", "raters_per_pair",
    "unsupervised_steps", "reset_critic", "query", "reward_model", "schedule",
)


def config_differences(recorded: Any, current: dict[str, Any]) -> list[str]:
    """The run-identity settings (:data:`RUN_IDENTITY_KEYS`) in which ``current`` (a config as
    JSON) differs from ``recorded`` (the copy the run kept in its store or checkpoint), e.g.
    ``["env_id: the run has 'CartPole-v1', config.json 'Acrobot-v1'"]``; keys one of them lacks
    (an older version), also inside ``query`` etc., are not compared. Values are cut short."""
    if not isinstance(recorded, dict):
        return []
    current = json.loads(json.dumps(current))  # tuples -> lists, as recorded
    return [
        f"{key}: the run has {_short(recorded[key], 40)}, config.json {_short(current[key], 40)}"
        for key in RUN_IDENTITY_KEYS
        if key in recorded and key in current and _differs(recorded[key], current[key])
    ]


def _differs(recorded: Any, current: Any) -> bool:
    """Objects compare on the keys both have: a setting added since a run was recorded is no edit."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        return any(_differs(recorded[k], current[k]) for k in recorded.keys() & current.keys())
    return recorded != current


def _simulated_raters(teacher: str | Teacher) -> int:
    """How many simulated raters a teacher spec stands for: a crowd's members, else 1 (0: none
    simulated, e.g. a malformed crowd spec, which the teacher check reports itself); a teacher
    object's ``members`` if it has them, else 1."""
    if not isinstance(teacher, str):
        return len(getattr(teacher, "members", None) or [teacher])
    if not teacher.startswith(CROWD_PREFIX):
        return 1
    try:
        return sum(member.count for member in parse_crowd_spec(teacher))
    except ValueError:
        return 0


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{name} must be {allowed}, got {_short(value)}")
