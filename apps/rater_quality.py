"""How far the run can trust its raters, what their labels cost, and how they are doing.

Plain functions over :class:`~prefloop.types.Label` lists (tested without Streamlit) and one
dashboard section, :func:`render_rater_quality`:

- agreement as Krippendorff's alpha (nominal) beside raw agreement, and each rater's
  self-consistency on repeat pairs (the same two clips asked twice, in either order);
- the server's flags on labels (``too_fast``, ``time_cut``) per rater: data, never deletions;
- a fatigue signal per rater: response-time and gold-accuracy drift over their latest session;
- cost: rating hours, cost per label, total cost, and true return gained per human hour and per
  unit of cost, from the run's ``cost`` setting (``prefloop raters cost``).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prefloop.apps.dashboard import json_object

from prefloop.cost import CostSettings, cost_settings_from, per
from prefloop.types import Choice, Label

SESSION_GAP_S = 10 * 60.0  # labels further apart than this belong to different rating sessions
COST_META = "cost"


# -- agreement ---------------------------------------------------------------------------------


def krippendorff_alpha(units: Iterable[Sequence[object]]) -> float | None:
    """Krippendorff's alpha for nominal data: ``units`` are the values given to each item (here:
    the choices of every rater on one pair). Units with fewer than two values carry no
    information and are left out. 1 is perfect agreement, 0 is chance, below 0 systematic
    disagreement; None when there is nothing to compare or only one value was ever given."""
    coincidence: Counter[tuple[object, object]] = Counter()
    for values in units:
        m = len(values)
        if m < 2:
            continue
        # Every ordered pair of the unit's values, counted from the value counts rather than
        # enumerated: a pair with 10^5 labels (an imported dataset) stays linear.
        counts = Counter(values)
        for a, count_a in counts.items():
            for b, count_b in counts.items():
                pairs = count_a * (count_a - 1) if a == b else count_a * count_b
                if pairs:
                    coincidence[(a, b)] += pairs / (m - 1)
    n = sum(coincidence.values())
    if n <= 1:
        return None
    totals: Counter[object] = Counter()
    for (a, _), count in coincidence.items():
        totals[a] += count
    observed = sum(count for (a, b), count in coincidence.items() if a != b) / n
    expected = sum(totals[a] * totals[b] for a in totals for b in totals if a != b) / (n * (n - 1))
    if expected == 0:
        return None
    return 1.0 - observed / expected


def pair_alpha(labels: Iterable[Label]) -> float | None:
    """:func:`krippendorff_alpha` over the run's pairs ("can't tell" left out)."""
    by_pair: dict[int, list[str]] = defaultdict(list)
    for label in labels:
        if label.choice is not Choice.CANT_TELL:
            by_pair[label.pair_id].append(label.choice.value)
    return krippendorff_alpha(by_pair.values())


@dataclass(frozen=True)
class Consistency:
    rater_id: str
    repeats: int  # pairs of answers by this rater on the same two clips
    consistent: int

    @property
    def share(self) -> float | None:
        return self.consistent / self.repeats if self.repeats else None


_MIRRORED = {Choice.LEFT: Choice.RIGHT, Choice.RIGHT: Choice.LEFT, Choice.EQUAL: Choice.EQUAL}


