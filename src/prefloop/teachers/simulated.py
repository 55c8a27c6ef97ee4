"""B-Pref's simulated teachers (the :class:`~prefloop.teachers.base.Teacher` protocol is in
:mod:`prefloop.teachers.base`, re-exported here).

A teacher is anything with a ``rater_id`` and a ``compare(left, right) -> Choice`` method.
:class:`SimulatedTeacher` answers from the environment's true rewards, with the irrationalities of B-Pref (Lee et al. 2021, "B-Pref: Benchmarking
Preference-Based Reinforcement Learning"), applied in B-Pref's order:

1. skip: ``max(R_left, R_right) < skip_threshold * return_scale`` -> ``CANT_TELL`` (B-Pref's
   code applies it only when ``skip_threshold * return_scale > 0``; here any non-zero threshold
   counts, see :class:`TeacherConfig`).
2. myopic: returns weight step ``t`` of an ``L``-step segment by ``gamma ** (L - 1 - t)``.
3. rationality: ``P(RIGHT) = sigmoid(beta * (R'_right - R'_left))`` on the myopic returns ``R'``,
   sampled; ``beta = inf`` answers deterministically.
4. mistake: LEFT and RIGHT are swapped with probability ``epsilon``.
5. equal: ``|R_left - R_right| < equal_threshold * |return_scale|`` -> ``EQUAL``.

``R`` is the undiscounted sum of ``Segment.true_rewards`` (absorbing steps after termination
hold 0).
"""

from __future__ import annotations

import difflib
import math
import numbers
from dataclasses import dataclass, fields, replace

import numpy as np

from prefloop.teachers.base import Teacher
from prefloop.types import Choice, Segment

# Not simulated: people answering in the rater app; and the replay of an exported run's labels.
HUMAN_TEACHER = "human"
RECORDED_PREFIX = "recorded:"  # "recorded:<dataset dir>"

__all__ = [
    "HUMAN_TEACHER",
    "RECORDED_PREFIX",
    "TEACHER_PRESETS",
    "SimulatedTeacher",
    "Teacher",
    "TeacherConfig",
    "TeacherConfigError",
    "make_teacher",
    "parse_teacher_param",
    "parse_teacher_spec",
    "teacher_spec",
]


class TeacherConfigError(ValueError):
    """A simulated teacher was configured with an invalid or unknown parameter."""


def _check_real(name: str, value: object, allowed: str) -> float:
    # bool is an int subclass; True as a threshold is almost certainly a mistake.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TeacherConfigError(
            f"TeacherConfig.{name} must be a real number {allowed}, got {value!r} "
            f"({type(value).__name__})"
        )
    v = float(value)
    if math.isnan(v):
        raise TeacherConfigError(f"TeacherConfig.{name} must be {allowed}, got nan")
    return v


@dataclass(frozen=True)
class TeacherConfig:
    """B-Pref's teacher parameters. The defaults are the perfectly rational oracle.

    Attributes:
        beta: rationality of the Bradley-Terry choice, ``> 0``; ``math.inf`` is deterministic.
        gamma: myopia discount in ``(0, 1]``; step ``t`` of ``L`` is weighted ``gamma**(L-1-t)``.
        epsilon: probability in ``[0, 1]`` of swapping LEFT and RIGHT (a mistake).
        skip_threshold: skip the query (CANT_TELL) when both returns are below
            ``skip_threshold * return_scale``; ``>= 0``, 0 disables it. The scale keeps its
            sign: with negative rewards (Pendulum) a pair is skipped when both returns are below
            that fraction of a typical (negative) return, i.e. both are poor. This differs from
            B-Pref's code, whose ``get_label`` skips only when its threshold is positive, so it
            never skips on a negative-reward task.
        equal_threshold: answer EQUAL when the returns differ by less than
            ``equal_threshold * |return_scale|``; ``>= 0``, 0 disables it. (B-Pref's code takes
            the signed scale here too, which switches EQUAL off on negative-reward tasks.)
    """

    beta: float = math.inf
    gamma: float = 1.0
    epsilon: float = 0.0
    skip_threshold: float = 0.0
    equal_threshold: float = 0.0

    def __post_init__(self) -> None:
        beta = _check_real("beta", self.beta, "> 0 (math.inf for a deterministic teacher)")
        if not beta > 0:
            raise TeacherConfigError(
                f"TeacherConfig.beta must be > 0 (math.inf for a deterministic teacher), got {beta}"
            )
        gamma = _check_real("gamma", self.gamma, "in (0, 1]")
        if not 0.0 < gamma <= 1.0:
            raise TeacherConfigError(f"TeacherConfig.gamma must be in (0, 1], got {gamma}")
        epsilon = _check_real("epsilon", self.epsilon, "in [0, 1]")
        if not 0.0 <= epsilon <= 1.0:
            raise TeacherConfigError(f"TeacherConfig.epsilon must be in [0, 1], got {epsilon}")
        for name in ("skip_threshold", "equal_threshold"):
            allowed = "finite and >= 0 (a fraction of the teacher's return_scale)"
            value = _check_real(name, getattr(self, name), allowed)
            if not (math.isfinite(value) and value >= 0.0):
                raise TeacherConfigError(f"TeacherConfig.{name} must be {allowed}, got {value}")


