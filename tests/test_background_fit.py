"""Reward-model fits in a background process: the same weights as in-process, errors come back,
a dead worker costs a refit and no label, and the worker never outlives its trainer."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from prefloop.reward_models import RewardModelConfig, RewardTrainer, build_reward_model, load_reward_model
from prefloop.store import PreferenceStore, sqlite_url
from prefloop.teachers.crowd import make_crowd_teacher
from prefloop.teachers.labeling import answer_pending
from prefloop.training.background_fit import (
    BACKGROUND_FIT_MIN_STEPS,
    TAKE_BACK_AFTER_STEPS,
    BackgroundFitError,
    BackgroundFitter,
    FitJob,
    fit_on_labels,
    take_fit,
    wants_background_fit,
)
from prefloop.training.config import TrainConfig
from prefloop.training.loop import train
from prefloop.training.report import run_summary_rows
from prefloop.training.schedule import ScheduleConfig, label_rounds
from prefloop.types import LabeledPair, Segment, SegmentPair


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def pendulum_segment(rng: np.random.Generator, index: int, obs_dim: int = 3) -> Segment:
    obs = (rng.normal(size=(10, obs_dim)) + rng.normal()).astype(np.float32)
    actions = rng.uniform(-2, 2, size=(10, 1)).astype(np.float32)
    return Segment(obs, actions, obs[:, 0].copy(), 10, False, index, 0, actions)


def fill_with_crowd_labels(url: str) -> str:
    """60 pairs labelled by a crowd with an adversarial rater (so a fit also estimates raters)."""
    rng = np.random.default_rng(0)
    segments = [pendulum_segment(rng, i) for i in range(120)]
    with PreferenceStore(url, run_name="crowd") as store:
        store.add_pairs([SegmentPair(segments[2 * i], segments[2 * i + 1]) for i in range(60)])
        answer_pending(store, make_crowd_teacher("crowd:3xcareful@0.05,adversarial", seed=0))
    return url


@pytest.fixture
def crowd_store(store_url: str) -> str:
    """On SQLite and on PostgreSQL: the worker reads the labels from the store itself."""
    return fill_with_crowd_labels(store_url)


@pytest.fixture
def sqlite_crowd_store(tmp_path: Path) -> str:
    return fill_with_crowd_labels(sqlite_url(tmp_path / "prefs.sqlite"))


def new_trainer() -> RewardTrainer:
    env = gym.make("Pendulum-v1")
    config = RewardModelConfig(hidden_sizes=(16,), epochs=20)
    return RewardTrainer(build_reward_model(env.observation_space, env.action_space, config), config)


def assert_same_trainer(a: RewardTrainer, b: RewardTrainer) -> None:
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), name
    state_a, state_b = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        for name in state_a[key]:
            assert torch.equal(state_a[key][name], state_b[key][name]), (key, name)
    assert a.counters() == b.counters()
    assert a.rater_estimates == b.rater_estimates


def test_a_fit_in_the_worker_equals_one_in_process_bit_for_bit(crowd_store: str) -> None:
    """Two fits in a row (the second warm-started, with the raters' estimates of the first):
    weights, scale, Adam moments, counters, rater estimates and stats all identical; then a fit
    that fails raises the same error in the trainer, and the worker takes the next job."""
    here, there = new_trainer(), new_trainer()
    assert_same_trainer(here, there)
    fitter = BackgroundFitter(crowd_store, "crowd", torch_threads=1)
    try:
        with PreferenceStore(crowd_store, run_name="crowd", read_only=True) as store:
            labeled = store.labeled_pairs()
        for _ in range(2):
            expected = fit_on_labels(here, labeled, [], None, reference_pairs=20)
            fitter.submit(FitJob(there, [], None, reference_pairs=20))
            outcome = fitter.result()
            take_fit(there, outcome.trainer)
            assert outcome.fit == expected
            assert outcome.n_labeled == len(labeled) == 60
            assert_same_trainer(here, there)
        assert here.rater_estimates and any(e.flagged for e in here.rater_estimates)
        assert float(there.model.reward_scale) != 1.0  # rescaled on the reference set in the worker
        # the trainer's own model object is the one that changed (the env's reward holds it)
        assert there.optimizer.param_groups[0]["params"][0] is next(there.model.parameters())

        # An error in the fit is raised in the trainer as in-process, and the worker goes on.
        rng = np.random.default_rng(1)
        wrong = LabeledPair(pendulum_segment(rng, 0, obs_dim=5), pendulum_segment(rng, 1, obs_dim=5), 1.0, pair_id=None)
        with pytest.raises(ValueError) as in_process:
            fit_on_labels(new_trainer(), labeled, [wrong], None, 20)
        fitter.submit(FitJob(there, [wrong], None, 20))
        with pytest.raises(ValueError) as in_worker:
            fitter.result()
        assert str(in_worker.value) == str(in_process.value)
        fitter.submit(FitJob(there, [], None, 20))
        assert fitter.result().n_labeled == 60
    finally:
        fitter.close()


def test_the_worker_ends_when_its_trainer_is_killed(sqlite_crowd_store: str, tmp_path: Path) -> None:
    """kill -9 of the trainer's process: the worker sees its pipe close and exits (no orphan)."""
    script = (
        "import sys, time\n"
        "from prefloop.training.background_fit import BackgroundFitter\n"
        f"fitter = BackgroundFitter({sqlite_crowd_store!r}, 'crowd', 1)\n"
        "print(fitter.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    trainer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    worker = -1
    try:
        worker = int(trainer.stdout.readline())  # type: ignore[union-attr]
        os.kill(trainer.pid, signal.SIGKILL)
        trainer.wait(timeout=10)
        deadline = time.monotonic() + 60  # the worker may still be importing torch when its trainer dies
        while time.monotonic() < deadline and _alive(worker):
            time.sleep(0.2)
        assert not _alive(worker), f"background fit process {worker} outlived its trainer"
    finally:
        trainer.kill()
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)


def test_fits_go_to_the_worker_once_it_says_it_is_ready(sqlite_crowd_store: str) -> None:
    """Until the worker has imported torch and opened the store, a fit sent to it would make the
    policy wait longer than fitting in the trainer's process: the learner asks ``ready()`` first."""
    fitter = BackgroundFitter(sqlite_crowd_store, "crowd", 1)
    try:
        assert not fitter.ready()  # just started: still importing
        assert fitter.ready(timeout=120)
        fitter.submit(FitJob(new_trainer(), [], None, 20))
        assert fitter.result().n_labeled == 60
        assert fitter.ready()
    finally:
        fitter.close()
    dead = BackgroundFitter(sqlite_crowd_store, "crowd", 1)
    try:
        os.kill(dead.pid, signal.SIGKILL)
        with pytest.raises(BackgroundFitError, match="background fit process ended"):
            dead.ready(timeout=30)  # the learner warns once and fits in its own process from then on
    finally:
        dead.close()


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def cartpole_run(tmp_path: Path, name: str, background: bool) -> TrainConfig:
    return TrainConfig(env_id="CartPole-v1", run_dir=tmp_path / name, steps=8_192, labels=16, seed=3,
                       algo_kwargs={"n_steps": 256}, eval_episodes=3, progress_bar=False, background_fit=background)


@pytest.mark.slow
def test_a_ppo_run_computes_the_same_with_background_fits_even_if_the_worker_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """Its first background fit (the first round's, while the first rollout is collected) comes back
    from the worker; at the second the worker is killed, and that fit and the rest are done in the
    trainer's process: the run is the in-process one, bit for bit."""
    import prefloop.training.loop as loop_module

    with caplog.at_level(logging.INFO, logger="prefloop"):
        here = train(cartpole_run(tmp_path, "here", background=False))
    assert here.background_fit_s == 0
    initial_round_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("initial round:")]
    assert len(initial_round_lines) == 1
    caplog.clear()

    submitted = BackgroundFitter.submit
    submits: list[int] = []

    def submit_then_die_at_the_second(self: BackgroundFitter, job: FitJob) -> None:
        submitted(self, job)
        submits.append(self.pid)
        if len(submits) == 2:
            os.kill(self.pid, signal.SIGKILL)

    start_fitter = loop_module.start_background_fitter

    def start_fitter_and_wait_until_ready(*args: object) -> BackgroundFitter | None:
        fitter = start_fitter(*args)  # type: ignore[arg-type]
        assert fitter is not None and fitter.ready(timeout=120)  # else the first fit is done in-process
        return fitter

    first_labels = loop_module.first_labels
    submits_after_first_labels: list[int] = []

    def recording_first_labels(*args: object) -> bool:
        pending = first_labels(*args)  # type: ignore[arg-type]
        submits_after_first_labels.append(len(submits))
        return pending

    monkeypatch.setattr(BackgroundFitter, "submit", submit_then_die_at_the_second)
    monkeypatch.setattr(loop_module, "first_labels", recording_first_labels)
    monkeypatch.setattr(loop_module, "start_background_fitter", start_fitter_and_wait_until_ready)
    with caplog.at_level(logging.INFO, logger="prefloop"):
        there = train(cartpole_run(tmp_path, "there", background=True))
    assert len(submits) == 2, "the run should have sent two fits to the worker, the second one in vain"
    assert submits_after_first_labels == [1]  # the first round's fit went out before the policy trained
    # ... and when it came back it was logged as the first round, as on the spot:
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("initial round:")] == initial_round_lines
    assert there.background_fit_s > 0  # the first came back from the worker
    assert "in a second process" in dict(run_summary_rows(there))["time in reward learning"]
    assert "second process" not in dict(run_summary_rows(here))["time in reward learning"]
    assert any("background fit process ended" in r.getMessage() and "no label is lost" in r.getMessage()
               for r in caplog.records)

    assert there.eval_returns == here.eval_returns
    assert json.dumps(there.reward_model) == json.dumps(here.reward_model)  # the last fit's stats (NaN != NaN)
    assert there.curve == here.curve
    assert there.labels_used == here.labels_used == there.labels_fitted == 16
    weights = [load_reward_model(_last_checkpoint(tmp_path / name) / "reward_model").state_dict() for name in ("here", "there")]
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key