def self_consistency(labels: Iterable[Label], pair_segments: Mapping[int, tuple[int, int]]) -> list[Consistency]:
    """Per rater: how often they gave the same answer when the same two clips came twice (a
    repeat pair, possibly with left and right swapped). ``pair_segments`` maps pair id to its
    ``(left segment id, right segment id)``."""
    seen: dict[tuple[str, frozenset[int]], list[Choice]] = defaultdict(list)
    for label in labels:
        segments = pair_segments.get(label.pair_id)
        if segments is None or label.choice is Choice.CANT_TELL:
            continue
        left, right = segments
        # Normalise to the orientation (smaller segment id on the left).
        choice = label.choice if left <= right else _MIRRORED[label.choice]
        seen[(label.rater_id, frozenset(segments))].append(choice)
    repeats: Counter[str] = Counter()
    consistent: Counter[str] = Counter()
    for (rater, _), choices in seen.items():  # counted, not enumerated (linear in labels)
        repeats[rater] += len(choices) * (len(choices) - 1) // 2
        consistent[rater] += sum(k * (k - 1) // 2 for k in Counter(choices).values())
    return sorted((Consistency(r, repeats[r], consistent[r]) for r in repeats), key=lambda c: c.rater_id)


def with_repeat_checks(consistency: Iterable[Consistency], checks: Iterable[Any]) -> dict[str, Consistency]:
    """Per rater, ``consistency`` (repeated pairs in the queue) plus their answered repeat checks
    (:mod:`prefloop.store.rater_checks`: an earlier pair shown again, swapped; it agrees when the
    answer matches their label)."""
    merged = {c.rater_id: c for c in consistency}
    for check in checks:
        if check.kind != "repeat":
            continue
        old = merged.get(check.rater_id, Consistency(check.rater_id, 0, 0))
        merged[check.rater_id] = Consistency(check.rater_id, old.repeats + 1, old.consistent + int(check.agrees))
    return merged


# -- flags and fatigue ---------------------------------------------------------------------------


def flag_counts(labels: Iterable[Label], flags: Mapping[int, Mapping[str, object]]) -> dict[str, Counter[str]]:
    """``{rater: Counter(flag -> labels)}`` for the run's live labels."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for label in labels:
        for flag in flags.get(label.id if label.id is not None else -1, {}):
            counts[label.rater_id][flag] += 1
    return dict(counts)


def sessions_of(labels: Sequence[Label], gap_s: float = SESSION_GAP_S) -> list[list[Label]]:
    """One rater's labels split into rating sessions (a pause longer than ``gap_s`` starts a new
    one), oldest first."""
    # A label whose time is NaN or infinite (a damaged or edited store) belongs to no session.
    ordered = sorted((l for l in labels if math.isfinite(l.created_at)), key=lambda l: l.created_at)
    sessions: list[list[Label]] = []
    for label in ordered:
        if sessions and label.created_at - sessions[-1][-1].created_at <= gap_s:
            sessions[-1].append(label)
        else:
            sessions.append([label])
    return sessions


@dataclass(frozen=True)
class Fatigue:
    """Drift over a rater's latest session: ``time_ratio`` is the median response time of its last
    third over its first third (above 1: slowing down; well below 1: rushing), ``gold_change`` the
    gold accuracy of its second half minus its first (None without 2 gold answers per half)."""

    rater_id: str
    labels: int
    minutes: float
    time_ratio: float | None
    gold_change: float | None

    @property
    def tired(self) -> bool:
        return (self.time_ratio is not None and not 0.5 <= self.time_ratio <= 2.0) or (
            self.gold_change is not None and self.gold_change <= -0.25
        )


def fatigue(labels: Iterable[Label], gold: Mapping[int, Choice], min_labels: int = 6) -> list[Fatigue]:
    """:class:`Fatigue` of each rater's latest session with at least ``min_labels`` labels."""
    by_rater: dict[str, list[Label]] = defaultdict(list)
    for label in labels:
        by_rater[label.rater_id].append(label)
    rows = []
    for rater, items in sorted(by_rater.items()):
        sessions = sessions_of(items)
        session = sessions[-1] if sessions else []  # none: every label's time is not finite
        if len(session) < min_labels:
            continue
        third = len(session) // 3
        early = statistics.median(l.response_time_s for l in session[:third])
        late = statistics.median(l.response_time_s for l in session[-third:])
        ratio = late / early if early > 0 else None
        half = len(session) // 2
        rows.append(Fatigue(
            rater_id=rater,
            labels=len(session),
            minutes=(session[-1].created_at - session[0].created_at) / 60.0,
            time_ratio=ratio,
            gold_change=_gold_change(session[:half], session[half:], gold),
        ))
    return rows


def _gold_change(first: Sequence[Label], second: Sequence[Label], gold: Mapping[int, Choice]) -> float | None:
    def accuracy(items: Sequence[Label]) -> float | None:
        answered = [l for l in items if l.pair_id in gold and l.choice is not Choice.CANT_TELL]
        if len(answered) < 2:
            return None
        return sum(l.choice is gold[l.pair_id] for l in answered) / len(answered)

    a, b = accuracy(first), accuracy(second)
    return None if a is None or b is None else b - a


# -- cost ------------------------------------------------------------------------------------------


def parse_cost(raw: str | None) -> CostSettings | None:
    """The run's ``cost`` meta (JSON), or None when unset or unreadable."""
    return cost_settings_from(json_object(raw))


def rating_hours(labels: Iterable[Label], gap_s: float = SESSION_GAP_S) -> float:
    """Human hours spent rating: per rater and session, from when the first pair was shown (its
    answer time minus its response time) to the last answer."""
    by_rater: dict[str, list[Label]] = defaultdict(list)
    for label in labels:
        by_rater[label.rater_id].append(label)
    seconds = 0.0
    for items in by_rater.values():
        for session in sessions_of(items, gap_s):
            seconds += session[-1].created_at - (session[0].created_at - session[0].response_time_s)
    return seconds / 3600.0


@dataclass(frozen=True)
class CostSummary:
    labels: int
    hours: float
    total: float | None
    per_label: float | None
    return_gain: float | None  # true return, last evaluation minus first
    gain_per_hour: float | None
    gain_per_cost: float | None
    currency: str


