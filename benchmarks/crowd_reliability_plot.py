"""Plot a crowd sweep: normalised return with per-rater reliability vs. the plain loss, and each
rater's estimated error rate per seed, from the ``results.json`` of ``prefloop bench ... --rater-models
reliability plain``.

    python benchmarks/crowd_reliability_plot.py bench-out/crowd-cartpole bench-out/crowd-pendulum --out docs/results/crowd.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", type=Path, help="--out folders of crowd sweeps")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args()
    documents = [json.loads((folder / "results.json").read_text()) for folder in args.sweeps]
    fig, axes = plt.subplots(len(documents), 2, figsize=(11, 3.6 * len(documents)), dpi=110, squeeze=False)
    for row, doc in zip(axes, documents):
        ax_ret, ax_eps = row
        groups = doc["groups"]
        env = groups[0]["env_id"]
        several_teachers = len({g["teacher"].removesuffix(" (plain loss)") for g in groups}) > 1
        for i, g in enumerate(groups):
            label = "plain loss" if g["teacher"].endswith("(plain loss)") else "per-rater reliability"
            if several_teachers:  # e.g. the careful raters alone beside the whole crowd
                label = f"{g['teacher'].removesuffix(' (plain loss)').removeprefix('crowd:')}\n{label}"
            values = g["normalized_return"]["per_seed"]
            ax_ret.scatter([i] * len(values), values, color="k", zorder=3)
            ax_ret.bar(i, g["normalized_return"]["median"], color="tab:blue" if "reliab" in label else "tab:grey", alpha=0.5)
            ax_ret.text(i, 0.02, label, ha="center", fontsize=7)
        ax_ret.axhline(1.0, ls="--", color="k", lw=0.8)
        ax_ret.axhline(0.9, ls=":", color="tab:green", lw=0.8, label="goal 0.9")
        crowd = groups[0]["teacher"].removesuffix(" (plain loss)").removeprefix("crowd:")
        ax_ret.set(xticks=[], ylabel="normalized return (dots: seeds)",
                   title=f"{env}: {groups[0]['labels']} labels from the crowd {crowd}")
        ax_ret.legend(fontsize=7, loc="lower right")
        reliable = sorted((g for g in groups if g.get("rater_error_rates")), key=lambda g: -len(g["rater_error_rates"]))
        if reliable:
            rates = reliable[0]["rater_error_rates"]
            names = sorted(rates, key=lambda r: rates[r]["median"])
            for i, name in enumerate(names):
                ax_eps.scatter([i] * len(rates[name]["per_seed"]), rates[name]["per_seed"], color="tab:red", zorder=3)
                ax_eps.bar(i, rates[name]["median"], color="tab:red", alpha=0.3)
            ax_eps.axhline(0.3, ls="--", color="k", lw=0.8, label="flag threshold 0.3")
            ax_eps.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
            ax_eps.set(ylabel="estimated error rate (dots: seeds)", ylim=(0, 1), title="each rater's estimate")
            ax_eps.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out)
    plt.close(fig)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