@pytest.mark.slow
def test_short_rollouts_take_a_fit_back_2048_steps_on_whoever_fitted_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rollouts of 512 env steps: a warm fit (of a model fitted on warm_after_labels labels) is taken
    back at the first rollout end at least TAKE_BACK_AFTER_STEPS after it was sent, others at the
    next rollout end, so the run is the same whether the worker fitted or, never ready, the
    trainer's process did."""
    from prefloop.training.callbacks import PreferenceCallback

    finish = PreferenceCallback.finish_pending_fit
    take_backs: list[tuple[int, int, bool]] = []  # (sent at, taken back at, first round's)

    def recording_finish(self: PreferenceCallback, checkpoint: bool = True) -> None:
        sent_at = self.learner.fit_started_at
        if sent_at is not None and checkpoint:  # not the end of training's
            take_backs.append((sent_at, self.step_offset + self.num_timesteps, self._initial_fit_pending))
        finish(self, checkpoint)

    def config(name: str, warm_after_labels: int = 6) -> TrainConfig:
        # Rounds 2,458 steps apart (6 of them over 90% of the run): the take-back comes before the
        # next. Fits are warm from the second round's on (the first round: 6 labels).
        return TrainConfig(env_id="CartPole-v1", run_dir=tmp_path / name, steps=16_384, labels=24, seed=5,
                           schedule=ScheduleConfig(rounds=6), algo_kwargs={"n_steps": 64}, n_envs=8,
                           eval_episodes=3, progress_bar=False, reward_model=RewardModelConfig(warm_after_labels=warm_after_labels),
                           background_fit=True)  # on by default from 20,000 steps; a shorter test run asks

    def run(name: str, warm_after_labels: int = 6) -> object:
        return train(config(name, warm_after_labels))

    import prefloop.training.loop as loop_module

    start_fitter = loop_module.start_background_fitter

    def start_fitter_and_wait_until_ready(*args: object) -> BackgroundFitter | None:
        fitter = start_fitter(*args)  # type: ignore[arg-type]
        assert fitter is not None and fitter.ready(timeout=120)
        return fitter

    monkeypatch.setattr(PreferenceCallback, "finish_pending_fit", recording_finish)
    monkeypatch.setattr(loop_module, "start_background_fitter", start_fitter_and_wait_until_ready)
    in_worker = run("worker")
    worker_take_backs = list(take_backs)
    assert in_worker.background_fit_s > 0
    take_backs.clear()
    monkeypatch.setattr(loop_module, "start_background_fitter", start_fitter)
    monkeypatch.setattr(BackgroundFitter, "ready", lambda self, timeout=0: False)  # never ready: fits here
    here = run("here")
    assert here.background_fit_s == 0

    assert take_backs == worker_take_backs
    first, *later = take_backs
    assert first[2] and first[1] - first[0] <= 512  # the first round's: at the first rollout's end
    assert later and all(not initial for _, _, initial in later)
    # At the first rollout end 2,048 steps on, or earlier only where the next round was due (its
    # pairs are chosen by the newest model): never at the next rollout's end as with long rollouts.
    resolved = config("rounds").resolve()
    round_steps = [r.at_step for r in label_rounds(resolved.labels, resolved.steps, resolved.schedule)[1:]]
    for sent, taken, _ in later:
        round_due = any(sent < at_step <= taken for at_step in round_steps)
        assert TAKE_BACK_AFTER_STEPS <= taken - sent < TAKE_BACK_AFTER_STEPS + 512 or round_due, (sent, taken)
    assert sum(taken - sent >= TAKE_BACK_AFTER_STEPS for sent, taken, _ in later) >= 4
    take_backs.clear()
    run("cold", warm_after_labels=50)  # no fit is warm: each taken back at the next rollout's end
    assert len(take_backs) >= 6 and all(0 < taken - sent <= 512 for sent, taken, _ in take_backs), take_backs

    assert here.eval_returns == in_worker.eval_returns
    assert here.curve == in_worker.curve
    assert here.labels_fitted == in_worker.labels_fitted == 24
    weights = [load_reward_model(_last_checkpoint(tmp_path / name) / "reward_model").state_dict() for name in ("here", "worker")]
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key


