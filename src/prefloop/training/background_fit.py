"""Fitting the reward model in a second process while the policy collects its next rollout.

Christiano et al. ran the reward model's training asynchronously from the policy's. Here the
asynchrony changes nothing the run computes: an on-policy learner (PPO, A2C) gets a rollout's learned
rewards only at the rollout's end (``VecLearnedReward.defer``), so a fit started at one rollout's
end and taken back at the next rollout's end, before that rollout's rewards are computed, gives
the policy exactly the rewards a fit done on the spot would have given it. The fit itself runs the
same code on a pickled copy of the trainer, with the same torch threads, so its weights are the
same bit for bit (``tests/test_background_fit.py``). What changes is the wall time: on a machine
with a free core the fit no longer stops the policy.

The worker reads the labelled pairs from the run's store itself (an image env's segments are not
copied through a pipe every round) and gets the trainer (weights, Adam state, counters) and SURF's
pseudo-labels through a pipe; it sends the fitted trainer back. Nothing is stored only in the
worker: labels live in the store and the trainer comes back whole, so a worker that dies costs a
refit in the trainer's process, never a label.

The worker is a fresh interpreter started with the run (its imports, a few CPU-seconds, overlap
the first segments' collection), not a fork: nothing of the trainer's process -- the rater app's
threads, the caller's own script -- is copied into it or run again. It ignores Ctrl-C (the
trainer's process stops it) and ends when the trainer's end of the pipe closes, a ``kill -9`` of
the trainer included.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection

import torch
from threadpoolctl import threadpool_limits

from prefloop.reward_models import RewardTrainer
from prefloop.reward_models.training import FitStats
from prefloop.store import PreferenceStore
from prefloop.training.reward_scale import normalize_on_reference
from prefloop.types import LabeledPair

log = logging.getLogger("prefloop")

# A background fit is taken back at the first rollout's end at least this many env steps after it
# began: the next rollout for rollouts this long (PPO's default 2048 steps, the Acrobot preset's
# 4096), which changes nothing; a few rollouts for short ones (CartPole's preset: 8 of 256 steps),
# whose rollout and update take less time than a fit, so the policy would otherwise wait on it.
FIT_LAG_STEPS = 2048


def fit_on_labels(
    trainer: RewardTrainer,
    labeled: Sequence[LabeledPair],
    pseudo: Sequence[LabeledPair],
    checks: Mapping[str, tuple[int, int]] | None,
    reference_pairs: int,
) -> FitStats | None:
    """One reward-model update, wherever it runs: fit on every labelled pair (and SURF's
    pseudo-labels), then rescale on the fixed reference set. None when nothing is labelled yet
    (every answer "can't tell"): the model stays as it is."""
    if not labeled:
        return None
    fit = trainer.fit(labeled, pseudo, checks=checks)
    normalize_on_reference(trainer.model, labeled, reference_pairs)
    return fit


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


@dataclass
class FitJob:
    """What the worker needs besides the store: the trainer as it is now and this fit's extras."""

    trainer: RewardTrainer
    pseudo: list[LabeledPair]
    checks: dict[str, tuple[int, int]] | None
    reference_pairs: int


@dataclass
class FitOutcome:
    """What comes back: the fitted trainer, its stats (None: nothing labelled), how many labelled
    pairs it saw, and the fit's wall and CPU seconds in the worker."""

    trainer: RewardTrainer
    fit: FitStats | None
    n_labeled: int
    wall_s: float
    cpu_s: float


class BackgroundFitError(RuntimeError):
    """The worker process is gone (killed, out of memory) or could not be started."""


class BackgroundFitter:
    """One worker process per run that fits copies of the run's reward trainer, one fit at a time.

    ``submit(job)`` sends a :class:`FitJob` and returns; ``result()`` waits for its
    :class:`FitOutcome`. An exception in the fit is raised again by ``result()`` as it would have
    been in-process; a dead worker raises :class:`BackgroundFitError` (the caller refits in its
    own process). ``close()`` stops the worker; it is safe to call twice.

    The worker is a fresh interpreter (``python -m prefloop.training.background_fit``), not a
    fork: nothing of the trainer's process (its threads, the caller's ``__main__`` script) is
    copied or run again. It talks over a pipe pair of its own (its stdout and stderr stay the
    terminal's); the store's URL, which may hold a password, goes through the pipe, never argv.
    """

    def __init__(self, store_url: str, run_name: str, torch_threads: int) -> None:
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(to_worker_r), str(from_worker_w)],
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
        self._send_frame((store_url, run_name, torch_threads))

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
        self.pending = False
        try:
            status, value = pickle.loads(self._conn.recv_bytes())
        except (OSError, EOFError) as exc:
            raise BackgroundFitError(f"the background fit process ended (exit code {self._process.poll()})") from exc
        if status == "error":
            raise value
        return value

    @property
    def pid(self) -> int:
        return self._process.pid

    def close(self) -> None:
        """Stop the worker: it ends on its own when the pipe closes; one still fitting is killed."""
        self._send.close()
        self._conn.close()
        try:
            self._process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _serve(receive: Connection, send: Connection) -> None:
    """The worker: read the labels from the store and fit each job sent, until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the trainer decides
    try:
        store_url, run_name, torch_threads = pickle.loads(receive.recv_bytes())
    except (EOFError, OSError):
        return
    torch.set_num_threads(torch_threads)
    _warm_up()
    with threadpool_limits(torch_threads, user_api="blas"), PreferenceStore(store_url, run_name=run_name, read_only=True) as store:
        while True:
            try:
                job = pickle.loads(receive.recv_bytes())
            except (EOFError, OSError):
                return  # the trainer closed its end, or is gone
            try:
                reply = pickle.dumps(("ok", _fit(store, job)), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # the trainer raises it as an in-process fit would have
                reply = pickle.dumps(("error", _picklable(exc)), protocol=pickle.HIGHEST_PROTOCOL)
            try:
                send.send_bytes(reply)
            except OSError:
                return


def _warm_up() -> None:
    """A first gradient step on a throwaway network: torch's first calls in a process cost about a
    second, which the first real fit would otherwise make the policy wait for."""
    net = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.LeakyReLU(), torch.nn.Linear(64, 1))
    optimizer = torch.optim.Adam(net.parameters(), foreach=True)
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(net(torch.randn(32, 8)).squeeze(-1), torch.ones(32)).backward()
        optimizer.step()


def _fit(store: PreferenceStore, job: FitJob) -> FitOutcome:
    started, cpu_started = time.perf_counter(), time.process_time()
    labeled = store.labeled_pairs()
    fit = fit_on_labels(job.trainer, labeled, job.pseudo, job.checks, job.reference_pairs)
    return FitOutcome(job.trainer, fit, len(labeled), time.perf_counter() - started, time.process_time() - cpu_started)


def _picklable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling, else a RuntimeError with its text and where it was raised."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}\n(in the background fit, pid {os.getpid()}):\n"
                            + "".join(traceback.format_exception(exc)))



if __name__ == "__main__":
    # Through the package's module, not this __main__ copy: what goes back is unpickled by that name.
    from prefloop.training.background_fit import _serve
    _serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
