"""The background fit's worker process (:mod:`prefloop.training.background_fit` starts it): a
fresh interpreter that fits copies of a run's reward trainer on the labels in the run's store.

Kept apart from the trainer's side so that the worker imports only what a fit needs (torch, the
reward models, the store), not the RL stack. It reads one frame ``(store URL, run name, torch
threads)`` -- the URL may hold a password, so it comes through the pipe, never argv --, sends
``("ready", None)`` once torch is warm and the store open, then answers each :class:`FitJob` with
``("ok", FitOutcome)`` or ``("error", exception)`` until the pipe closes.
"""

from __future__ import annotations

import os
import pickle
import signal
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
        try:
            send.send_bytes(pickle.dumps(("ready", None)))  # until then the trainer fits in its own process
        except OSError:
            return
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
    from prefloop.training.fit_worker import _serve
    _serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