def _last_checkpoint(run_dir: Path) -> Path:
    return max(p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step-") and "." not in p.name)


def test_background_fits_by_default_where_the_worker_pays_and_people_do_not_pace_the_policy(tmp_path: Path) -> None:
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.env_util import make_vec_env

    def wanted(model: object, steps: int, background_fit: bool | None = None, people: bool = False) -> bool:
        config = TrainConfig(env_id="CartPole-v1", run_dir=tmp_path, steps=steps, background_fit=background_fit)
        return wants_background_fit(config, model, teacher_answers_at_once=not people)  # type: ignore[arg-type]

    envs = make_vec_env("CartPole-v1", n_envs=8)
    long_rollouts = PPO("MlpPolicy", envs, n_steps=TAKE_BACK_AFTER_STEPS // 8)
    short_rollouts = PPO("MlpPolicy", envs, n_steps=32)  # CartPole's preset: a fit outlasts rollout and update
    assert wanted(long_rollouts, BACKGROUND_FIT_MIN_STEPS)
    assert not wanted(long_rollouts, BACKGROUND_FIT_MIN_STEPS - 1)  # the worker's start would cost more
    assert wanted(long_rollouts, 150_000, people=True)  # the same run as on the spot, whoever answers
    assert wanted(short_rollouts, 150_000)  # a simulated teacher: warm fits taken back 2,048 steps on
    assert not wanted(short_rollouts, 150_000, people=True)  # people pace the policy: fits on the spot
    assert not wanted(short_rollouts, BACKGROUND_FIT_MIN_STEPS - 1)
    assert wanted(short_rollouts, 1000, background_fit=True, people=True)  # asked for
    assert not wanted(long_rollouts, 150_000, background_fit=False)
    sac = SAC("MlpPolicy", "Pendulum-v1", buffer_size=1000)
    assert not wanted(sac, 150_000, background_fit=True)  # reads the reward at every step
    data = TrainConfig(env_id="CartPole-v1", run_dir=tmp_path).resolve().to_json()
    assert data["background_fit"] is None  # decided when the run starts
    del data["background_fit"]  # a config.json written before the setting
    assert TrainConfig.from_json(data).background_fit is None


def test_a_replay_of_a_peoples_run_counts_as_people(tmp_path: Path) -> None:
    """A recorded teacher replaying people's run answers at once, as a simulated teacher does, but
    the run it replays was people's (gold pairs asked; fits timed as people's runs time them)."""
    from prefloop.envs import SegmentBuffer
    from prefloop.teachers import make_teacher
    from prefloop.training.learner import PreferenceLearner

    class ReplayOf:  # what a RecordedTeacher shows of the run it replays
        rater_id = "recorded"

        def __init__(self, recorded_teacher: str) -> None:
            self.recorded_config = {"teacher": recorded_teacher}

        def compare(self, left: Segment, right: Segment) -> str:
            return "left"

    config = TrainConfig(env_id="Pendulum-v1", run_dir=tmp_path, labels=20, steps=10_000).resolve()
    space = gym.spaces.Box(-np.inf, np.inf, shape=(3,), dtype=np.float32)
    model = build_reward_model(space, gym.spaces.Box(-2.0, 2.0, shape=(1,), dtype=np.float32), config.reward_model)
    with PreferenceStore(sqlite_url(tmp_path / "prefs.sqlite"), run_name="r") as store:
        def people_answered(teacher: object) -> bool:
            return PreferenceLearner(config, store, model, SegmentBuffer(10), teacher).people_answered  # type: ignore[arg-type]

        assert people_answered(None)
        assert people_answered(ReplayOf("human"))
        assert not people_answered(ReplayOf("oracle"))
        assert not people_answered(make_teacher("oracle"))


def test_no_second_process_means_fitting_in_the_trainers_own(
    sqlite_crowd_store: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    from prefloop.training.background_fit import start_background_fitter

    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with caplog.at_level(logging.WARNING, logger="prefloop"):
        assert start_background_fitter(sqlite_crowd_store, "crowd", 1) is None
    assert [r.getMessage() for r in caplog.records if "could not start the background fit process" in r.getMessage()]
