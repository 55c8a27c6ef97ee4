"""Simulated teachers: B-Pref's oracle, stochastic, myopic, mistake, skip and equal behaviours."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from prefloop.teachers import (
    TEACHER_PRESETS,
    SimulatedTeacher,
    Teacher,
    TeacherConfig,
    TeacherConfigError,
    make_teacher,
)
from prefloop.types import Choice, Segment


def seg(rewards: list[float] | np.ndarray) -> Segment:
    """A segment whose only interesting content is its true rewards."""
    r = np.asarray(rewards, dtype=np.float32)
    length = r.shape[0]
    return Segment(
        obs=np.zeros((length, 2), dtype=np.float32),
        actions=np.zeros(length, dtype=np.int64),
        true_rewards=r,
        n_valid=length,
        terminated=False,
        episode_seed=0,
        start_step=0,
        episode_actions=np.zeros(length, dtype=np.int64),
    )


def flat(total: float, length: int = 5) -> Segment:
    return seg(np.full(length, total / length))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_simulated_teacher_is_a_teacher() -> None:
    assert isinstance(make_teacher("oracle"), Teacher)


def test_oracle_prefers_higher_return_and_ties_are_equal() -> None:
    teacher = make_teacher("oracle")
    assert teacher.compare(flat(1.0), flat(2.0)) is Choice.RIGHT
    assert teacher.compare(flat(2.0), flat(1.0)) is Choice.LEFT
    assert teacher.compare(flat(-3.0), flat(-1.0)) is Choice.RIGHT
    assert teacher.compare(seg([1, 0, 0]), seg([0, 0, 1])) is Choice.EQUAL


@pytest.mark.parametrize(
    ("beta", "gamma", "left", "right"),
    [
        (1.0, 1.0, [0.0, 0.0, 0.0, 0.0], [0.1, 0.1, 0.2, 0.1]),  # dR = 0.5
        (1.0, 1.0, [0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 0.5]),  # dR = -1.5
        (2.0, 1.0, [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.25]),  # beta * dR = 0.5
        # Stochastic choice on the myopic returns: weights 0.125, 0.25, 0.5, 1.
        (1.0, 0.5, [2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.5]),  # dR' = 0.5 - 0.25
    ],
)
def test_stochastic_teacher_follows_bradley_terry(beta, gamma, left, right) -> None:
    teacher = SimulatedTeacher(TeacherConfig(beta=beta, gamma=gamma), seed=3)
    weights = gamma ** np.arange(len(left) - 1, -1, -1)
    p_right = sigmoid(beta * float(weights @ np.asarray(right) - weights @ np.asarray(left)))
    answers = [teacher.compare(seg(left), seg(right)) for _ in range(4000)]
    assert set(answers) <= {Choice.LEFT, Choice.RIGHT}
    freq = sum(a is Choice.RIGHT for a in answers) / len(answers)
    assert abs(freq - p_right) < 0.03


def test_myopic_teacher_prefers_late_rewards() -> None:
    early_big = seg([3.0] + [0.0] * 9)  # undiscounted 3, myopic 3 * 0.9**9 = 1.16
    late_small = seg([0.0] * 8 + [1.0, 1.0])  # undiscounted 2, myopic 1 + 0.9 = 1.9
    assert make_teacher("oracle").compare(early_big, late_small) is Choice.LEFT
    myopic = make_teacher("myopic")
    assert myopic.compare(early_big, late_small) is Choice.RIGHT
    assert myopic.compare(late_small, early_big) is Choice.LEFT


def test_myopic_weight_of_first_step_is_gamma_to_the_l_minus_1() -> None:
    teacher = make_teacher("myopic", gamma=0.5)
    first = seg([1.0, 0.0, 0.0, 0.0])  # myopic return 0.5**3 = 0.125
    assert teacher.compare(first, seg([0.0, 0.0, 0.0, 0.12])) is Choice.LEFT
    assert teacher.compare(first, seg([0.0, 0.0, 0.0, 0.13])) is Choice.RIGHT


def test_mistake_rate_matches_epsilon() -> None:
    teacher = make_teacher("mistake", seed=1)
    answers = [teacher.compare(flat(1.0), flat(2.0)) for _ in range(4000)]
    wrong = sum(a is Choice.LEFT for a in answers) / len(answers)
    assert abs(wrong - 0.1) < 0.02
    assert set(answers) == {Choice.LEFT, Choice.RIGHT}


def test_mistake_never_turns_equal_or_cant_tell_into_a_preference() -> None:
    always_wrong = SimulatedTeacher(TeacherConfig(epsilon=1.0, skip_threshold=0.5))
    assert always_wrong.compare(flat(1.0), flat(2.0)) is Choice.LEFT
    assert always_wrong.compare(flat(1.0), flat(1.0)) is Choice.EQUAL
    assert always_wrong.compare(flat(0.1), flat(0.2)) is Choice.CANT_TELL
    with_equal = SimulatedTeacher(TeacherConfig(epsilon=1.0, equal_threshold=0.5))
    assert with_equal.compare(flat(1.0), flat(1.2)) is Choice.EQUAL


def test_skip_teacher_skips_low_return_pairs_and_answers_others() -> None:
    teacher = make_teacher("skip")  # threshold 0.1 * return_scale 1.0
    assert teacher.compare(flat(0.05), flat(0.0)) is Choice.CANT_TELL
    assert teacher.compare(flat(-2.0), flat(-1.0)) is Choice.CANT_TELL
    assert teacher.compare(flat(0.0), flat(0.2)) is Choice.RIGHT
    assert teacher.compare(flat(0.2), flat(0.0)) is Choice.LEFT


def test_zero_skip_threshold_still_answers_negative_returns() -> None:
    teacher = make_teacher("skip")
    teacher.set_return_scale(0.0)
    assert teacher.compare(flat(-2.0), flat(-1.0)) is Choice.RIGHT


def test_equal_teacher_uses_undiscounted_margin() -> None:
    teacher = make_teacher("equal")  # threshold 0.1
    assert teacher.compare(flat(1.0), flat(1.05)) is Choice.EQUAL
    assert teacher.compare(flat(1.0), flat(1.2)) is Choice.RIGHT
    myopic_equal = make_teacher("equal", gamma=0.5)
    # Myopic returns differ a lot (0.125 vs 1), undiscounted returns are equal.
    assert myopic_equal.compare(seg([1, 0, 0, 0]), seg([0, 0, 0, 1])) is Choice.EQUAL


def test_return_scale_scales_both_thresholds() -> None:
    equal = make_teacher("equal")
    assert equal.compare(flat(1.0), flat(1.5)) is Choice.RIGHT
    equal.set_return_scale(-10.0)  # margin 0.1 * |-10| = 1.0
    assert equal.return_scale == -10.0
    assert equal.compare(flat(1.0), flat(1.5)) is Choice.EQUAL

    skip = make_teacher("skip")
    assert skip.compare(flat(0.5), flat(0.0)) is Choice.LEFT
    skip.set_return_scale(10.0)
    assert skip.compare(flat(0.5), flat(0.0)) is Choice.CANT_TELL
    assert skip.compare(flat(1.5), flat(0.0)) is Choice.LEFT


def test_skip_on_negative_rewards_skips_only_pairs_that_are_both_poor() -> None:
    # Pendulum-like: a typical segment returns -150, so the threshold is 0.1 * -150 = -15.
    skip = make_teacher("skip")
    skip.set_return_scale(-150.0)
    assert skip.compare(flat(-100.0), flat(-40.0)) is Choice.CANT_TELL
    assert skip.compare(flat(-100.0), flat(-5.0)) is Choice.RIGHT
    assert skip.compare(flat(-2.0), flat(-1.0)) is Choice.RIGHT


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_return_scale_must_be_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="return_scale"):
        make_teacher("skip").set_return_scale(bad)


def test_same_seed_same_answers_different_seed_different_answers() -> None:
    rng = np.random.default_rng(0)
    pairs = [(seg(rng.normal(size=5)), seg(rng.normal(size=5))) for _ in range(200)]

    def answers(seed: int) -> list[Choice]:
        teacher = make_teacher("stochastic", seed=seed, epsilon=0.2)
        return [teacher.compare(a, b) for a, b in pairs]

    assert answers(7) == answers(7)
    assert answers(7) != answers(8)


def test_segments_of_different_length_are_rejected() -> None:
    with pytest.raises(ValueError, match="same length"):
        make_teacher("oracle").compare(flat(1.0, length=5), flat(1.0, length=6))


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("beta", 0.0),
        ("beta", -1.0),
        ("beta", math.nan),
        ("beta", "high"),
        ("gamma", 0.0),
        ("gamma", 1.5),
        ("gamma", math.nan),
        ("epsilon", -0.1),
        ("epsilon", 1.1),
        ("skip_threshold", -0.5),
        ("skip_threshold", math.inf),
        ("equal_threshold", math.nan),
        ("equal_threshold", -1e-3),
        ("equal_threshold", True),
    ],
)
def test_invalid_parameter_is_named_in_the_error(param: str, value: object) -> None:
    with pytest.raises(TeacherConfigError) as info:
        TeacherConfig(**{param: value})
    message = str(info.value)
    assert param in message
    assert str(value) in message or repr(value) in message
    with pytest.raises(TeacherConfigError, match=param):
        make_teacher("oracle", **{param: value})


def test_presets_are_b_prefs() -> None:
    assert TEACHER_PRESETS["oracle"] == TeacherConfig()
    assert TEACHER_PRESETS["stochastic"].beta == 1.0
    assert TEACHER_PRESETS["myopic"].gamma == 0.9
    assert TEACHER_PRESETS["mistake"].epsilon == 0.1
    assert TEACHER_PRESETS["skip"].skip_threshold == 0.1
    assert TEACHER_PRESETS["equal"].equal_threshold == 0.1


def test_make_teacher_overrides_and_rater_ids() -> None:
    teacher = make_teacher("stochastic", beta=0.5)
    assert teacher.config == TeacherConfig(beta=0.5)
    assert teacher.rater_id == "sim-stochastic[beta=0.5]"
    assert make_teacher("myopic").rater_id == "sim-myopic"
    assert make_teacher("oracle", rater_id="bot-1").rater_id == "bot-1"
    assert SimulatedTeacher(TeacherConfig(epsilon=0.1)).rater_id == "sim-mistake"
    assert SimulatedTeacher(TeacherConfig(epsilon=0.3)).rater_id == "sim-custom"


def test_make_teacher_unknown_name_suggests_close_match() -> None:
    with pytest.raises(TeacherConfigError) as info:
        make_teacher("stochastc")
    message = str(info.value)
    assert "Did you mean 'stochastic'?" in message
    for name in TEACHER_PRESETS:
        assert name in message
    with pytest.raises(TeacherConfigError) as info:
        make_teacher("zzzz")
    assert "Did you mean" not in str(info.value)


def test_make_teacher_unknown_override_lists_valid_keys() -> None:
    with pytest.raises(TeacherConfigError) as info:
        make_teacher("oracle", temperature=2.0)
    message = str(info.value)
    assert "temperature" in message
    for key in ("beta", "gamma", "epsilon", "skip_threshold", "equal_threshold"):
        assert key in message


def test_teacher_specs_name_a_preset_with_overrides_and_round_trip() -> None:
    from prefloop.teachers import parse_teacher_spec, teacher_spec

    assert parse_teacher_spec("mistake") == ("mistake", {})
    assert parse_teacher_spec("stochastic:beta=0.5, gamma=0.9") == ("stochastic", {"beta": 0.5, "gamma": 0.9})
    assert teacher_spec(*parse_teacher_spec("stochastic:gamma=0.9,beta=0.5")) == "stochastic:beta=0.5,gamma=0.9"
    for bad, words in [("mistke", "Did you mean 'mistake'"), ("mistake:eps=0.2", "valid keys"),
                       ("mistake:epsilon", "KEY=VALUE"), ("mistake:epsilon=x", "not a number"), ("mistake:epsilon=2", "[0, 1]")]:
        with pytest.raises(TeacherConfigError, match=re.escape(words)):
            parse_teacher_spec(bad)
