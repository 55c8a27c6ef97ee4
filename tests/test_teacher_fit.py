"""Fitted teacher models: B-Pref's parameters recovered by maximum likelihood from a rater's labels,
`prefloop raters fit` on a real run, and a fitted teacher replaying a rater in `train`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from prefloop.cli.main import main
from prefloop.store import PreferenceStore, sqlite_url
from prefloop.teachers import SimulatedTeacher, TeacherConfig, TeacherConfigError
from prefloop.teachers.fitted import (
    RaterAnswers,
    fit_rater,
    fits_document,
    load_fit,
    make_fitted_teacher,
)
from prefloop.types import Segment

L = 10


def segments(n: int, rng: np.random.Generator, offset: float = 0.0, scale: float = 1.0) -> list[Segment]:
    """Segments whose per-step rewards have a level, a trend (so myopia shows) and noise; return
    differences are about ``4 * scale`` apart."""
    out = []
    for i in range(n):
        rewards = offset + scale * (rng.normal(0, 0.3) + rng.normal(0, 0.5) * np.linspace(-1, 1, L) + rng.normal(0, 0.1, size=L))
        zeros = np.zeros(L, dtype=np.int64)
        out.append(Segment(obs=np.zeros((L, 1), np.float32), actions=zeros, true_rewards=rewards.astype(np.float32),
                           n_valid=L, terminated=False, episode_seed=i, start_step=0, episode_actions=zeros))
    return out


def answers_of(config: TeacherConfig, n_pairs: int, seed: int, offset: float = 0.0) -> RaterAnswers:
    """A simulated rater's answers on pairs whose return differences are a few ``1 / beta`` apart
    (where answers tell how rational the rater is: far apart, every beta answers alike)."""
    rng = np.random.default_rng(seed)
    segs = segments(2 * n_pairs, rng, offset, scale=0.5 / config.beta if math.isfinite(config.beta) else 1.0)
    teacher = SimulatedTeacher(config, seed=seed, rater_id="r")
    # As the loop does: the thresholds are fractions of a typical segment's return.
    teacher.set_return_scale(float(np.mean([s.true_return for s in segs])))
    return RaterAnswers.from_pairs("r", [(segs[2 * i], segs[2 * i + 1], teacher.compare(segs[2 * i], segs[2 * i + 1]))
                                         for i in range(n_pairs)])


@pytest.mark.parametrize("beta, epsilon", [(1.0, 0.1), (0.5, 0.2), (2.0, 0.05), (1.0, 0.0)])
def test_fit_recovers_beta_and_epsilon(beta: float, epsilon: float) -> None:
    fit = fit_rater(answers_of(TeacherConfig(beta=beta, epsilon=epsilon), 600, seed=int(beta * 10 + epsilon * 100)), bootstrap=0)
    assert abs(fit.epsilon.value - epsilon) <= 0.07
    assert beta / 1.5 <= fit.beta.value <= beta * 1.5
    assert fit.gamma.value == 1.0  # not myopic: the likelihood-ratio test keeps gamma = 1
    assert fit.skip_threshold.value == fit.equal_threshold.value == 0.0  # never skipped nor said equal


def test_fit_recovers_myopia_and_the_thresholds_with_intervals() -> None:
    myopic = fit_rater(answers_of(TeacherConfig(beta=1.0, epsilon=0.05, gamma=0.8), 600, seed=1), bootstrap=0)
    assert abs(myopic.gamma.value - 0.8) <= 0.08
    true = TeacherConfig(beta=1.0, epsilon=0.1, skip_threshold=0.8, equal_threshold=0.1)
    fit = fit_rater(answers_of(true, 600, seed=2, offset=1.0), bootstrap=30)
    assert fit.skipped > 0 and fit.equal > 0
    assert abs(fit.skip_threshold.value - 0.8) <= 0.1
    assert abs(fit.equal_threshold.value - 0.1) <= 0.03
    for name in ("beta", "epsilon", "skip_threshold", "equal_threshold"):
        estimate = getattr(fit, name)
        assert estimate.low <= estimate.value <= estimate.high, name
    assert fit.epsilon.low <= 0.1 + 0.03 and fit.epsilon.high >= 0.1 - 0.03


def test_a_fit_round_trips_through_json_into_a_teacher(tmp_path: Path) -> None:
    fit = fit_rater(answers_of(TeacherConfig(beta=1.0, epsilon=0.1), 200, seed=3), bootstrap=5)
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(fits_document([fit], "test")))
    assert load_fit(path, "r") == load_fit(path, None)
    teacher = make_fitted_teacher(f"fitted:{path},rater=r", seed=0)
    assert teacher.rater_id == "fitted-r"
    assert teacher.config == fit.teacher_config()
    with pytest.raises(TeacherConfigError, match="no rater 'bob'"):
        make_fitted_teacher(f"fitted:{path},rater=bob")
    with pytest.raises(TeacherConfigError, match="cannot read"):
        make_fitted_teacher(f"fitted:{tmp_path / 'missing.json'}")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(TeacherConfigError, match="not a rater fit"):
        make_fitted_teacher(f"fitted:{tmp_path / 'other.json'}")


@pytest.mark.slow
def test_raters_fit_on_a_crowd_run_and_a_fitted_teacher_runs_in_train(tmp_path: Path, capsys) -> None:
    crowd = tmp_path / "crowd"
    assert main(["train", "--env", "Pendulum-v1", "--teacher", "crowd:2xcareful@0.1,adversarial", "--labels", "60",
                 "--steps", "3000", "--run-dir", str(crowd), "--no-progress", "--eval-episodes", "1"]) == 0
    fit_json = tmp_path / "fits.json"
    assert main(["raters", "fit", "--run-dir", str(crowd), "--bootstrap", "20", "--json", str(fit_json)]) == 0
    out = capsys.readouterr().out
    assert "sim-adversarial-1" in out and "epsilon" in out
    fits = json.loads(fit_json.read_text())["raters"]
    assert set(fits) == {"sim-careful-1", "sim-careful-2", "sim-adversarial-1"}
    assert fits["sim-adversarial-1"]["epsilon"]["value"] > 0.8
    assert all(fits[f"sim-careful-{i}"]["epsilon"]["value"] < 0.35 for i in (1, 2))

    replay = tmp_path / "replay"
    assert main(["train", "--env", "Pendulum-v1", "--teacher", f"fitted:{fit_json},rater=sim-careful-1", "--labels", "30",
                 "--steps", "2000", "--run-dir", str(replay), "--no-progress", "--eval-episodes", "1"]) == 0
    run_name = json.loads((replay / "config.json").read_text())["run_name"]
    with PreferenceStore(sqlite_url(replay / "prefs.sqlite"), run_name=run_name) as store:
        labels = store.labels()
    assert len(labels) == 30 and {label.rater_id for label in labels} == {"fitted-sim-careful-1"}


def test_raters_fit_refuses_a_missing_run_in_one_line(tmp_path: Path, capsys) -> None:
    assert main(["raters", "fit", "--run-dir", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no prefs.sqlite" in err
    with pytest.raises(SystemExit) as exit_info:  # refused by argparse, before anything runs
        main(["train", "--teacher", "fitted:" + str(tmp_path / "none.json"), "--run-dir", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    assert "cannot read the rater fit" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