TEACHER_PRESETS: dict[str, TeacherConfig] = {
    "oracle": TeacherConfig(),
    "stochastic": TeacherConfig(beta=1.0),
    "myopic": TeacherConfig(gamma=0.9),
    "mistake": TeacherConfig(epsilon=0.1),
    "skip": TeacherConfig(skip_threshold=0.1),
    "equal": TeacherConfig(equal_threshold=0.1),
}


def _default_rater_id(config: TeacherConfig) -> str:
    for name, preset in TEACHER_PRESETS.items():
        if preset == config:
            return f"sim-{name}"
    return "sim-custom"


def _sigmoid(x: float) -> float:
    # tanh form never overflows, unlike 1 / (1 + exp(-x)) for large negative x.
    return 0.5 * (1.0 + math.tanh(0.5 * x))


def _rewards(segment: Segment, side: str) -> np.ndarray:
    rewards = np.asarray(segment.true_rewards, dtype=np.float64)
    if rewards.ndim != 1:
        raise ValueError(
            f"{side} segment's true_rewards must have shape (L,), got {rewards.shape}"
        )
    if not np.all(np.isfinite(rewards)):
        raise ValueError(
            f"{side} segment's true_rewards contain nan or inf; a simulated teacher needs finite "
            "rewards (check the environment's reward)"
        )
    return rewards


class SimulatedTeacher:
    """A B-Pref simulated teacher that labels pairs from true rewards.

    Args:
        config: the teacher's parameters.
        seed: seeds the teacher's own ``np.random.Generator``; the same seed and the same sequence
            of ``compare`` calls give the same answers.
        rater_id: stored with every label; defaults to ``"sim-<preset>"`` when ``config`` equals a
            preset in :data:`TEACHER_PRESETS`, else ``"sim-custom"``.

    ``return_scale`` (default 1.0) multiplies both thresholds. B-Pref sets it to the average true
    return of a segment-length piece of recent episodes (negative on negative-reward tasks); the
    loop calls ``set_return_scale(mean_episode_return * L / mean_episode_length)``.
    """

    def __init__(self, config: TeacherConfig, seed: int = 0, rater_id: str | None = None) -> None:
        if not isinstance(config, TeacherConfig):
            raise TypeError(
                f"config must be a TeacherConfig, got {type(config).__name__}; "
                "use make_teacher(name) to build one from a preset name"
            )
        self.config = config
        self.seed = seed
        self.rater_id = rater_id if rater_id is not None else _default_rater_id(config)
        self._rng = np.random.default_rng(seed)
        self._return_scale = 1.0

    @property
    def return_scale(self) -> float:
        """The return the skip and equal thresholds are fractions of (signed)."""
        return self._return_scale

    def set_return_scale(self, scale: float) -> None:
        """Set the return both thresholds are fractions of (a typical segment's true return)."""
        value = float(scale)
        if not math.isfinite(value):
            raise ValueError(
                f"return_scale must be finite, got {scale!r}; pass the mean true return of a "
                "segment-length piece of recent episodes"
            )
        self._return_scale = value

    def compare(self, left: Segment, right: Segment) -> Choice:
        """Answer which segment is better, from their ``true_rewards`` (both shape ``(L,)``)."""
        r_left = _rewards(left, "left")
        r_right = _rewards(right, "right")
        if r_left.shape != r_right.shape:
            raise ValueError(
                f"left and right segments must have the same length, got {r_left.shape[0]} and "
                f"{r_right.shape[0]}; every segment of a run is cut to the same length L"
            )
        cfg = self.config
        ret_left, ret_right = float(r_left.sum()), float(r_right.sum())

        # A threshold of 0 (or a scale of 0) disables skipping: a pair of negative-return
        # segments must then still be answered, not skipped.
        skip_at = cfg.skip_threshold * self._return_scale
        if skip_at != 0 and max(ret_left, ret_right) < skip_at:
            return Choice.CANT_TELL

        # Always two draws per answered query, so the stream (and thus every later answer) does
        # not depend on which branch an earlier query took.
        u_rational, u_mistake = self._rng.random(2)

        if cfg.gamma < 1.0:
            weights = cfg.gamma ** np.arange(r_left.shape[0] - 1, -1, -1, dtype=np.float64)
            diff = float(weights @ r_right - weights @ r_left)
        else:
            diff = ret_right - ret_left

        if math.isinf(cfg.beta):
            if diff == 0.0:
                choice = Choice.EQUAL
            else:
                choice = Choice.RIGHT if diff > 0 else Choice.LEFT
        else:
            choice = Choice.RIGHT if u_rational < _sigmoid(cfg.beta * diff) else Choice.LEFT

        if choice is not Choice.EQUAL and u_mistake < cfg.epsilon:
            choice = Choice.LEFT if choice is Choice.RIGHT else Choice.RIGHT

        if abs(ret_left - ret_right) < cfg.equal_threshold * abs(self._return_scale):
            choice = Choice.EQUAL
        return choice

    def __repr__(self) -> str:
        return (
            f"SimulatedTeacher(rater_id={self.rater_id!r}, config={self.config}, seed={self.seed}, "
            f"return_scale={self._return_scale})"
        )


