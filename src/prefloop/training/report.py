"""Human-readable end-of-run summaries."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from prefloop.reward_models.training import PREQUENTIAL_WINDOW
from prefloop.training.algos import algorithm_name

if TYPE_CHECKING:
    from prefloop.training.loop import RunResult


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _steps_text(result: "RunResult") -> str:
    """The env steps the run took; the algorithm learns in whole rollouts, so it may overshoot ``steps``."""
    asked = result.config.steps
    ran = result.env_steps if result.env_steps is not None else asked
    if asked is None or ran == asked:
        return f"{ran:,}" if ran is not None else "-"
    return f"{ran:,} (asked {asked:,}; the algorithm finishes the rollout it is in)"


def validation_text(fit_stats: Mapping[str, float], held_out: bool) -> str:
    """A fit's validation accuracy with the number of pairs it is measured on ("0.50 on 2 pairs"
    says what a bare 0.50 hides early in a run), or "not yet" before any pair was measured.

    ``held_out``: the reward model keeps a validation split (``val_fraction > 0``). Without one
    (the default) every label is trained on and the accuracy is prequential: each pair is judged
    once, before the fit that learns it, so the text says that instead of "held-out".
    """
    accuracy, pairs = fit_stats.get("val_accuracy", math.nan), fit_stats.get("val_pairs")
    if accuracy is None or not math.isfinite(accuracy):
        return "not yet"
    if pairs is None:  # fit stats written before the count was recorded
        return f"{accuracy:.2f}"
    count = int(pairs)
    if held_out:
        return f"{accuracy:.2f} on {count} held-out pair{'' if count == 1 else 's'}"
    if count == 1:
        return f"{accuracy:.2f} on 1 pair (judged before the model learned it)"
    return f"{accuracy:.2f} on {count} pairs (each judged before the model learned it)"


def _prequential_note(fit_stats: Mapping[str, float], held_out: bool, labels_used: int) -> str:
    """Why a prequential accuracy rests on fewer pairs than the run's labels (a new user asked:
    "13 pairs of 30 labels?"): the first round has no earlier model to judge it, ties are not
    right or wrong, and only the newest ``PREQUENTIAL_WINDOW`` count. Empty when nothing is missing."""
    pairs = fit_stats.get("val_pairs")
    if held_out or pairs is None or not math.isfinite(pairs) or int(pairs) >= labels_used or int(pairs) == 0:
        return ""
    window = f", and all but the newest {PREQUENTIAL_WINDOW}" if labels_used > PREQUENTIAL_WINDOW else ""
    return f"; not judged: the first round's pairs and ties{window}"


def final_validation_text(fit_stats: Mapping[str, float], held_out: bool, labels_used: int) -> str:
    """:func:`validation_text` at the end of a run, with why fewer pairs than labels were judged;
    no pair judged at all is "none" and why, not "not yet": no fit is coming (MountainCar-v0's
    or FrozenLake-v1's oracle labels early on are all ties)."""
    text = validation_text(fit_stats, held_out)
    if text != "not yet":
        return text + _prequential_note(fit_stats, held_out, labels_used)
    if held_out:
        return "none: no held-out pair had a preferred clip (ties are not judged)"
    return "none: no pair answered after the first round had a preferred clip (ties and the first round's pairs are not judged)"


def _final_correlation_text(value: float | None) -> str:
    """The learned-vs-true segment-return correlation; undefined (:func:`prefloop.metrics.correlations`)
    when the true or the learned returns do not vary (a reward of -1 every step, as MountainCar-v0's;
    a model that learnt nothing from ties) or fewer than 3 segments were recent."""
    text = _fmt(value)
    return text if text != "-" else "- (undefined: the recent segments' true or learned returns do not vary)"


def run_summary_rows(result: "RunResult") -> list[tuple[str, str]]:
    config = result.config
    rows = [
        ("env", config.env_id),
        ("algorithm", algorithm_name(config.algo) if config.algo is not None else "-"),
        ("reward", "learned from preferences" if config.reward_source == "preferences" else "true env reward"),
        ("env steps", _steps_text(result)),
        ("eval return (true reward)", f"{_fmt(result.eval_return_mean, 1)} ± {_fmt(result.eval_return_std, 1)} over {len(result.eval_returns)} episodes"),
        ("wall time", f"{result.wall_time_s:.1f} s ({result.cpu_time_s:.1f} s CPU)"),
    ]
    if config.reward_source == "preferences":
        rm = result.reward_model
        rows += [
            ("teacher", config.teacher_name),
            ("labels used", str(result.labels_used)
             + (f" ({result.labels_fitted} in the last reward-model fit)" if result.labels_fitted != result.labels_used else "")),
            ("reward-model val accuracy", final_validation_text(rm, config.reward_model.val_fraction > 0, result.labels_used)),
            ("learned vs true segment return (Pearson)", _final_correlation_text(rm.get("segment_return_pearson"))),
            ("time in reward learning", f"{result.reward_learning_time_s:.1f} s"
             + (f" (and {result.background_fit_s:.1f} s of fits in a second process, while the policy trained)"
                if result.background_fit_s else "")),
        ]
        if result.human_time.get("answer_s", 0) >= 1:  # people, or a simulated teacher at human pace
            rows.append(("rater time", f"{result.human_time['span_s'] / 60:.1f} min from the first pair to the last answer "
                                       f"({result.human_time['answer_s'] / 60:.1f} min answering)"))
        if result.pairs_withdrawn:
            rows.append(("pairs withdrawn", f"{result.pairs_withdrawn} (unanswered when training ended; kept, never shown)"))
    return rows


def format_run_summary(result: "RunResult") -> str:
    rows = run_summary_rows(result)
    width = max(len(k) for k, _ in rows)
    lines = ["", "Run summary", "-" * (width + 40)]
    lines += [f"{key.ljust(width)}  {value}" for key, value in rows]
    lines += [f"{'run folder'.ljust(width)}  {result.config.run_dir}", ""]
    return "\n".join(lines)


def print_run_summary(result: "RunResult") -> None:
    print(format_run_summary(result), flush=True)