def cost_summary(labels: Sequence[Label], settings: CostSettings | None, curve: Sequence[Mapping[str, Any]] = ()) -> CostSummary:
    """Cost of the run's labels and the true return they bought (``curve``: the trainer's
    ``{"env_step", "true_return"}`` points)."""
    hours = rating_hours(labels)
    total = None if settings is None else settings.total(len(labels), hours)
    returns = [float(c["true_return"]) for c in curve
               if isinstance(c.get("true_return"), (int, float)) and math.isfinite(c["true_return"])]
    gain = returns[-1] - returns[0] if len(returns) >= 2 else None
    return CostSummary(
        labels=len(labels),
        hours=hours,
        total=total,
        per_label=per(total, len(labels)),
        return_gain=gain,
        gain_per_hour=per(gain, hours),
        gain_per_cost=per(gain, total),
        currency=settings.currency if settings else "USD",
    )


# -- the dashboard section ---------------------------------------------------------------------


def render_rater_quality(store: Any, labels: Sequence[Label], gold: Mapping[int, Choice], curve: Sequence[Mapping[str, Any]]) -> None:
    """The dashboard's section on raters: agreement (alpha), consistency, flags, fatigue, cost."""
    import pandas as pd
    import streamlit as st

    from prefloop.untrusted import plain_text

    st.subheader("Rater quality")
    left, right = st.columns(2)
    alpha = pair_alpha(labels)
    left.metric("Krippendorff's alpha", "–" if alpha is None else f"{alpha:.2f}",
                help="Agreement between raters beyond chance (1: perfect, 0: chance), beside the raw share above")
    segments = {lp.pair_id: (lp.left.id, lp.right.id) for lp in store.labeled_pairs() if lp.pair_id is not None}
    checks = store.rater_checks()
    consistency = with_repeat_checks(self_consistency(labels, segments), checks)
    gold_checks = Counter(c.rater_id for c in checks if c.kind == "gold")
    gold_right = Counter(c.rater_id for c in checks if c.kind == "gold" and c.agrees)
    flags = flag_counts(labels, store.label_flags())
    tired = {f.rater_id: f for f in fatigue(labels, gold)}
    per_rater = Counter(l.rater_id for l in labels)
    per_rater.update({r: 0 for r in gold_checks if r not in per_rater})  # raters with checks only
    if per_rater:
        def fmt(value: float | None, pattern: str) -> str:
            return "–" if value is None else format(value, pattern)

        frame = pd.DataFrame({
            "rater": [plain_text(r, 40) for r in per_rater],
            "labels": list(per_rater.values()),
            "too fast": [flags.get(r, Counter())["too_fast"] for r in per_rater],
            "time cut": [flags.get(r, Counter())["time_cut"] for r in per_rater],
            "gold checks right": [f"{gold_right[r]}/{gold_checks[r]}" if gold_checks[r] else "–" for r in per_rater],
            "self-consistency": [fmt(consistency[r].share if r in consistency else None, ".0%") for r in per_rater],
            "time drift": [fmt(tired[r].time_ratio if r in tired else None, ".2f") for r in per_rater],
            "gold drift": [fmt(tired[r].gold_change if r in tired else None, "+.0%") for r in per_rater],
            "fatigue": ["yes" if r in tired and tired[r].tired else "" for r in per_rater],
        }).set_index("rater")
        st.dataframe(frame, width="stretch")
        st.caption("gold checks: pairs with a known answer asked only to measure the rater (not labels) · "
                   "self-consistency: the same answer when an earlier pair came again, swapped · "
                   "too fast: answered in less than half the clip's length (server clock) · time cut: the "
                   "browser claimed more time than the server saw · time drift: median response time late "
                   "in the latest session over early · flagged labels are kept and can be weighted in the loss.")
    summary = cost_summary(labels, parse_cost(store.get_meta(COST_META)), curve)
    cols = right.columns(2)
    cols[0].metric("Rating hours", f"{summary.hours:.2f}")
    if summary.total is None:
        cols[1].metric("Cost", "–", help="Set a rate: prefloop raters cost --run-dir DIR --hourly-rate 20")
    else:
        cols[1].metric("Total cost", f"{summary.total:,.2f} {summary.currency}")
        cols = right.columns(2)
        cols[0].metric("Cost per label", "–" if summary.per_label is None else f"{summary.per_label:.3f} {summary.currency}")
        cols[1].metric("Return per unit of cost", "–" if summary.gain_per_cost is None else f"{summary.gain_per_cost:.2f}")
    right.metric("True return gained per human hour", "–" if summary.gain_per_hour is None else f"{summary.gain_per_hour:.1f}")
