"""SB3 callbacks that run the preference schedule, record the learning curve and checkpoint,
composed with any algorithm (no subclassing), plus the checkpoint writer they share."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from prefloop.envs.learned_reward import VecLearnedReward
from prefloop.reward_models import save_reward_model
from prefloop.serialization import strict_json
from prefloop.training.algos import is_off_policy, relabel_replay_buffer
from prefloop.training.background_fit import take_back_due
from prefloop.training.learner import PreferenceLearner
from prefloop.training.pacing import LabelPace
from prefloop.training.resume_state import save_resume_state
from prefloop.training.report import validation_text
from prefloop.training.rundir import RunDir
from prefloop.training.schedule import LabelRound

log = logging.getLogger("prefloop")


def metric_text(value: float) -> str:
    """A metric for a log line: "not yet" while it cannot be computed (too few labels), not "nan"."""
    return f"{value:.2f}" if math.isfinite(value) else "not yet"


class RolloutRewardCallback(BaseCallback):
    """Gives an on-policy learner its rollout's learned rewards in one ``predict`` at the rollout's end.

    While the learner trains, ``env`` defers its rewards (the learner stores 0 plus its own
    time-limit bootstrap per step); at each rollout's end, before any other callback, the learned
    rewards are added to the rollout buffer and the returns and advantages computed again, as the
    learner had just done. Only for learners that :func:`rewards_wait_for_rollout_end`; put it first
    in the callback list, so that a refit at this rollout's end does not relabel the rollout.
    """

    def __init__(self, env: VecLearnedReward):
        super().__init__()
        self.env = env

    def _on_rollout_start(self) -> None:
        # On from the first rollout; also drops the steps of a rollout that was cut short.
        self.env.defer(True)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        buffer = self.model.rollout_buffer  # type: ignore[attr-defined]
        rewards = self.env.take_deferred_rewards()
        if rewards.shape != buffer.rewards.shape:
            raise RuntimeError(f"{rewards.shape[0]} deferred reward steps for a rollout buffer of shape "
                               f"{buffer.rewards.shape}: the env was stepped outside the learner's rollout")
        buffer.rewards += rewards
        buffer.compute_returns_and_advantage(last_values=self.locals["values"], dones=self.locals["dones"])

    def _on_training_end(self) -> None:
        self.env.defer(False)


class AtLastRolloutEnd(BaseCallback):
    """Calls ``then()`` once, at the end of the rollout that brings ``model.learn`` to
    ``total_steps``: before the learner's last update, which reads nothing ``then`` changes (its
    rollout's rewards are in), so ``then``'s work can overlap that update (PEBBLE's exploration:
    the first round's fit runs in the worker while the policy's last exploration update runs).
    :meth:`call_if_missed` calls it after ``learn`` if no rollout end reached ``total_steps``."""

    def __init__(self, total_steps: int, then: Callable[[], None]):
        super().__init__()
        self.total_steps = total_steps
        self.then = then
        self.called = False

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if not self.called and self.num_timesteps >= self.total_steps:
            self.call_if_missed()

    def call_if_missed(self) -> None:
        if not self.called:
            self.called = True
            self.then()


class CurveCallback(BaseCallback):
    """Records the learning curve (true and learned episode return vs. env steps) and logs it.

    ``learned_returns``: the learned returns of recent episodes, oldest first (e.g.
    ``VecLearnedReward.finished_returns``); None in a true-reward run.
    """

    def __init__(self, step_offset: int, every: int, curve: list[dict[str, float]], learned_returns: Sequence[float] | None = None):
        super().__init__()
        self.step_offset = step_offset
        self.every = max(1, every)
        self.curve = curve
        self._next = (curve[-1]["env_step"] + self.every) if curve else 0
        self._learned_returns = learned_returns if learned_returns is not None else ()

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        env_step = self.step_offset + self.num_timesteps
        if env_step < self._next or not self.model.ep_info_buffer:
            return
        self._next = env_step + self.every
        true_returns = [ep["r"] for ep in self.model.ep_info_buffer]
        point = {"env_step": float(env_step), "true_return": float(np.mean(true_returns))}
        if self._learned_returns:
            point["learned_return"] = float(np.mean(list(self._learned_returns)[-len(true_returns):]))
            self.logger.record("pref/learned_ep_return", point["learned_return"])
        self.curve.append(point)


class PreferenceCallback(BaseCallback):
    """Runs the label schedule during ``model.learn`` and checkpoints after each reward update.

    Simulated teacher: each due round is asked, answered and trained on at once. Human raters
    (and simulated ones answering on a clock): a due round only puts pairs in the store; with
    ``when_behind="pace"`` the policy trains at most as far as the answers so far unlock
    (:class:`~prefloop.training.pacing.LabelPace`), with ``"wait"`` training pauses at each round until
    every waiting pair is answered, with ``"continue"`` it goes on with the current reward model.
    The reward model retrains when new labels add ``REFIT_FRACTION`` to the fitted ones or every
    asked pair is in (looked for at most every ``POLL_S`` seconds, and always after a wait).
    """

    POLL_S = 1.0
    REFIT_FRACTION = 0.1

    def __init__(self, learner: PreferenceLearner, rounds: list[LabelRound], step_offset: int, run: "RunState",
                 initial_fit_pending: bool = False):
        """``initial_fit_pending``: the first round's fit (:func:`~prefloop.training.first_round.first_labels`)
        is still out in the background; taken back like any round's, it is logged as that round."""
        super().__init__()
        self.learner = learner
        self.rounds = rounds
        self.step_offset = step_offset
        self.run = run
        self._initial_fit_pending = initial_fit_pending
        config = learner.config
        self.pace = (
            LabelPace(rounds, int(config.steps or 0), config.min_initial_labels)
            if learner.teacher is None and config.when_behind == "pace" and rounds else None
        )
        self._allowed = -1  # env steps the resolved pairs unlocked when last looked
        self._last_poll = -math.inf

    @property
    def background(self) -> bool:
        """Whether fits are taken back at a rollout end by :class:`FinishFitCallback` (done in the
        learner's background process where it can take them)."""
        return self.learner.deferred_fits

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        learner, config = self.learner, self.learner.config
        env_step = self.step_offset + self.num_timesteps
        postponed = learner.postponed_at if learner.postponed_at is not None else -1
        due = [r for r in self.rounds
               if postponed < r.at_step <= env_step and r.cumulative_labels > learner.pairs_asked()]
        if due:
            self.finish_pending_fit()  # reported and checkpointed before the round (not just taken by its ask)
        if learner.teacher is not None:
            if due:
                stats = learner.run_round(due[-1].cumulative_labels, env_step, self._recent_returns(), background=self.background)
                if stats is not None:
                    self._after_fit(stats, env_step)
            return
        if due:
            waiting = learner.store.counts()
            behind = waiting["pending"] + waiting["claimed"]
            asked = learner.ask(due[-1].cumulative_labels, env_step)
            if config.when_behind == "wait":
                store = learner.store
                # Pairs whose clips failed to render can never be answered: do not wait for them.
                learner.wait_for_raters(
                    lambda c: c["pending"] + c["claimed"] <= len(store.pairs_missing_clips(failed_only=True)),
                    "training waits until every pair is answered", env_step, self.run.curve,
                )
            elif behind and config.when_behind == "continue":
                message = (
                    f"raters are behind ({behind} pairs still waiting, {asked} more asked); "
                    f"training continues on the reward model from {int(learner.fit_history[-1]['labels'])} labels"
                )
                log.info("step %d: %s", env_step, message)
                learner.publish_progress("training", env_step, self.run.curve, message)
        waited = self.pace is not None and self._keep_pace(env_step)
        if not (due or waited or time.monotonic() - self._last_poll >= self.POLL_S):
            return
        self._last_poll = time.monotonic()
        if self._refit_due():
            self.finish_pending_fit()  # a fit still out is reported before the next one starts
            learner.start_fit(env_step, background=self.background)
            if not self.background:
                self.finish_pending_fit()

    def take_back_due(self, env_step: int) -> bool:
        """Whether a fit out in the background is taken back at this rollout end: at once (the next
        rollout end after it was sent) unless it is a warm fit, which waits until
        :func:`~prefloop.training.background_fit.take_back_due` says so; the first round's always at
        once (the policy has trained on nothing yet)."""
        learner = self.learner
        sent_at = learner.fit_started_at
        if sent_at is None:
            return False
        return self._initial_fit_pending or not learner.pending_fit_is_warm or take_back_due(sent_at, env_step)

    def _refit_due(self) -> bool:
        """Retrain once new labels add ``REFIT_FRACTION`` to those fitted, or once every asked pair
        is in (a round complete, the last labels): a refit per label would cost the trainer more
        CPU than the policy, and a person would wait on it."""
        counts = self.learner.store.counts()
        fitted = max(0, self.learner.labels_at_last_fit)
        new = counts["labels"] - fitted
        if new <= 0:
            return False
        return new >= max(1, math.ceil(self.REFIT_FRACTION * fitted)) or counts["pending"] + counts["claimed"] == 0

    def _keep_pace(self, env_step: int) -> bool:
        """Block while the policy is as far as the resolved pairs allow; True if it waited."""
        assert self.pace is not None
        if env_step < self._allowed:
            return False
        store = self.learner.store

        def resolved(counts: dict[str, int], with_failed_clips: bool = False) -> int:
            done = counts["answered"] + counts.get("withdrawn", 0)
            # Pairs whose clips failed to render can never be answered: do not wait for them.
            return done + (len(store.pairs_missing_clips(failed_only=True)) if with_failed_clips else 0)

        self._allowed = self.pace.allowed_steps(resolved(store.counts()))
        if env_step < self._allowed:
            return False
        needed = self.pace.labels_needed(env_step)
        self.learner.wait_for_raters(
            lambda c: self.pace.allowed_steps(resolved(c, True)) > env_step,  # type: ignore[union-attr]
            f"the policy may train up to step {env_step} of {self.pace.total_steps} until more answers come "
            f"({needed} answered let it go on)",
            env_step, self.run.curve,
        )
        self._allowed = self.pace.allowed_steps(resolved(store.counts(), True))
        return True

    def finish_pending_fit(self, checkpoint: bool = True) -> None:
        """Take back a fit started in the background (if any) and do what follows a fit: report it,
        relabel an off-policy replay buffer, checkpoint (unless ``checkpoint`` is False)."""
        stats = self.learner.finish_fit()
        if stats is not None and self._initial_fit_pending:
            self._initial_fit_pending = False
            log_initial_round(stats)  # and nothing else, as after a first fit on the spot
        elif stats is not None:
            self._after_fit(stats, self.step_offset + self.num_timesteps, checkpoint)

    def _after_fit(self, stats: dict[str, float], env_step: int, checkpoint: bool = True) -> None:
        if is_off_policy(self.model):
            started = time.perf_counter()
            relabel_replay_buffer(self.model, self.learner.reward_model)
            self.learner.time_s += time.perf_counter() - started
        report_fit(self.model, self.learner, stats, env_step, self.run.curve)
        if checkpoint:
            self.run.checkpoint(self.model, self.learner, env_step)

    def _recent_returns(self) -> tuple[float, float] | None:
        episodes = list(self.model.ep_info_buffer)
        if not episodes:
            return None
        return float(np.mean([e["r"] for e in episodes])), float(np.mean([e["l"] for e in episodes]))


