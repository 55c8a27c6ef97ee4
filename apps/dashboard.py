"""Numbers for the people running a run: label throughput, raters, agreement, gold accuracy, and
the trainer's progress (what it writes into the run's ``progress`` meta).

Plain functions over :class:`~prefloop.types.Label` lists and meta strings; the Streamlit page
that draws them is :func:`render_dashboard`.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prefloop.reward_models.reliability import RaterEstimate
from prefloop.reward_models.training import PREQUENTIAL_WINDOW
from prefloop.types import Choice, Label
from prefloop.untrusted import plain_text

log = logging.getLogger("prefloop.apps")

TRAINER_STATUS_WORDS = {
    "training": "The trainer is training the agent; it will ask for more comparisons soon.",
    "waiting_for_labels": "The trainer is waiting for your comparisons.",
    "evaluating": "Labelling is over; the trainer is evaluating the agent.",
    "finished": "Training has finished. Thank you for your help!",
}


@dataclass(frozen=True)
class Progress:
    """The trainer's ``progress`` meta, every field optional (older or starting trainers)."""

    status: str | None = None
    env_step: int | None = None
    total_steps: int | None = None
    labels_asked: int | None = None
    fit_history: list[dict[str, Any]] = field(default_factory=list)
    curve: list[dict[str, Any]] = field(default_factory=list)
    updated_at: float | None = None
    message: str | None = None
    eval_return: float | None = None  # a finished run's evaluation return (``eval_return_mean``)
    random_return: float | None = None  # a random policy's return on the same env, for context
    reward_threshold: float | None = None  # the env's "solved" return (its Gymnasium spec), if it has one

    @property
    def fraction_done(self) -> float | None:
        if self.env_step is None or not self.total_steps:
            return None
        return min(1.0, max(0.0, self.env_step / self.total_steps))


def json_object(raw: str | None) -> dict[str, Any] | None:
    """A meta value read as a JSON object; None when missing, not JSON, or not an object."""
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def parse_progress(raw: str | None) -> Progress | None:
    """Read the ``progress`` meta value; None when missing or not a JSON object. Fields of the
    wrong type are dropped rather than failing the page."""
    data = json_object(raw)
    if data is None:
        return None

    def number(key: str, kind: type) -> Any:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return kind(value)

    def rows(key: str) -> list[dict[str, Any]]:
        value = data.get(key)
        return [r for r in value if isinstance(r, dict)] if isinstance(value, list) else []

    status = data.get("status")
    message = data.get("message")
    return Progress(
        status=status if isinstance(status, str) else None,
        env_step=number("env_step", int),
        total_steps=number("total_steps", int),
        labels_asked=number("labels_asked", int),
        fit_history=rows("fit_history"),
        curve=rows("curve"),
        updated_at=number("updated_at", float),
        message=message if isinstance(message, str) else None,
        eval_return=number("eval_return_mean", float),
        random_return=number("random_return_mean", float),
        reward_threshold=number("reward_threshold", float),
    )


def describe_age(seconds: float) -> str:
    """'just now', '42 s ago', '5 min ago', '3 h ago'."""
    if seconds < 5:
        return "just now"
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.0f} h ago"


# How long without news before the page says no trainer runs: a waiting trainer publishes every
# 10 s; a training or evaluating one only after each reward-model fit or at the end (a long
# evaluation of a slow env may take minutes), so those states get a longer grace.
STALE_AFTER_S = {"waiting_for_labels": 60.0}
STALE_AFTER_DEFAULT_S = 600.0


def trainer_is_silent(progress: Progress, now: float) -> bool:
    """True when the trainer stopped saying anything long ago and the run is not finished: no
    trainer is running for it (stopped, crashed, or not yet resumed)."""
    if progress.status == "finished" or progress.updated_at is None:
        return False
    return now - progress.updated_at > STALE_AFTER_S.get(progress.status or "", STALE_AFTER_DEFAULT_S)