def make_teacher(
    name: str, seed: int = 0, *, rater_id: str | None = None, **overrides: float
) -> SimulatedTeacher:
    """Build a simulated teacher from a B-Pref preset name, e.g. ``make_teacher("stochastic")``.

    Args:
        name: a key of :data:`TEACHER_PRESETS`.
        seed: seed of the teacher's random generator.
        rater_id: defaults to ``"sim-<name>"``, with the overrides appended when there are any
            (``"sim-stochastic[beta=0.5]"``).
        **overrides: TeacherConfig fields replacing the preset's, e.g. ``beta=0.5``.
    """
    if name not in TEACHER_PRESETS:
        valid = sorted(TEACHER_PRESETS)
        close = difflib.get_close_matches(str(name), valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TeacherConfigError(
            f"unknown teacher {name!r}; valid names are {', '.join(valid)}.{hint}"
        )
    valid_keys = [f.name for f in fields(TeacherConfig)]
    unknown = sorted(set(overrides) - set(valid_keys))
    if unknown:
        raise TeacherConfigError(
            f"unknown teacher parameter(s) {', '.join(unknown)}; valid keys are "
            f"{', '.join(valid_keys)}"
        )
    config = replace(TEACHER_PRESETS[name], **overrides)
    if rater_id is None:
        rater_id = f"sim-{name}"
        if overrides:
            rater_id += "[" + ",".join(f"{k}={overrides[k]}" for k in sorted(overrides)) + "]"
    return SimulatedTeacher(config, seed=seed, rater_id=rater_id)


def parse_teacher_spec(spec: str) -> tuple[str, dict[str, float]]:
    """A preset name with optional parameter overrides, as sweeps name teachers.

    ``"mistake"`` -> ``("mistake", {})``; ``"mistake:epsilon=0.2"`` -> ``("mistake", {"epsilon": 0.2})``;
    several overrides are separated by commas (``"stochastic:beta=0.5,gamma=0.9"``).

    Raises:
        TeacherConfigError: unknown preset or parameter, a value that is not a number or out of
            range (checked by building the teacher once).
    """
    name, _, params_text = spec.partition(":")
    try:
        params = dict(parse_teacher_param(item) for item in filter(None, (p.strip() for p in params_text.split(","))))
    except TeacherConfigError as exc:
        raise TeacherConfigError(f"teacher {spec!r}: {exc}") from None
    make_teacher(name.strip(), **params)
    return name.strip(), params


def parse_teacher_param(text: str) -> tuple[str, float]:
    """``"epsilon=0.2"`` -> ``("epsilon", 0.2)``; the key is checked when the teacher is built.

    Raises:
        TeacherConfigError: no ``=``, or a value that is not a number.
    """
    key, sep, value = text.partition("=")
    if not sep:
        raise TeacherConfigError(f"expected KEY=VALUE (e.g. epsilon=0.2), got {text!r}")
    try:
        return key.strip(), float(value)
    except ValueError:
        raise TeacherConfigError(f"{key.strip()}={value!r} is not a number") from None


def teacher_spec(name: str, params: dict[str, float]) -> str:
    """The inverse of :func:`parse_teacher_spec`: ``"mistake:epsilon=0.2"``, or just the name."""
    if not params:
        return name
    return name + ":" + ",".join(f"{k}={params[k]:g}" for k in sorted(params))