def log_initial_round(stats: dict[str, float]) -> None:
    """The log line of the first round's fit, before the policy trains on the learned reward."""
    log.info("initial round: %d labels, segment-return corr %s", stats["labels"], metric_text(stats["segment_return_pearson"]))


def report_fit(model: BaseAlgorithm, learner: PreferenceLearner, stats: dict[str, float], env_step: int, curve: list) -> None:
    """Say what a reward-model fit did: TensorBoard (``pref/*``), one log line (at the step its
    labels were asked), and the rater app's status."""
    for key, value in stats.items():
        if key != "env_step" and math.isfinite(value):
            model.logger.record(f"pref/{key}", value)
    log.info(
        "step %d: %d labels, reward-model val acc %s, segment-return corr %s",
        int(stats["env_step"]), stats["labels"], validation_text(stats, held_out=learner.config.reward_model.val_fraction > 0),
        metric_text(stats["segment_return_pearson"]),
    )
    learner.publish_progress("training", env_step, curve)


class FinishFitCallback(BaseCallback):
    """Takes back the reward-model fit a round started in the background at the first rollout end
    where it is due (:meth:`PreferenceCallback.take_back_due`), before anything reads the model there
    (put it first): that rollout's rewards come from the new model; with rollouts of at least
    :data:`~prefloop.training.background_fit.TAKE_BACK_AFTER_STEPS`, that is the next rollout's end,
    exactly as after a fit on the spot (``prefloop.training.background_fit``)."""

    def __init__(self, preferences: PreferenceCallback):
        super().__init__()
        self.preferences = preferences

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        preferences = self.preferences
        if preferences.take_back_due(preferences.step_offset + self.num_timesteps):
            preferences.finish_pending_fit()

    def _on_training_end(self) -> None:
        self.preferences.finish_pending_fit(checkpoint=False)  # the run's final checkpoint follows