def trainer_status_line(progress: Progress | None, now: float | None = None) -> str:
    """One sentence on what the trainer is doing, for raters and the dashboard."""
    if progress is None:
        return "No news from the trainer yet."
    now = time.time() if now is None else now
    if trainer_is_silent(progress, now):
        done = f"; {progress.fraction_done:.0%} of training done" if progress.fraction_done is not None else ""
        return (f"No trainer is running for this run (last heard {describe_age(now - (progress.updated_at or now))}"
                f"{done}). Answers are kept; the run continues when its trainer is started again.")
    parts = [TRAINER_STATUS_WORDS.get(progress.status or "", f"Trainer status: {plain_text(progress.status or 'unknown', 40)}.")]
    if progress.fraction_done is not None and progress.status != "finished":
        parts.append(f"{progress.fraction_done:.0%} of training done.")
    if progress.message:  # the trainer's log line ("waiting for raters: ..."), here after a full stop
        message = plain_text(progress.message, 300)
        parts.append(message[:1].upper() + message[1:])
    if progress.updated_at is not None:
        parts.append(f"(updated {describe_age(max(0.0, now - progress.updated_at))})")
    return " ".join(parts)


# -- label statistics ------------------------------------------------------------------------


@dataclass(frozen=True)
class RaterRow:
    rater_id: str
    labels: int
    median_seconds: float
    cant_tell: int
    last_at: float


def rater_table(labels: Iterable[Label]) -> list[RaterRow]:
    """Per rater: live labels, median response time, "can't tell" answers, latest answer time;
    most labels first."""
    by_rater: dict[str, list[Label]] = defaultdict(list)
    for label in labels:
        by_rater[label.rater_id].append(label)
    rows = [
        RaterRow(
            rater_id=rater,
            labels=len(items),
            median_seconds=statistics.median(l.response_time_s for l in items),
            cant_tell=sum(1 for l in items if l.choice is Choice.CANT_TELL),
            last_at=max(l.created_at for l in items),
        )
        for rater, items in by_rater.items()
    ]
    return sorted(rows, key=lambda r: (-r.labels, r.rater_id))


MAX_CHART_HOURS = 24 * 21  # "labels per hour" shows at most the last three weeks
CLOCK_SKEW_S = 24 * 3600.0  # a label this far ahead of the dashboard's clock still counts


def is_datable(created_at: float, now: float) -> bool:
    """Whether a label's time can be shown: a finite unix time from 1970 up to ``now`` (plus
    :data:`CLOCK_SKEW_S`). Imported or hand-edited stores may hold NaN, the year 2286 or 1970."""
    return math.isfinite(created_at) and 0.0 <= created_at <= now + CLOCK_SKEW_S


