"""The first label round of a run: its segments (a random policy's, or PEBBLE's exploration), the
first labels and the first reward model, before the policy trains on preferences; and, on resume,
what was pending when the run stopped."""

from __future__ import annotations

from collections.abc import Callable

from prefloop.training.callbacks import log_initial_round
from prefloop.training.learner import PreferenceLearner
from prefloop.training.schedule import LabelRound


def first_labels(
    learner: PreferenceLearner,
    collect_first_segments: Callable[[Callable[[], None]], None],
    first_round: LabelRound,
    initial_steps: int,
    resumed: bool,
    policy_steps_done: int,
    curve: list,
) -> bool:
    """Before the policy trains on preferences: first segments (a random policy's, or PEBBLE's
    exploration), the first labels, the first reward model. ``collect_first_segments(then)`` records
    the segments and calls ``then`` once they are all recorded (it may go on with work that reads
    neither the segments nor the reward model: exploration's last policy update).

    On resume: answer (simulated) or wait for (humans) what is still pending, and refit.
    Returns True when the first fit is still out in the learner's background process: nothing reads
    the model before the first rollout's end, where :class:`FinishFitCallback` takes it back.
    """
    if resumed:
        return _first_round(learner, first_round, initial_steps + policy_steps_done, resumed, curve)
    fit_pending: list[bool] = []
    collect_first_segments(lambda: fit_pending.append(
        _first_round(learner, first_round, initial_steps + policy_steps_done, resumed, curve)))
    return fit_pending[0]


def _first_round(learner: PreferenceLearner, first_round: LabelRound, env_step: int, resumed: bool, curve: list) -> bool:
    """:func:`first_labels`' round once the segments are there: ask, answer or wait, fit."""
    config = learner.config
    if learner.teacher is not None:
        # On resume, answer what is pending and always refit: labels answered after the checkpoint
        # was written are in the store but not in the checkpoint's reward model.
        target = first_round.cumulative_labels if not resumed else learner.pairs_asked()
        stats = learner.run_round(target, env_step, None, background=learner.deferred_fits)
        if stats is not None:
            log_initial_round(stats)
        return stats is None
    if not resumed:
        learner.ask(first_round.cumulative_labels, env_step)
    asked = learner.pairs_asked()
    # pace, continue: as many as a fresh start needs, also on resume (the pairs asked since are
    # paced by the callback as before the stop, not all owed before the policy may train again)
    needed = asked if config.when_behind == "wait" else min(asked, first_round.cumulative_labels, config.min_initial_labels)
    learner.wait_for_raters(lambda c: c["labels"] >= needed, f"the policy starts training once {needed} labels are in", env_step, curve)
    learner.fit(env_step)
    learner.publish_progress("training", env_step, curve)
    return False