class CheckpointCallback(BaseCallback):
    """Checkpoints every ``every`` env steps (label rounds checkpoint on their own as well)."""

    def __init__(self, run: "RunState", learner: "PreferenceLearner | None", step_offset: int, every: int):
        super().__init__()
        self.run = run
        self.learner = learner
        self.step_offset = step_offset
        self.every = every
        self._next = 0

    def _on_training_start(self) -> None:
        self._next = self.step_offset + self.num_timesteps + self.every

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        env_step = self.step_offset + self.num_timesteps
        if env_step >= self._next:
            self._next = env_step + self.every
            if self.learner is not None and self.learner.fit_started_at is not None:
                return  # a fit is out in the background: the checkpoint comes with it, when it is taken back
            self.run.checkpoint(self.model, self.learner, env_step)


class StepProgressBar(BaseCallback):
    """The terminal's progress bar, in the run's env steps (the numbers the log prints: the steps
    before ``model.learn`` count too). ``with_eta=False`` for runs paced by people, where an ETA
    would only guess how fast they answer. Log lines go above the bar: rich redirects the
    terminal's stdout/stderr while the bar is shown (see ``prefloop.cli``'s log handler)."""

    def __init__(self, step_offset: int, total: int, with_eta: bool = True):
        super().__init__()
        self.step_offset = step_offset
        self.total = total
        self.with_eta = with_eta
        self._progress: Any = None
        self._task: Any = None

    def _on_training_start(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = [TextColumn("env steps"), BarColumn(), TaskProgressColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        if self.with_eta:
            columns += [TextColumn("left"), TimeRemainingColumn()]
        self._progress = Progress(*columns)
        self._progress.start()
        self._task = self._progress.add_task("", total=self.total, completed=self.step_offset + self.num_timesteps)

    def _on_step(self) -> bool:
        self._progress.update(self._task, completed=min(self.total, self.step_offset + self.num_timesteps))
        return True

    def _on_training_end(self) -> None:
        if self._progress is not None:
            self._progress.refresh()
            self._progress.stop()
            self._progress = None


class RunState:
    """The run folder's checkpoint: policy, reward model and loop progress, written atomically."""

    def __init__(
        self, run_dir: RunDir, curve: list[dict[str, float]], initial_steps: int, config: dict[str, Any] | None = None
    ):
        self.run_dir = run_dir
        self.curve = curve
        self.initial_steps = initial_steps
        self.config = config  # the run's config (JSON), kept in each checkpoint: --resume compares it

    def checkpoint(self, model: BaseAlgorithm, learner: PreferenceLearner | None, env_step: int) -> None:
        if learner is not None:  # a fit still in the background: the checkpoint keeps its result
            stats = learner.finish_fit()
            if stats is not None:
                report_fit(model, learner, stats, env_step, self.curve)
        target = self.run_dir.new_checkpoint_dir(env_step)
        model.save(target / "policy.zip")
        save_resume_state(target, model, learner.trainer if learner is not None else None)
        state: dict[str, Any] = {
            "env_step": env_step,
            "policy_timesteps": int(model.num_timesteps),
            "initial_steps": self.initial_steps,
            "curve": self.curve,
        }
        if self.config is not None:
            state["config"] = self.config
        if learner is not None:
            save_reward_model(learner.reward_model, target / "reward_model")
            state["fit_history"] = learner.fit_history
            state["reward_learning_time_s"] = learner.time_s
        (target / "state.json").write_text(strict_json(state))
        self.run_dir.publish_checkpoint(target)
