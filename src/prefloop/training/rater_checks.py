"""Which pair a rater gets next: a check (to measure them) or a pair from the queue (a label).

Checks (:mod:`prefloop.store.rater_checks`) are pairs asked only to measure a rater: gold pairs
(is the rater right?) and repeats of their own earlier pairs, swapped (do they answer the same?).
They are not labels and not part of the label budget. With per-rater reliability
(``rater_model="reliability"``) and gold pairs in the run, three rules decide:

- **Probation.** A rater's first ``probation_checks`` answers are gold checks. So every rater's
  reliability rests on known answers from their first minute, instead of on ~10 labels that a
  barely trained reward model has to judge -- in a Pendulum crowd with an adversarial rater that
  first judgement decided the run (docs/benchmarks.md).
- **Flagged raters answer gold checks only.** A rater whom the last reward-model fit flagged (their
  estimated error rate is at least ``flag_error_rate``), or, before any fit has judged them, whose
  gold checks alone put them there (posterior mean under the same Beta prior as the E-step), gets
  gold checks and no labels: the label budget goes to raters whose labels count. Their checks keep
  being scored, so a rater who improves is unflagged at a later fit and gets pairs again. Never
  everyone: while no other rater who answers (a simulated crowd's member, or someone with labels or
  checks; not an invited person who never came) is unflagged, a flagged rater still gets labels
  (the model cannot be learnt from nobody; the fit still down-weights them).
- **Repeats.** After every ``repeat_every`` labels a rater gets one of their own earlier pairs
  again, swapped: their self-consistency, shown on the dashboard and in ``prefloop raters list``.

All three apply once the run has a second rater (registered, with labels or checks, or a member of a
simulated crowd): one person
teaching an agent alone is not slowed down by checks. When no gold check is left for a rater (they have seen every gold pair), a rater on probation
takes pairs from the queue as usual; a flagged one gets nothing until new gold pairs come, unless
the queue has stood still for ``stalled_after_s`` (2 minutes: the others have left), when they take
its pairs -- labels the fit down-weights, rather than a run that waits for nobody.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from prefloop.reward_models.config import RewardModelConfig
from prefloop.store import PreferenceStore, RaterCheck
from prefloop.types import Choice, SegmentPair

RATER_RELIABILITY_META = "rater_reliability"
CHECK_POLICY_META = "check_policy"  # the run's CheckPolicy as JSON ("null": off), for the rater app

__all__ = [
    "CHECK_POLICY_META", "CheckPolicy", "RATER_RELIABILITY_META", "RaterRouter", "checks_error_rate",
    "publish_policy", "tally_checks",
]


@dataclass(frozen=True)
class CheckPolicy:
    """When a rater answers checks instead of labels (see the module docstring).

    Attributes:
        probation_checks: gold checks a new rater answers before their first label.
        repeat_every: one repeat check after every this many labels of a rater (0: none).
        flag_error_rate, prior_error_rate, prior_labels: as in the reward model's reliability
            model (:class:`prefloop.reward_models.config.RewardModelConfig`), so a rater is judged
            on gold checks alone by the same rule the fit uses.
        stalled_after_s: a flagged rater with no gold check left takes a pair from the queue
            once it has stood still this long (nobody else labelling): a down-weighted label
            beats a run that waits for raters who have left.
    """

    probation_checks: int = 5
    repeat_every: int = 20
    flag_error_rate: float = 0.3
    prior_error_rate: float = 0.05
    prior_labels: float = 5.0
    stalled_after_s: float = 120.0

    @classmethod
    def for_reward_model(cls, config: RewardModelConfig, probation_checks: int) -> "CheckPolicy | None":
        """The policy of a run whose reward model is ``config``; None with the plain loss (every
        rater alike: nobody is measured, nobody is routed) or ``probation_checks=0``."""
        if config.rater_model != "reliability" or probation_checks == 0:
            return None
        return cls(
            probation_checks=probation_checks,
            flag_error_rate=config.flag_error_rate,
            prior_error_rate=min(max(config.random_response / 2, 1e-3), 0.5),
            prior_labels=config.prior_labels,
        )

    @classmethod
    def from_json(cls, raw: str | None) -> "CheckPolicy | None":
        """A policy from run meta, or None when it is off, missing or not one we wrote."""
        try:
            data = json.loads(raw or "null")
            policy = cls(**data) if isinstance(data, dict) else None
        except (ValueError, TypeError):
            return None
        if policy is None or not (
            all(isinstance(v, int) and 0 <= v <= 1000 for v in (policy.probation_checks, policy.repeat_every))
            and all(isinstance(v, (int, float)) and 0 < v < 1e6
                    for v in (policy.flag_error_rate, policy.prior_error_rate, policy.prior_labels, policy.stalled_after_s))
        ):
            return None
        return policy


def publish_policy(store: PreferenceStore, policy: CheckPolicy | None) -> None:
    """Write the run's policy into its meta, where the rater app reads it (:meth:`RaterRouter.for_run`)."""
    store.set_meta(CHECK_POLICY_META, json.dumps(None if policy is None else asdict(policy)))


