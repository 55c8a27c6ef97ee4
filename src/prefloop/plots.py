"""PNG plots of runs: learning curves and return vs. labels. Uses matplotlib's Agg backend (no display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def finish_axes(fig, ax, path: Path, xlabel: str, ylabel: str, title: str | None = None, legend: bool = True) -> None:
    """Label, grid, legend, save as PNG and close: the end of every prefloop plot."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_learning_curve(curve: Sequence[dict[str, float]], path: Path, title: str) -> None:
    """True (left axis) and learned (right axis) episode return vs. env steps."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    steps = [p["env_step"] for p in curve]
    ax.plot(steps, [p["true_return"] for p in curve], color="tab:blue", label="true return")
    ax.tick_params(axis="y", labelcolor="tab:blue")
    learned = [(p["env_step"], p["learned_return"]) for p in curve if "learned_return" in p]
    if learned:
        ax2 = ax.twinx()
        ax2.plot(*zip(*learned), color="tab:orange", alpha=0.8, label="learned return")
        ax2.set_ylabel("learned episode return", color="tab:orange")
    finish_axes(fig, ax, path, "env steps", "true episode return", title, legend=False)
