"""PNG plots of runs: learning curves and return vs. labels. Uses matplotlib's Agg backend (no display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def plot_learning_curve(curve: Sequence[dict[str, float]], path: Path, title: str) -> None:
    """True (left axis) and learned (right axis) episode return vs. env steps."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    steps = [p["env_step"] for p in curve]
    ax.plot(steps, [p["true_return"] for p in curve], color="tab:blue", label="true return")
    ax.set_xlabel("env steps")
    ax.set_ylabel("true episode return", color="tab:blue")
    learned = [(p["env_step"], p["learned_return"]) for p in curve if "learned_return" in p]
    if learned:
        ax2 = ax.twinx()
        ax2.plot(*zip(*learned), color="tab:orange", alpha=0.8, label="learned return")
        ax2.set_ylabel("learned episode return", color="tab:orange")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_curves(
    series: dict[str, Sequence[dict[str, float]]], path: Path, title: str, baselines: dict[str, float] | None = None
) -> None:
    """Several learning curves (true return vs. env steps) on one axis, with horizontal baselines."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name, curve in series.items():
        ax.plot([p["env_step"] for p in curve], [p["true_return"] for p in curve], label=name)
    for name, value in (baselines or {}).items():
        ax.axhline(value, linestyle="--", color="grey", linewidth=1)
        ax.annotate(name, (0, value), fontsize=8, color="grey", va="bottom")
    ax.set_xlabel("env steps")
    ax.set_ylabel("true episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