def labels_per_hour(
    labels: Iterable[Label], now: float | None = None, max_hours: int = MAX_CHART_HOURS
) -> list[tuple[float, int]]:
    """``(hour start, labels)`` for every hour from the first label's to the last one's, zero
    hours included so a chart shows the gaps -- at most the ``max_hours`` hours up to the latest
    label, whatever the timestamps: labels that cannot be dated (:func:`is_datable`) and those
    older than the window are left out (:func:`labels_left_off_the_chart` counts them), so one
    label dated in 2286 or 1970 never makes millions of rows."""
    now = time.time() if now is None else now
    hours = Counter(int(l.created_at // 3600) for l in labels if is_datable(l.created_at, now))
    if not hours:
        return []
    last = max(hours)
    first = max(min(hours), last - max_hours + 1)
    return [(h * 3600.0, hours.get(h, 0)) for h in range(first, last + 1)]


def labels_left_off_the_chart(labels: Sequence[Label], rows: Sequence[tuple[float, int]], now: float) -> str | None:
    """A sentence on the labels :func:`labels_per_hour` did not show (``rows`` is what it
    returned), or None when it showed them all."""
    undatable = sum(1 for l in labels if not is_datable(l.created_at, now))
    older = len(labels) - undatable - sum(n for _, n in rows)
    parts = []
    if older:
        parts.append(f"{older} older than the {len(rows)} hours shown")
    if undatable:
        parts.append(f"{undatable} with a time that is not a date up to now (imported or edited)")
    return f"Not in the chart: {' and '.join(parts)}." if parts else None


def median_seconds_per_label(labels: Sequence[Label]) -> float | None:
    return statistics.median(l.response_time_s for l in labels) if labels else None


@dataclass(frozen=True)
class Agreement:
    """Agreement between raters on pairs with more than one informative label.

    ``pairwise`` is the share of rater pairs (two labels of one pair) that gave the same answer;
    ``unanimous`` the share of those pairs where every rater agreed. "Can't tell" is left out.
    """

    pairs: int
    comparisons: int
    pairwise: float | None
    unanimous: float | None


def agreement(labels: Iterable[Label]) -> Agreement:
    by_pair: dict[int, list[Choice]] = defaultdict(list)
    for label in labels:
        if label.choice is not Choice.CANT_TELL:
            by_pair[label.pair_id].append(label.choice)
    multi = [choices for choices in by_pair.values() if len(choices) > 1]
    agree = total = 0
    for choices in multi:  # counted, not enumerated: a pair with many labels stays linear
        n = len(choices)
        total += n * (n - 1) // 2
        agree += sum(k * (k - 1) // 2 for k in Counter(choices).values())
    unanimous = sum(1 for choices in multi if len(set(choices)) == 1)
    return Agreement(
        pairs=len(multi),
        comparisons=total,
        pairwise=agree / total if total else None,
        unanimous=unanimous / len(multi) if multi else None,
    )


@dataclass(frozen=True)
class GoldRow:
    rater_id: str
    correct: int
    answered: int  # gold pairs answered with something other than "can't tell"

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.answered if self.answered else None


def gold_accuracy(labels: Iterable[Label], gold: Mapping[int, Choice]) -> list[GoldRow]:
    """Per rater, how many gold pairs (known answer) they answered right."""
    correct: Counter[str] = Counter()
    answered: Counter[str] = Counter()
    for label in labels:
        expected = gold.get(label.pair_id)
        if expected is None or label.choice is Choice.CANT_TELL:
            continue
        answered[label.rater_id] += 1
        correct[label.rater_id] += label.choice is expected
    return sorted(
        (GoldRow(r, correct[r], answered[r]) for r in answered), key=lambda row: row.rater_id
    )


# -- the page ------------------------------------------------------------------------------------


def is_number(value: object) -> bool:
    """A finite number (progress JSON writes a metric not computed yet as null or NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def step_chart(frame: Any, y_title: str, percent: bool = False) -> Any:
    """An Altair line chart of ``frame`` (a pandas DataFrame with columns ``env step``, ``series``,
    ``value`` and optionally ``pairs``) over env steps, with a point per value so that a single
    one shows, and whole env steps on the axis (Vega-Lite labels a one-value axis "3,256.000000")."""
    import altair as alt  # Streamlit's own charting library

    tooltip = [c for c in ("env step", "series", "value", "pairs") if c in frame.columns]
    y_axis = alt.Axis(title=y_title, format="%") if percent else alt.Axis(title=y_title)
    y_scale = alt.Scale(domain=[0, 1]) if percent else alt.Scale(zero=False)
    return alt.Chart(frame).mark_line(point=True).encode(
        x=alt.X("env step:Q", axis=alt.Axis(format=",d", tickMinStep=1)),
        y=alt.Y("value:Q", scale=y_scale, axis=y_axis),
        color=alt.Color("series:N", legend=alt.Legend(title=None, orient="bottom") if frame["series"].nunique() > 1 else None),
        tooltip=tooltip,
    ).properties(height=260)


def render_dashboard(store: Any, now: float | None = None) -> None:
    """Draw the dashboard of ``store``'s run with Streamlit (charts rather than tables)."""
    import pandas as pd
    import streamlit as st

    now = time.time() if now is None else now
    labels = store.labels()
    counts = store.counts()
    progress = parse_progress(store.get_meta("progress"))
    gold = {
        lp.pair_id: lp.extra["gold_choice"]
        for lp in store.labeled_pairs()
        if lp.extra.get("gold_choice") is not None and lp.pair_id is not None
    }
    failed_clips = len(store.clip_errors())

    st.title("Run dashboard")
    # Run names, rater ids and messages come from the store (and imported datasets): plain text.
    st.text(f"Run {plain_text(store.run_name)} · {trainer_status_line(progress, now)}")

    recent = [l for l in labels if now - 3600 <= l.created_at <= now + CLOCK_SKEW_S]
    median = median_seconds_per_label(labels)
    cols = st.columns(5)
    cols[0].metric("Labels", f"{len(labels)}")
    cols[1].metric("Raters", f"{len({l.rater_id for l in labels})}")
    cols[2].metric("Labels in the last hour", f"{len(recent)}")
    cols[3].metric("Median seconds per label", "–" if median is None else f"{median:.1f}")
    cols[4].metric("Pairs waiting", f"{counts['pending'] + counts['claimed']}")
    if progress is not None and progress.fraction_done is not None:
        st.progress(progress.fraction_done, text=f"Training: env step {progress.env_step:,} of {progress.total_steps:,}")
    if failed_clips:
        st.warning(f"{failed_clips} clips could not be rendered; their pairs are not shown to raters.")

    left, right = st.columns(2)
    with left:
        st.subheader("Labels per hour")
        per_hour = labels_per_hour(labels, now)
        if per_hour:
            frame = pd.DataFrame(
                {"hour": pd.to_datetime([t for t, _ in per_hour], unit="s"), "labels": [n for _, n in per_hour]}
            ).set_index("hour")
            st.bar_chart(frame, y="labels", height=260)
        else:
            st.info("No labels yet." if not labels else "No label has a time that can be shown.")
        left_off = labels_left_off_the_chart(labels, per_hour, now)
        if left_off:
            st.caption(left_off)
    with right:
        st.subheader("Labels per rater")
        rows = rater_table(labels)
        if rows:
            frame = pd.DataFrame(
                {"rater": [plain_text(r.rater_id, 40) for r in rows], "labels": [r.labels for r in rows],
                 "median seconds": [round(r.median_seconds, 1) for r in rows]}
            ).set_index("rater")
            st.bar_chart(frame, y="labels", horizontal=True, height=260)
            st.text(" · ".join(f"{plain_text(r.rater_id, 40)}: {r.median_seconds:.1f} s median" for r in rows[:8]))
        else:
            st.info("No raters yet.")

    left, right = st.columns(2)
    with left:
        st.subheader("Reward model validation accuracy")
        st.caption("How often the model picked the clip a rater then chose, judged on each answer before "
                   f"the model learned from it (the newest {PREQUENTIAL_WINDOW} answers).")
        history = [h for h in (progress.fit_history if progress else []) if "env_step" in h]
        measured = [h for h in history if is_number(h.get("val_accuracy"))]
        if measured:
            frame = pd.DataFrame({"env step": [h["env_step"] for h in measured],
                                  "series": "validation accuracy",
                                  "value": [h["val_accuracy"] for h in measured],
                                  "pairs": [h.get("val_pairs") for h in measured]})
            # A fixed 0-100 % axis: a free one zooms into noise (0.98 vs 1.0 fills the chart).
            st.altair_chart(step_chart(frame, "validation accuracy", percent=True), use_container_width=True)
        elif history:
            st.info("No accuracy yet: the first fit learned every answer it had; the answers that come "
                    "after it are judged before the model learns them.")
        else:
            st.info("The trainer has not reported a reward-model fit yet.")
    with right:
        st.subheader("Policy return")
        curve = [c for c in (progress.curve if progress else []) if "env_step" in c]
        points = [{"env step": c["env_step"], "series": name, "value": c[key]}
                for c in curve for key, name in (("true_return", "true return"), ("learned_return", "learned return"))
                if is_number(c.get(key))]
        if points:
            st.altair_chart(step_chart(pd.DataFrame(points), "return"), use_container_width=True)
        else:
            st.info("No returns reported yet.")

    left, right = st.columns(2)
    with left:
        st.subheader("Agreement between raters")
        agree = agreement(labels)
        if agree.pairwise is None:
            st.info("No pair has been labelled by more than one rater yet.")
        else:
            st.metric("Same answer (rater pairs)", f"{agree.pairwise:.0%}",
                      help=f"{agree.comparisons} comparisons over {agree.pairs} pairs; can't tell left out")
            st.metric("Pairs where all raters agreed", f"{agree.unanimous:.0%}")
    with right:
        st.subheader("Accuracy on gold pairs")
        rows_gold = [row for row in gold_accuracy(labels, gold) if row.answered]
        # Labels only: a rater's gold checks (not labels) are in "Rater quality" below, and a rater
        # with 0/5 checks right there must not look contradicted by a 100% here.
        checks_note = (" Gold checks (gold pairs asked only to measure a rater, not labels) are under "
                       "Rater quality below." if store.rater_checks(kind="gold") else "")
        if rows_gold:
            frame = pd.DataFrame(
                {"rater": [plain_text(r.rater_id, 40) for r in rows_gold], "accuracy": [r.accuracy for r in rows_gold]}
            ).set_index("rater")
            st.bar_chart(frame, y="accuracy", horizontal=True, height=200)
            total_correct = sum(r.correct for r in rows_gold)
            total = sum(r.answered for r in rows_gold)
            st.caption(f"Labels on gold pairs, all raters: {total_correct} of {total} right "
                       f"({total_correct / total:.0%}).{checks_note}")
        else:
            st.info(f"No gold pair (a pair with a known answer) has been labelled yet.{checks_note}")

    from prefloop.apps.rater_quality import render_rater_quality

    render_rater_quality(store, labels, gold, [c for c in (progress.curve if progress else []) if "env_step" in c])
    render_rater_reliability(store.get_meta("rater_reliability"))


# -- per-rater reliability (what the reward model's fit estimated) -------------------------------


def parse_rater_reliability(raw: str | None) -> tuple[list[RaterEstimate], float | None]:
    """The raters' estimates in the ``rater_reliability`` meta (worst rater first) and its flag
    threshold; ``([], None)`` when there is none or it cannot be read (never an error on the page)."""
    try:
        data = json.loads(raw) if raw else None
        rows = [RaterEstimate.from_json(r) for r in (data or {}).get("raters", [])]
        threshold = float(data["flag_error_rate"]) if data else None
    except (ValueError, TypeError, KeyError, AttributeError):
        return [], None
    return sorted(rows, key=lambda r: -r.error_rate), threshold


def render_rater_reliability(raw: str | None) -> None:
    """A table of each rater's estimated error rate, with the flagged raters named (plain text)."""
    import pandas as pd
    import streamlit as st

    st.subheader("Rater reliability (estimated with the reward model)")
    rows, threshold = parse_rater_reliability(raw)
    if not rows:
        st.info("No per-rater estimate yet: it appears once labels from two or more raters have been fitted.")
        return
    frame = pd.DataFrame({
        "rater": [plain_text(r.rater_id, 40) for r in rows],
        "labels": [r.labels for r in rows],
        "error rate": [round(r.error_rate, 3) for r in rows],
        "90% interval": [f"{r.error_rate_low:.2f} – {r.error_rate_high:.2f}" for r in rows],
        "temperature β": [round(r.temperature, 2) for r in rows],
        "β 90% interval": [f"{r.temperature_low:.2f} – {r.temperature_high:.2f}" for r in rows],
        "weight in the fit": [round(r.weight, 2) for r in rows],
        "flagged": ["yes" if r.flagged else "" for r in rows],
    })
    st.dataframe(frame, hide_index=True)  # cells are plain text: a rater id never renders as Markdown
    st.caption("Temperature β: how sharply a rater tells close clips apart, relative to the reward model's "
               "scale (above 1 sharper, below 1 closer to a coin on close calls); it stays near 1 until a "
               "rater's labels say otherwise.")
    flagged = [r for r in rows if r.flagged]
    if flagged:
        st.warning(
            f"{len(flagged)} rater(s) err at least {threshold:.0%} of the time by the estimate; their labels "
            "get weight 0 in the reward model (kept, not deleted):"
        )
        st.text(", ".join(plain_text(r.rater_id, 40) for r in flagged))  # names as text, never Markdown
