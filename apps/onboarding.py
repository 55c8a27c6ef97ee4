"""Onboarding: a new rater first answers a few gold pairs (pairs with a known answer) and is told
after each which clip was better and why; their answers count as labels once they pass.

The run's ``onboarding`` setting (``prefloop raters onboarding --run-dir DIR --pairs 3 --pass 2``)
turns it on. Onboarding answers are practice: they are never stored as labels, so nothing a rater
gives before passing reaches the reward model. Passing is recorded on the rater
(``PreferenceStore.set_onboarded``); a rater who fails starts again with the same pairs.

"Why" comes from the guideline page: an example ``![caption](pair:N)`` of that gold pair gives its
caption; otherwise the run's one-line question with the known answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefloop.apps.dashboard import json_object
from prefloop.apps.guideline import ExampleBlock, render_guideline

from prefloop.types import Choice

ONBOARDING_META = "onboarding"

_WORDS = {Choice.LEFT: "the left clip was better", Choice.RIGHT: "the right clip was better",
          Choice.EQUAL: "both clips were about the same"}


@dataclass(frozen=True)
class OnboardingPlan:
    """``pairs`` gold pairs to practise on, ``to_pass`` of them right to pass."""

    pairs: int = 3
    to_pass: int = 2


def parse_onboarding(raw: str | None) -> OnboardingPlan | None:
    """The run's ``onboarding`` meta, or None (off, unset or unreadable)."""
    data = json_object(raw)
    if data is None:
        return None
    pairs, to_pass = data.get("pairs"), data.get("pass")
    if not (isinstance(pairs, int) and isinstance(to_pass, int) and 0 < to_pass <= pairs <= 50):
        return None
    return OnboardingPlan(pairs, to_pass)


@dataclass(frozen=True)
class Feedback:
    correct: bool
    text: str


@dataclass
class Onboarding:
    """One rater's practice round: which gold pair comes next, the feedback, pass or fail.

    Args:
        plan: how many pairs and how many right to pass.
        gold: ``(pair_id, known choice)`` of the run's gold pairs that can be shown, oldest first.
        reasons: a reason per pair id (from the guideline's examples).
        question: the run's one-line question, for pairs without a reason.
    """

    plan: OnboardingPlan
    gold: list[tuple[int, Choice]]
    reasons: dict[int, str] = field(default_factory=dict)
    question: str = ""
    answers: list[bool] = field(default_factory=list)

    @property
    def pairs(self) -> list[tuple[int, Choice]]:
        return self.gold[: self.plan.pairs]

    @property
    def available(self) -> bool:
        """Enough gold pairs to onboard anyone; without them raters are not held back."""
        return len(self.pairs) >= self.plan.to_pass

    def next_pair(self) -> int | None:
        return None if self.finished else self.pairs[len(self.answers)][0]

    @property
    def finished(self) -> bool:
        return len(self.answers) >= len(self.pairs)

    @property
    def passed(self) -> bool:
        return self.finished and sum(self.answers) >= self.plan.to_pass

    def answer(self, choice: Choice) -> Feedback:
        """Record the answer to :meth:`next_pair` and say whether it was right, and why."""
        pair_id, known = self.pairs[len(self.answers)]
        correct = choice is known
        self.answers.append(correct)
        why = self.reasons.get(pair_id) or (f"{self.question} -- here {_WORDS[known]}." if self.question else "")
        head = f"Right: {_WORDS[known]}." if correct else f"Not quite: {_WORDS[known]}."
        return Feedback(correct, f"{head} {why}".strip())

    def restart(self) -> None:
        self.answers = []


def start_onboarding(store: Any, question: str) -> Onboarding | None:
    """The practice round for this run, or None when onboarding is off."""
    plan = parse_onboarding(store.get_meta(ONBOARDING_META))
    if plan is None:
        return None
    gold = [(pid, choice) for pid, choice in store.gold_pairs() if choice is not Choice.CANT_TELL]
    reasons: dict[int, str] = {}
    page = store.get_meta("guideline_page")
    if page:
        for block in render_guideline(page):
            if isinstance(block, ExampleBlock) and block.caption:
                reasons.setdefault(block.pair_id, block.caption)
    return Onboarding(plan, gold, reasons, question)