def tally_checks(checks: Iterable[RaterCheck]) -> dict[str, tuple[int, int]]:
    """Per rater: gold checks answered left or right, and how many of those were wrong ("equal"
    and "can't tell" are no mistake and no evidence; B-Pref never flips them). Repeats are skipped."""
    tally: dict[str, tuple[int, int]] = {}
    for check in checks:
        if check.kind == "gold" and check.choice in (Choice.LEFT, Choice.RIGHT):
            n, wrong = tally.get(check.rater_id, (0, 0))
            tally[check.rater_id] = (n + 1, wrong + (not check.agrees))
    return tally


def checks_error_rate(n_checks: int, n_wrong: int, policy: CheckPolicy) -> float:
    """Posterior mean of a rater's error rate from their gold checks alone (Beta prior, known answers)."""
    a = policy.prior_error_rate * policy.prior_labels
    return (a + n_wrong) / (policy.prior_labels + n_checks)


class RaterRouter:
    """Hands each rater their next pair: a check or a pair from the queue.

    Args:
        store: the run's store.
        policy: the rules; None hands out queue pairs only (``claim_next``).
        known_raters: raters the run knows will answer before they have (a simulated crowd's
            members); people are known once registered or once they have answered.
    """

    def __init__(self, store: PreferenceStore, policy: CheckPolicy | None, known_raters: Iterable[str] = ()) -> None:
        self.store = store
        self.policy = policy
        self.known_raters = frozenset(known_raters)

    @classmethod
    def for_run(cls, store: PreferenceStore, known_raters: Iterable[str] = ()) -> "RaterRouter":
        """The router of the run the store holds (its ``check_policy`` meta; off when missing or unreadable)."""
        return cls(store, CheckPolicy.from_json(store.get_meta(CHECK_POLICY_META)), known_raters)

    def claim(
        self, rater_id: str, lease_seconds: float = 120.0, *, exclude: Iterable[int] = (), with_clips: bool = False
    ) -> tuple[SegmentPair, bool] | None:
        """``(pair, is_check)`` for ``rater_id``, or None when there is nothing for them now.

        A check has no lease (answer it with ``store.answer_check``); a queue pair is leased for
        ``lease_seconds`` (answer it with ``store.answer``). ``exclude`` and ``with_clips`` as in
        :meth:`prefloop.store.PreferenceStore.claim_check`.
        """
        exclude = set(exclude)
        mode = self.mode(rater_id)
        if mode != "labels":
            kind = "repeat" if mode == "repeat" else "gold"
            check = self.store.claim_check(rater_id, kind, exclude=exclude, with_clips=with_clips)
            if check is not None:
                return check, True
            if mode == "flagged" and self.store.queue_stalled_for(rater_id) < self.policy.stalled_after_s:
                return None
        pair = self.store.claim_next(rater_id, lease_seconds, exclude=exclude)
        return None if pair is None else (pair, False)

    def mode(self, rater_id: str) -> str:
        """What the rater gets next: ``"labels"`` (a pair from the queue), ``"probation"`` (a gold
        check first), ``"flagged"`` (gold checks only) or ``"repeat"`` (a repeat check first)."""
        policy = self.policy
        raters = set(self.store.rater_ids()) | self.known_raters | {rater_id}
        if policy is None or len(raters) < 2:  # one person teaching an agent: nothing to tell apart
            return "labels"
        # This runs on every claim of the rater's next pair: read only this rater's checks, and
        # everyone's only when this rater is flagged and the others must be looked at.
        mine = self.store.rater_checks(rater_id)
        flags = self._fit_flags()
        tally = tally_checks(mine)

        def flagged(rater: str) -> bool:
            if rater in flags:
                return flags[rater]
            decided, wrong = tally.get(rater, (0, 0))
            return decided > 0 and checks_error_rate(decided, wrong, policy) >= policy.flag_error_rate

        if flagged(rater_id):
            tally = tally_checks(self.store.rater_checks())

            def can_take_over(other: str) -> bool:
                # An invited person who never came cannot: counting them left a lone failing rater
                # on gold checks only, and the run waiting for labels once those ran out.
                answering = (other in self.known_raters or other in flags or other in tally
                             or self.store.count_labels(other) > 0)
                return answering and not flagged(other)

            if any(can_take_over(other) for other in raters - {rater_id}):
                return "flagged"
        if policy.repeat_every:
            repeats = sum(c.kind == "repeat" for c in mine)
            if self.store.count_labels(rater_id) >= (repeats + 1) * policy.repeat_every:
                return "repeat"
        if sum(c.kind == "gold" for c in mine) < policy.probation_checks:
            return "probation"
        return "labels"

    def _fit_flags(self) -> dict[str, bool]:
        """Who the last fit flagged, by rater; raters no fit has judged are absent."""
        try:
            data = json.loads(self.store.get_meta(RATER_RELIABILITY_META) or "{}")
        except ValueError:
            return {}
        raters = data.get("raters") if isinstance(data, dict) else None
        return {
            entry["rater_id"]: bool(entry.get("flagged"))
            for entry in (raters if isinstance(raters, list) else [])
            if isinstance(entry, dict) and isinstance(entry.get("rater_id"), str)
        }
