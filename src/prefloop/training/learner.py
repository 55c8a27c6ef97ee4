"""The preference side of a run: which pairs to ask, who answers them, and the reward model's updates.

:class:`PreferenceLearner` owns the segment buffer, the store, the teacher (simulated, recorded or
none for people in the rater app), the reward ensemble and its trainer. It publishes the trainer's
state into the store (``progress`` meta) for the rater app's status line and dashboard.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from prefloop.envs import SegmentBuffer
from prefloop.metrics import correlations
from prefloop.reward_models import RewardEnsemble, RewardTrainer
from prefloop.reward_models.training import FitStats
from prefloop.serialization import strict_json
from prefloop.store import PreferenceStore
from prefloop.teachers.labeling import answer_pending
from prefloop.teachers.base import Teacher
from prefloop.teachers.simulated import HUMAN_TEACHER
from prefloop.training.background_fit import BackgroundFitError, BackgroundFitter, FitJob, fit_on_labels, take_fit
from prefloop.training.config import TrainConfig
from prefloop.training.query import NotEnoughSegmentsError, QueryRule, UnaskableSegmentsError
from prefloop.training.rater_checks import CheckPolicy, RaterRouter, publish_policy, tally_checks
from prefloop.training.query import query_rule as make_query_rule
from prefloop.training.schedule import label_rounds
from prefloop.training.semi_supervised import pseudo_labels
from prefloop.types import Choice, LabeledPair, Segment, SegmentPair

log = logging.getLogger("prefloop")


class PreferenceLearner:
    """Owns the preference side of a run: segments, store, teacher, reward model and its trainer.

    ``teacher=None`` means people (the rater app) or another store teacher answer through the
    store: pairs are only put there, and the reward model retrains whenever new labels have come in.
    """

    def __init__(
        self,
        config: TrainConfig,
        store: PreferenceStore,
        reward_model: RewardEnsemble,
        buffer: SegmentBuffer,
        teacher: Teacher | None,
        query_rule: QueryRule | None = None,
        background_raters: int = 0,
    ):
        """``background_raters``: simulated raters answering through the store on their own
        clocks (``teacher`` is then None), so the learner knows a crowd is coming."""
        self.config = config
        self.background_raters = background_raters
        self.store = store
        self.reward_model = reward_model
        self.trainer = RewardTrainer(reward_model, config.reward_model)
        self.buffer = buffer
        self.teacher = teacher
        # One path for every rule: a named method is a MethodRule, a user's rule is called as it is.
        self.query_rule: QueryRule = query_rule if query_rule is not None else make_query_rule(config.query)
        self._rng = np.random.default_rng([config.seed, 7])
        self.fit_history: list[dict[str, float]] = []
        self._flagged_raters: list[str] = []
        self.time_s = 0.0  # spent on reward learning in this process: querying, answering, fitting or waiting for a fit
        # A second process for the fits (prefloop.training.background_fit), set by the loop with
        # deferred_fits (each round's fit taken back at a rollout end, FinishFitCallback); its fits'
        # wall and CPU seconds. A fit the worker cannot take (still starting, or gone) is done here
        # on a copy and held back just the same, so the run does not depend on the worker.
        self.fitter: BackgroundFitter | None = None
        self.deferred_fits = False
        self._pending: _PendingFit | None = None
        self.background_fit_s = 0.0
        self.background_cpu_s = 0.0
        counts = store.counts()
        self._pairs_asked = counts["pairs"]  # kept here: the schedule checks it every rollout
        self.labels_at_last_fit = -1
        # Env step of the last round whose segments showed no askable pair (:meth:`ask`): rounds up
        # to it are not due again (their pairs go to the next round), or every rollout end would
        # query and refit in vain.
        self.postponed_at: int | None = None
        # The first label round's pairs fix the reward's unit (prefloop.training.reward_scale).
        self.reference_pairs = label_rounds(config.labels, config.steps or 1, config.schedule)[0].cumulative_labels
        # Gold pairs are for people; replaying a recorded human run asks them too, or its pairs would differ.
        recorded = getattr(teacher, "recorded_config", None) or {}
        # People answer this run's pairs, or answered them in the run a recorded teacher replays
        # (which the replay must follow: gold pairs asked as that run asked them).
        self.people_answered = teacher is None or recorded.get("teacher") == HUMAN_TEACHER
        # A simulated crowd stands in for people, so it is asked gold pairs as well.
        self._asks_gold = self.people_answered or getattr(teacher, "simulates_people", False)
        # Who gets a gold check and who a label (people in the app route through the same rules).
        members = [m.rater_id for m in getattr(teacher, "members", None) or ()]
        self.router = RaterRouter(store, CheckPolicy.for_reward_model(config.reward_model, config.probation_checks)
                                  if self._asks_gold and config.gold_fraction > 0 else None, known_raters=members)
        publish_policy(store, self.router.policy)
        # Raises if whoever answers in the background has died (a store teacher's check_alive: a
        # clock rater's thread, the rater app given up on), so a wait for labels cannot hang forever.
        self.check_raters: Callable[[], None] = lambda: None

    def pairs_asked(self) -> int:
        return self._pairs_asked

    def run_round(
        self, target_pairs: int, env_step: int, recent_returns: tuple[float, float] | None, background: bool = False,
    ) -> dict[str, float] | None:
        """Simulated teacher: ask for pairs up to ``target_pairs``, answer them, retrain.

        ``recent_returns`` is (mean episode return, mean episode length) of the current policy,
        which scales the skip/equal thresholds of B-Pref teachers. Returns the fit's stats; with
        ``background`` the fit is only started (:meth:`start_fit`): None, and :meth:`finish_fit`
        gives them. None too when :meth:`ask` postponed the round (no fit: nothing new to learn).
        """
        assert self.teacher is not None, "run_round needs a simulated teacher"
        started = time.perf_counter()
        self.ask(target_pairs, env_step)
        if self.postponed_at == env_step:  # no new pair: nothing to answer, nothing new to fit
            self.time_s += time.perf_counter() - started
            return None
        if recent_returns is not None and recent_returns[1] > 0:
            mean_return, mean_length = recent_returns
            if hasattr(self.teacher, "set_return_scale"):  # optional in the Teacher protocol
                self.teacher.set_return_scale(mean_return * self.config.segment_length / mean_length)
        answer_pending(self.store, self.teacher, router=self.router if self.router.policy else None)
        self.time_s += time.perf_counter() - started
        self.start_fit(env_step, background=background)
        return None if background else self.finish_fit()

    def ask(self, target_pairs: int, env_step: int) -> int:
        """Select new pairs from the recent segments so that ``target_pairs`` have been asked; returns how many."""
        self.finish_fit()  # the disagreement below is the newest model's
        new_pairs = max(0, target_pairs - self.pairs_asked())
        if not new_pairs:
            return 0
        candidates = self.buffer.recent()
        n_gold = int(round(new_pairs * self.config.gold_fraction)) if self._asks_gold else 0
        if self.router.policy is not None and self._several_raters():  # enough gold pairs for probation checks
            missing = self.router.policy.probation_checks - self.store.count_gold_pairs()
            n_gold = min(max(n_gold, missing), new_pairs // 2)
            if n_gold == 0 and new_pairs >= 2 and self._someone_on_checks_only():
                n_gold = 1  # 5 % of a small round rounds to 0: a flagged rater would wait for the rest of the run
        # Until the first fit the ensemble is untrained: its scores would only add noise to the choice.
        probs = self.reward_model.preference_probs if self.fit_history else None
        try:
            pairs = self.query_rule(candidates, new_pairs - n_gold, self._rng, probs)
        except UnaskableSegmentsError as exc:
            # The first round has no model to go on with: say what to change. People's runs keep
            # the error too: a paced policy would wait for ever for answers to pairs never asked.
            if not self.pairs_asked() or self.teacher is None:
                raise NotEnoughSegmentsError(
                    f"label round at env step {env_step}: {exc} {too_few_segments_fix(self.config, self.buffer.longest_uncut_episode)}"
                ) from exc
            # The policy's own segments, e.g. every episode ends at once (a Blackjack policy that
            # always sticks): ending the run would lose its training, while the next rounds' new
            # segments may differ. The schedule's targets are cumulative, so a later round asks these.
            log.warning("step %d: this round's %d pairs are not asked: %s The next round asks them, "
                        "if the policy's segments show a difference by then.", env_step, new_pairs, exc.fact)
            self.postponed_at = env_step
            return 0
        except NotEnoughSegmentsError as exc:
            fix = too_few_segments_fix(self.config, self.buffer.longest_uncut_episode)
            if not candidates:  # the pair count is not the problem: say only what is
                raise NotEnoughSegmentsError(f"label round at env step {env_step} found no segment. {fix}") from exc
            raise NotEnoughSegmentsError(
                f"label round at env step {env_step} asks for {new_pairs} new pairs but only "
                f"{len(candidates)} segments have been recorded: {exc} {fix}"
            ) from exc
        golds = gold_pairs(candidates, n_gold, self._rng)
        # One transaction: raters answering meanwhile (on probation, checks first) never find the
        # round's pairs without its gold pairs.
        self.store.add_pairs(
            [*pairs, *(SegmentPair(left, right) for left, right, _ in golds)],
            labels_per_pair=self.config.raters_per_pair,
            gold_choices=[None] * len(pairs) + [choice for _, _, choice in golds],
        )
        self._pairs_asked += len(pairs) + len(golds)
        return len(pairs) + len(golds)

    def _someone_on_checks_only(self) -> bool:
        """Whether a rater gets gold checks only (flagged) and so waits for new gold pairs."""
        raters = set(self.store.rater_ids()) | self.router.known_raters
        return any(self.router.mode(rater) == "flagged" for rater in raters)

    def _several_raters(self) -> bool:
        """A crowd, or people of whom the run already knows two (checks start with a second rater)."""
        members = len(getattr(self.teacher, "members", None) or ())
        return max(members, self.background_raters, len(self.store.rater_ids())) >= 2

    def labels_so_far(self) -> int:
        return self.store.counts()["labels"]

    def wait_for_raters(self, done: Callable[[dict[str, int]], bool], what: str, env_step: int, curve: list) -> None:
        """Block until ``done(store.counts())``, saying every 10 s (terminal and app) what it waits for."""
        last_said = -math.inf
        while True:
            self.check_raters()
            counts = self.store.counts()
            if done(counts):
                return
            if time.monotonic() - last_said > 10:
                last_said = time.monotonic()
                message = f"waiting for raters: {counts['answered']} of {self.pairs_asked()} pairs answered; {what}"
                log.info("step %d: %s", env_step, message)
                self.publish_progress("waiting_for_labels", env_step, curve, message)
            time.sleep(0.5)

    def publish_progress(self, status: str, env_step: int, curve: list, message: str = "",
                         result: dict[str, float] | None = None) -> None:
        """The trainer's state for the rater app's status line and dashboard (run meta ``progress``);
        ``result``: a finished run's numbers (``eval_return_mean`` and what gives it context)."""
        self.store.set_meta("progress", strict_json({
            **(result or {}),
            "status": status,
            "env_step": int(env_step),
            "total_steps": int(self.config.steps or 0),
            "labels_asked": self.pairs_asked(),
            "fit_history": self.fit_history,
            "curve": curve,
            "updated_at": time.time(),
            "message": message,
        }))

    def publish_rater_reliability(self, env_step: int) -> None:
        """Each rater's estimated reliability after the last fit (run meta ``rater_reliability``,
        read by the dashboard); nothing when the plain loss was used (one rater, or ``rater_model="plain"``)."""
        estimates = self.trainer.rater_estimates
        if estimates is None:
            return
        cfg = self.config.reward_model
        flagged = sorted(e.rater_id for e in estimates if e.flagged)
        if flagged != self._flagged_raters:  # said when it changes, not every round
            self._flagged_raters = flagged
            log.warning("step %d: raters flagged as unreliable (estimated error rate >= %.2f; their labels get weight 0, "
                        "none is deleted): %s", env_step, cfg.flag_error_rate, ", ".join(flagged) or "none")
        self.store.set_meta("rater_reliability", strict_json({
            "env_step": int(env_step),
            "flag_error_rate": cfg.flag_error_rate,
            "prior_error_rate": cfg.random_response / 2,
            "updated_at": time.time(),
            "raters": [e.to_json() for e in estimates],
        }))

    def fit(self, env_step: int) -> dict[str, float]:
        """Train the reward model on every label so far, here and now; returns the fit's stats."""
        self.start_fit(env_step)
        stats = self.finish_fit()
        assert stats is not None
        return stats

    def start_fit(self, env_step: int, background: bool = False) -> None:
        """Begin a reward-model update on every label so far and its rescaling on the fixed
        reference set: in the :attr:`fitter`'s process when ``background`` and it is ready, else
        here and now (the same fit). :meth:`finish_fit` takes its result; a fit still pending is finished first."""
        self.finish_fit()
        started = time.perf_counter()
        self.labels_at_last_fit = self.labels_so_far()
        labeled: list[LabeledPair] | None = None
        pseudo: list[LabeledPair] = []
        if self.config.query.semi_supervised and self.fit_history:
            labeled = self.store.labeled_pairs()
            if labeled:  # SURF: the ensemble labels recent pairs it is sure about, for this fit only (never stored).
                pseudo = pseudo_labels(self.reward_model, self.buffer.recent(), len(labeled), self.config.query.confidence, self._rng)
        checks = tally_checks(self.store.rater_checks(kind="gold")) if self.router.policy else None
        # The correlation's segments are the ones recorded by now, wherever and whenever the fit ends.
        pending = _PendingFit(env_step, self.buffer.recent(200), FitJob(self.trainer, pseudo, checks, self.reference_pairs),
                              warm=self.config.reward_model.fits_warm(self.trainer.pairs_fitted))
        if background and self.fitter is not None:
            try:
                if self.fitter.ready():
                    self.fitter.submit(pending.job)
                    pending.in_background = True
            except BackgroundFitError as exc:
                self._stop_fitter(exc)
        if not pending.in_background:
            if background:  # held back until finish_fit, as the worker's would be
                pending.held = copy.deepcopy(self.trainer)
            self._fit_here(pending, labeled, pending.held)
        self._pending = pending
        self.time_s += time.perf_counter() - started

    @property
    def fit_started_at(self) -> int | None:
        """Env step of the fit not yet taken back by :meth:`finish_fit` (None: none pending)."""
        return self._pending.env_step if self._pending is not None else None

    @property
    def pending_fit_is_warm(self) -> bool:
        """Whether the fit not yet taken back started from a model already fitted on
        ``warm_after_labels`` labels (the warm fits of :class:`~prefloop.reward_models.RewardModelConfig`)."""
        return self._pending is not None and self._pending.warm

    def finish_fit(self) -> dict[str, float] | None:
        """Take the result of the fit :meth:`start_fit` began (waiting for the background process
        if it is still fitting) and record its stats; None if no fit is pending."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        started = time.perf_counter()
        if pending.in_background:
            assert self.fitter is not None
            try:
                outcome = self.fitter.result()
            except BackgroundFitError as exc:
                self._stop_fitter(exc)
                self._fit_here(pending)  # the trainer here never changed: the fit the worker would have done
            else:
                take_fit(self.trainer, outcome.trainer)
                pending.fit, pending.n_labeled = outcome.fit, outcome.n_labeled
                self.background_fit_s += outcome.wall_s
                self.background_cpu_s += outcome.cpu_s
        elif pending.held is not None:
            take_fit(self.trainer, pending.held)
        stats = self._fit_stats(pending)
        self.time_s += time.perf_counter() - started
        return stats

    def _fit_here(
        self, pending: "_PendingFit", labeled: list[LabeledPair] | None = None, trainer: RewardTrainer | None = None,
    ) -> None:
        """Do ``pending``'s fit in this process, on ``trainer`` (default: the run's own, so at once)."""
        labeled = labeled if labeled is not None else self.store.labeled_pairs()
        job = pending.job
        pending.fit = fit_on_labels(trainer or self.trainer, labeled, job.pseudo, job.checks, job.reference_pairs)
        pending.n_labeled = len(labeled)

    def _fit_stats(self, pending: "_PendingFit") -> dict[str, float]:
        fit, env_step = pending.fit, pending.env_step
        if fit is None:
            # Every answer so far was "can't tell" (a skip teacher early on, or raters unsure):
            # nothing to learn from yet, so the reward model stays as it is.
            log.warning(
                "step %d: no usable labels yet: all %d answers were \"can't tell\"; the reward model "
                "is not retrained until a pair gets a left/right/equal answer", env_step, self.labels_at_last_fit,
            )
        else:
            self.publish_rater_reliability(env_step)
        corr = {"pearson": math.nan, "spearman": math.nan}
        if pending.recent:  # empty right after a resume
            corr = correlations(self.reward_model.predict_segment_returns(pending.recent), [s.true_return for s in pending.recent])
        stats = {
            "env_step": float(env_step),
            "labels": float(pending.n_labeled),
            "train_loss": fit.train_loss if fit is not None else math.nan,
            "val_accuracy": fit.val_accuracy if fit is not None and fit.val_accuracy is not None else math.nan,
            "val_pairs": float(fit.n_val) if fit is not None else 0.0,
            "segment_return_pearson": corr["pearson"],
            "segment_return_spearman": corr["spearman"],
            "pseudo_labels": float(len(pending.job.pseudo)),
        }
        self.fit_history.append(stats)
        return stats

    def _stop_fitter(self, why: Exception) -> None:
        log.warning("%s: the reward model is fitted in the trainer's process from now on (no label is lost)", why)
        self.close()  # no fit is pending here: finish_fit took it, or start_fit had not set it yet

    def close(self) -> None:
        """Stop the background fitter, if any (a pending fit's result is not taken)."""
        self._pending = None
        if self.fitter is not None:
            self.fitter.close()
            self.fitter = None


@dataclass
class _PendingFit:
    """A fit begun by :meth:`PreferenceLearner.start_fit`: ``fit``/``n_labeled`` are set once it is done."""

    env_step: int
    recent: list[Segment]
    job: FitJob
    warm: bool = False  # started from a model fitted on warm_after_labels labels or more
    in_background: bool = False
    held: RewardTrainer | None = None  # fitted here on a copy, taken by finish_fit (deferred fits)
    fit: FitStats | None = None
    n_labeled: int = 0


def gold_pairs(candidates: list[Segment], n: int, rng: np.random.Generator) -> list[tuple[Segment, Segment, Choice]]:
    """``n`` quality-control pairs with an obvious answer: of 20 random pairs each, the one whose
    true returns differ most, with the answer the true return gives."""
    out = []
    for _ in range(n if len(candidates) >= 2 else 0):
        draws = [tuple(rng.choice(len(candidates), size=2, replace=False)) for _ in range(20)]
        i, j = max(draws, key=lambda d: abs(candidates[d[0]].true_return - candidates[d[1]].true_return))
        left, right = candidates[i], candidates[j]
        if left.true_return != right.true_return:
            out.append((left, right, Choice.RIGHT if right.true_return > left.true_return else Choice.LEFT))
    return out


def too_few_segments_fix(config: TrainConfig, longest_uncut_episode: int = 0) -> str:
    """What to change when a round finds too few segments: when each env gets fewer steps than
    one segment, that is the cause (--n-envs, --steps or --segment-length), not the labels; so it
    is when episodes were cut off (``longest_uncut_episode`` steps at most, see
    :class:`~prefloop.envs.SegmentBuffer`) before a segment fitted: an env that truncates its own
    episodes, with no registered time limit for the default segment length to fit in."""
    steps, n_envs, length = config.steps or 0, config.n_envs or 1, config.segment_length or 0
    if steps // n_envs < length:
        return (f"Each of the {n_envs} envs gets {steps // n_envs} of the {steps} steps, fewer than one "
                f"segment ({length} steps): use fewer --n-envs, a shorter --segment-length or more --steps "
                "(TrainConfig n_envs / segment_length / steps from Python).")
    if longest_uncut_episode:
        return (f"Episodes were cut off (truncated) after at most {longest_uncut_episode} steps, fewer than one "
                f"segment ({length} steps), and gave no segment: use --segment-length "
                f"{max(1, longest_uncut_episode // 2)} or less (TrainConfig segment_length from Python), or register "
                "the env with max_episode_steps, which the default segment length fits in.")
    return (f"With --labels {config.labels} over {steps} steps, use fewer --labels or more --steps "
            "(TrainConfig labels / steps from Python).")
