"""Fitting the reward model in a second process while the policy collects its next rollout.

Christiano et al. ran the reward model's training asynchronously from the policy's. Here the
asynchrony changes nothing the run computes: an on-policy learner (PPO, A2C) gets a rollout's learned
rewards only at the rollout's end (``VecLearnedReward.defer``), so a fit started at one rollout's
end and taken back at the next rollout's end, before that rollout's rewards are computed
(``FinishFitCallback``), gives the policy exactly the rewards a fit done on the spot would have
given it. The fit runs the same code on a pickled copy of the trainer with the same torch threads,
so its weights are the same bit for bit (``tests/test_background_fit.py``). What changes is the
wall time: where a core is free the policy no longer waits on the fit.

Where rollouts are shorter than :data:`TAKE_BACK_AFTER_STEPS` env steps (CartPole's preset: 8 envs x
32 steps), a fit outlasts the next rollout and its update, and taking it back there would only make
the policy wait for it. There a *warm* fit -- one that starts from a model already fitted on
``warm_after_labels`` labels (50), which a round's few new labels move little -- is taken back at
the first rollout end at least :data:`TAKE_BACK_AFTER_STEPS` env steps after it was sent: the
rollouts in between get their rewards from the model before it, as in Christiano et al.'s
asynchronous training. That is a different run from the one fitting on the spot, but the same one
every time: where the take-back falls is counted in env steps, never in seconds, so it does not
depend on how fast the worker is (a fit done in the trainer's process while the worker starts is
held back just the same). Fits of a model that has seen fewer labels, where each label moves it and
the first models decide what the policy learns, are taken back at the next rollout end, as is a fit
pending when the next round is due. (Holding back every fit cost CartPole 2 of 5 seeds at 50
labels, 356 and 308 against 500: docs/benchmarks.md.) This is the default on short rollouts when a
simulated teacher answers in the trainer's process, where the run's wall time is the CPU's (measured
on CartPole with a free core: wall-time ratio 1.12 -> 0.98, reward learning 13% -> 7% of the run;
at 100 labels 13 of 15 seeds reached 488-500, against 15 of 15 at 500 on the spot:
docs/benchmarks.md); where people answer, the policy is paced by their answers and fits stay on
the spot.

The worker (:mod:`prefloop.training.fit_worker`) reads the labelled pairs from the run's store
itself (an image env's segments are not copied through a pipe every round) and gets the trainer
(weights, Adam state, counters, rater estimates) and SURF's pseudo-labels through a pipe; it sends
the fitted trainer back. Nothing lives only in the worker: labels are in the store and the trainer
comes back whole, so a worker that dies costs a refit in the trainer's process, never a label.

The first round's fit goes there too (with a simulated teacher) when the worker is ready: the
policy has not trained yet, and nothing reads the model before the first rollout's end. The worker
is a fresh interpreter started with the run (its imports, a few CPU-seconds, overlap the first
segments' collection; until it says it is ready, fits are done in the trainer's process, which is
sooner than a worker still starting), not a fork: nothing of the trainer's process --
the rater app's threads, the caller's own script -- is copied into it or run again. It ignores
Ctrl-C (the trainer's process stops it) and ends when the trainer's end of the pipe closes, a
``kill -9`` of the trainer included.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
from multiprocessing.connection import Connection

import torch
from stable_baselines3.common.base_class import BaseAlgorithm

from prefloop.reward_models import RewardTrainer
from prefloop.training.algos import rewards_wait_for_rollout_end
from prefloop.training.config import TrainConfig
from prefloop.training.fit_worker import FitJob, FitOutcome, fit_on_labels

__all__ = ["BackgroundFitError", "BackgroundFitter", "FitJob", "FitOutcome", "fit_on_labels", "start_background_fitter",
           "TAKE_BACK_AFTER_STEPS", "take_back_due", "take_fit", "wants_background_fit"]

log = logging.getLogger("prefloop")

# TrainConfig.background_fit=None turns fits in the background on for runs of at least this many
# env steps (the worker's start, a few CPU-seconds of imports, is more than a shorter run's fits).
BACKGROUND_FIT_MIN_STEPS = 20_000
# A fit sent to the worker is taken back at the first rollout end at least this many env steps (all
# envs together) later: the next rollout's end where rollouts are this long (SB3's PPO default, so
# every env without a preset; there the run is exactly the in-process one). A shorter rollout and its
# update take less time than a fit (CartPole's preset: 8 envs x 32 steps), so taking it back at the
# next one would make the policy wait on nearly every fit.
TAKE_BACK_AFTER_STEPS = 2048


def wants_background_fit(config: TrainConfig, model: BaseAlgorithm, teacher_answers_at_once: bool) -> bool:
    """Whether ``model``'s run fits in the background: only a learner that takes a rollout's rewards
    at its end; then as ``config.background_fit`` says, or when None, for runs of at least
    :data:`BACKGROUND_FIT_MIN_STEPS` whose rollouts are at least :data:`TAKE_BACK_AFTER_STEPS`
    (exactly the in-process run), or whose ``teacher_answers_at_once`` (a simulated teacher in the
    trainer's process: shorter rollouts then take warm fits back later, :func:`take_back_due`).
    Where people answer, short rollouts fit on the spot: their answers pace the policy anyway."""
    if not rewards_wait_for_rollout_end(model):
        return False
    if config.background_fit is not None:
        return config.background_fit
    rollout = model.n_steps * model.n_envs  # type: ignore[attr-defined]  # an on-policy learner, checked above
    return (config.steps or 0) >= BACKGROUND_FIT_MIN_STEPS and (rollout >= TAKE_BACK_AFTER_STEPS or teacher_answers_at_once)


def take_back_due(sent_at_step: int, env_step: int) -> bool:
    """Whether a warm fit sent at env step ``sent_at_step`` is taken back at a rollout end at
    ``env_step`` (at least :data:`TAKE_BACK_AFTER_STEPS` later; the caller takes other fits, and a
    fit pending when the next round is due, at once)."""
    return env_step - sent_at_step >= TAKE_BACK_AFTER_STEPS


def take_fit(trainer: RewardTrainer, fitted: RewardTrainer) -> None:
    """Continue ``trainer`` from ``fitted``, its copy that fitted in the worker: weights, scale,
    Adam state, counters and rater estimates. The model object stays ``trainer``'s own, so whatever
    holds it (the env's learned reward) sees the new weights."""
    with torch.no_grad():
        trainer.model.load_state_dict(fitted.model.state_dict())
    trainer.load_optimizer_state(fitted.optimizer.state_dict())
    for name, value in vars(fitted).items():  # every counter the trainer has, present and future
        if name not in ("model", "optimizer", "config"):
            setattr(trainer, name, value)


class BackgroundFitError(RuntimeError):
    """The worker process is gone (killed, out of memory) or could not be started."""


class BackgroundFitter:
    """One worker process per run that fits copies of the run's reward trainer, one fit at a time.

    ``submit(job)`` sends a :class:`FitJob` and returns; ``result()`` waits for its
    :class:`FitOutcome`. An exception in the fit is raised again by ``result()`` as it would have
    been in-process; a dead worker raises :class:`BackgroundFitError` (the caller refits in its
    own process). ``close()`` stops the worker; it is safe to call twice.

    The worker is a fresh interpreter (``python -m prefloop.training.fit_worker``), not a
    fork: nothing of the trainer's process (its threads, the caller's ``__main__`` script) is
    copied or run again. It talks over a pipe pair of its own (its stdout and stderr stay the
    terminal's); the store's URL, which may hold a password, goes through the pipe, never argv.
    """

    def __init__(self, store_url: str, run_name: str, torch_threads: int) -> None:
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "prefloop.training.fit_worker", str(to_worker_r), str(from_worker_w)],
                pass_fds=(to_worker_r, from_worker_w), stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            for fd in (to_worker_r, to_worker_w, from_worker_r, from_worker_w):
                os.close(fd)
            raise BackgroundFitError(f"could not start the background fit process ({exc})") from exc
        os.close(to_worker_r)  # the worker's ends live in the worker only: EOF tells each side the other is gone
        os.close(from_worker_w)
        self._conn = Connection(from_worker_r, writable=False)
        self._send = Connection(to_worker_w, readable=False)
        self.pending = False
        self._ready = False
        self._send_frame((store_url, run_name, torch_threads))

    def ready(self, timeout: float = 0.0) -> bool:
        """Whether the worker has started (imports, torch's warm-up, the store opened), waiting up
        to ``timeout`` seconds for it. A job sent earlier would wait in the pipe while the worker
        starts, and the policy for it: fits go there once it is ready.

        Raises:
            BackgroundFitError: the worker ended before it was ready.
        """
        if not self._ready:
            try:
                if self._conn.poll(timeout):
                    self._ready = pickle.loads(self._conn.recv_bytes())[0] == "ready"
            except (OSError, EOFError) as exc:
                raise BackgroundFitError(f"the background fit process ended (exit code {self._process.poll()})") from exc
        return self._ready

    def _send_frame(self, value: object) -> None:
        try:
            self._send.send_bytes(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError as exc:
            raise BackgroundFitError(f"the background fit process is gone ({exc})") from exc

    def submit(self, job: FitJob) -> None:
        assert not self.pending, "one fit at a time: take the result of the last one first"
        self._send_frame(job)
        self.pending = True

    def result(self) -> FitOutcome:
        assert self.pending, "no fit was submitted"
        try:
            status, value = pickle.loads(self._conn.recv_bytes())
            if status == "ready":  # a job sent before ready() saw the worker start
                self._ready = True
                status, value = pickle.loads(self._conn.recv_bytes())
        except (OSError, EOFError) as exc:
            self.pending = False
            raise BackgroundFitError(f"the background fit process ended (exit code {self._process.poll()})") from exc
        self.pending = False
        if status == "error":
            raise value
        return value

    @property
    def pid(self) -> int:
        return self._process.pid

    def close(self) -> None:
        """Stop the worker: it ends on its own when the pipe closes; one still fitting (the trainer
        stopped while it waited, e.g. Ctrl-C) is killed."""
        self._send.close()
        self._conn.close()
        try:
            self._process.wait(timeout=0 if self.pending else 2)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def start_background_fitter(store_url: str, run_name: str, torch_threads: int) -> BackgroundFitter | None:
    """A :class:`BackgroundFitter` for the run, or None (with one warning line) where no second
    process can be started: the run then fits in its own process, as it would without."""
    try:
        return BackgroundFitter(store_url, run_name, torch_threads)
    except BackgroundFitError as exc:
        log.warning("%s: the reward model is fitted in the trainer's process", exc)
        return None
