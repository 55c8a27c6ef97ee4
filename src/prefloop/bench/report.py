"""The numbers of a sweep, summarised: groups over seeds, where the time went, a Markdown table
and PNG plots. Input is the ``runs`` and ``random`` rows of ``results.json`` (see
docs/bench-results-schema.md); nothing here runs anything.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from prefloop.cost import CostSettings, per
from prefloop.metrics import median_iqr, normalized_return


def aggregate(runs: list[dict[str, Any]], random_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One group per env x algo x teacher x query x labels: normalised return, return and wall-time ratio over seeds."""
    random_mean = _mean_by(random_rows, ("env_id",), "return_mean")
    true_runs = [r for r in runs if r["kind"] == "true_reward"]
    true_mean = _mean_by(true_runs, ("env_id", "algo"), "eval_return_mean")
    true_wall = {(r["env_id"], r["algo"], r["seed"]): r["wall_time_s"] for r in true_runs}
    true_cpu = {(r["env_id"], r["algo"], r["seed"]): r.get("cpu_time_s") for r in true_runs}
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        if run["kind"] == "preferences":
            groups[(run["env_id"], run["algo"], _teacher_label(run), run["query"], run["labels"])].append(run)
    out = []
    for (env_id, algo, teacher, query, labels), members in sorted(groups.items()):
        members = sorted(members, key=lambda m: m["seed"])  # per_seed lists follow `seeds`, whatever finished first
        r_random = random_mean.get((env_id,), float("nan"))
        r_true = true_mean.get((env_id, algo), float("nan"))
        normalized = [normalized_return(m["eval_return_mean"], r_random, r_true) for m in members]
        ratios = [
            m["wall_time_s"] / true_wall[(env_id, algo, m["seed"])]
            for m in members if (env_id, algo, m["seed"]) in true_wall
        ]
        cpu_ratios = [
            m["cpu_time_s"] / true_cpu[(env_id, algo, m["seed"])]
            for m in members if true_cpu.get((env_id, algo, m["seed"])) and m.get("cpu_time_s")
        ]
        out.append({
            "env_id": env_id, "algo": algo, "teacher": teacher, "query": query, "labels": labels,
            "seeds": [m["seed"] for m in members],
            "normalized_return": _stats(normalized),
            "return": _stats([m["eval_return_mean"] for m in members]),
            "true_reward_return": r_true,
            "random_return": r_random,
            "wall_time_ratio": _stats(ratios),
            "cpu_time_ratio": _stats(cpu_ratios),
            "reward_learning_share": _stats([m["reward_learning_time_s"] / m["wall_time_s"] for m in members]),
            "rater_error_rates": _rater_error_rates(members),
            # rows written before human time was recorded count as 0 (a teacher that answered at once)
            "human_minutes": _stats([m.get("human_time_s", 0.0) / 60 for m in members]),
        })
    return out


def _rater_error_rates(members: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each rater's estimated error rate over the group's seeds (runs with per-rater reliability),
    and how many of the seeds flagged them."""
    rates: dict[str, list[float]] = defaultdict(list)
    flagged: dict[str, int] = defaultdict(int)
    for m in members:
        for est in m.get("rater_reliability") or []:
            rates[est["rater_id"]].append(est["error_rate"])
            flagged[est["rater_id"]] += bool(est["flagged"])
    return {rater: {**_stats(values), "flagged_in": flagged[rater]} for rater, values in sorted(rates.items())}


def _teacher_label(run: dict[str, Any]) -> str:
    """The teacher as the table shows it: with "(plain loss)" when per-rater reliability was off."""
    return run["teacher"] + (" (plain loss)" if run.get("rater_model") == "plain" else "")


def cost_rows(groups: list[dict[str, Any]], settings: CostSettings | None) -> list[dict[str, Any]]:
    """Per group (medians over seeds): ``human_hours``, ``cost``, ``cost_per_label``, the true
    return gained over a random policy (``return_gain``), and that gain ``per_human_hour`` and
    ``per_cost``. Empty when no price is set (``--hourly-rate`` or ``--cost-per-label``)."""
    if settings is None:
        return []
    rows = []
    for g in groups:
        hours = [m / 60 for m in g["human_minutes"]["per_seed"]]
        costs = [settings.total(g["labels"], h) for h in hours]
        gains = [r - g["random_return"] for r in g["return"]["per_seed"]]
        rows.append({
            "env_id": g["env_id"], "algo": g["algo"], "teacher": g["teacher"], "query": g["query"], "labels": g["labels"],
            "human_hours": _median(hours),
            "cost": _median(costs),
            "cost_per_label": _median([per(c, g["labels"]) for c in costs]),
            "return_gain": _median(gains),
            "per_human_hour": _median([per(gain, h) for gain, h in zip(gains, hours)]),
            "per_cost": _median([per(gain, c) for gain, c in zip(gains, costs)]),
        })
    return rows


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.median(known)) if known else None


def cost_table(rows: list[dict[str, Any]], currency: str) -> str:
    """The cost rows as a Markdown table ("" without rows)."""
    if not rows:
        return ""

    def fmt(value: float | None, pattern: str) -> str:
        return "–" if value is None else format(value, pattern)

    lines = [
        f"| env | algo | teacher | query | labels | human hours | cost ({currency}) | cost per label "
        "| true return gained over random | gained per human hour | gained per unit of cost |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['env_id']} | {r['algo']} | {r['teacher']} | {r['query']} | {r['labels']} | {fmt(r['human_hours'], '.2f')} "
            f"| {fmt(r['cost'], '.2f')} | {fmt(r['cost_per_label'], '.3f')} | {fmt(r['return_gain'], '.1f')} "
            f"| {fmt(r['per_human_hour'], '.1f')} | {fmt(r['per_cost'], '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def plot_return_vs_cost(rows: list[dict[str, Any]], currency: str, path: Path) -> None:
    """True return gained over random against the labels' cost (medians per group), one series
    per env, teacher and query, a point per label budget."""
    import matplotlib.pyplot as plt

    from prefloop.plots import finish_axes

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    series: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["cost"] is not None and r["return_gain"] is not None:
            series[(r["env_id"], r["algo"], r["teacher"], r["query"])].append(r)
    for (env_id, algo, teacher, query), members in sorted(series.items()):
        members.sort(key=lambda r: r["cost"])
        ax.plot([m["cost"] for m in members], [m["return_gain"] for m in members], marker="o",
                label=f"{env_id} {algo} {teacher} {query}")
        for m in members:
            ax.annotate(str(m["labels"]), (m["cost"], m["return_gain"]), fontsize=7)
    finish_axes(fig, ax, path, f"cost of the labels ({currency}; numbers: label budgets)",
                "true return gained over random (median)")


def time_split(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Where the sweep's run time went: reward learning (queries, teacher, store, reward-model fits,
    relabelling) vs. policy learning (everything else, true-reward runs included). Runs reused from
    an earlier sweep cost nothing here and are left out."""
    ran = [r for r in runs if "reused_from" not in r]
    total = sum(r["wall_time_s"] for r in ran)
    reward = sum(r["reward_learning_time_s"] for r in ran if r["kind"] == "preferences")
    return {
        "runs": len(ran),
        "run_time_s": total,
        "reward_learning_s": reward,
        "policy_learning_s": total - reward,
        "reward_learning_share": reward / total if total > 0 else float("nan"),
    }


def _stats(values: list[float]) -> dict[str, Any]:
    median, q25, q75 = median_iqr(values)
    return {"median": median, "q25": q25, "q75": q75, "per_seed": values}


def _mean_by(rows: list[dict[str, Any]], keys: tuple[str, ...], value: str) -> dict[tuple, float]:
    grouped: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        grouped[tuple(row[k] for k in keys)].append(row[value])
    return {k: float(np.mean(v)) for k, v in grouped.items()}


def markdown_table(groups: list[dict[str, Any]]) -> str:
    header = (
        "| env | algo | teacher | query | labels | normalized return, median [IQR] | return (median) "
        "| true-reward return | random return | wall-time ratio | CPU-time ratio | reward-learning share | human minutes (median) |\n"
        "|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for g in groups:
        n = g["normalized_return"]
        lines.append(
            f"| {g['env_id']} | {g['algo']} | {g['teacher']} | {g['query']} | {g['labels']} "
            f"| {n['median']:.2f} [{n['q25']:.2f}, {n['q75']:.2f}] | {g['return']['median']:.1f} "
            f"| {g['true_reward_return']:.1f} | {g['random_return']:.1f} "
            f"| {g['wall_time_ratio']['median']:.2f} | {g['cpu_time_ratio']['median']:.2f} "
            f"| {g['reward_learning_share']['median']:.0%} | {g.get('human_minutes', _stats([]))['median']:.1f} |"
        )
    return header + "\n".join(lines) + "\n" + _rater_table(groups)


def _rater_table(groups: list[dict[str, Any]]) -> str:
    """Estimated error rate of each rater per group (median [IQR] over seeds), when there are any."""
    lines = []
    for g in groups:
        for rater, est in g.get("rater_error_rates", {}).items():
            lines.append(
                f"| {g['env_id']} | {g['teacher']} | {g['labels']} | {rater} | {est['median']:.3f} "
                f"[{est['q25']:.3f}, {est['q75']:.3f}] | {est['flagged_in']}/{len(est['per_seed'])} |"
            )
    if not lines:
        return ""
    return (
        "\nEstimated rater error rates (per-rater reliability in the loss):\n\n"
        "| env | teacher | labels | rater | error rate, median [IQR] | flagged in seeds |\n"
        "|---|---|---:|---|---|---:|\n" + "\n".join(lines) + "\n"
    )


def write_plots(document: dict[str, Any], out_dir: Path) -> None:
    import matplotlib.pyplot as plt

    from prefloop.plots import finish_axes

    runs = document["runs"]
    envs = sorted({r["env_id"] for r in runs})
    fig, axes = plt.subplots(1, len(envs), figsize=(5.5 * len(envs), 4), dpi=110, squeeze=False)
    for ax, env_id in zip(axes[0], envs):
        series: dict[str, list[dict]] = defaultdict(list)
        for r in runs:
            if r["env_id"] == env_id and r["curve"]:
                name = "true reward" if r["kind"] == "true_reward" else f"{r['labels']} {r['teacher']} labels ({r['query']})"
                series[name].append(r)
        for name, members in sorted(series.items()):
            grid, mean, low, high = _mean_curve([m["curve"] for m in members])
            ax.plot(grid, mean, label=name, linestyle="--" if name == "true reward" else "-")
            ax.fill_between(grid, low, high, alpha=0.15)
        random_values = [r["return_mean"] for r in document["random"] if r["env_id"] == env_id]
        if random_values:
            ax.axhline(float(np.mean(random_values)), color="grey", linewidth=1, linestyle=":", label="random policy")
        ax.set_title(env_id)
        ax.set_xlabel("env steps")
        ax.set_ylabel("true episode return (training episodes)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "learning_curves.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    keyed: dict[tuple, list[tuple[int, dict]]] = defaultdict(list)
    for g in document["groups"]:
        keyed[(g["env_id"], g["algo"], g["teacher"], g["query"])].append((g["labels"], g["normalized_return"]))
    for (env_id, algo, teacher, query), points in sorted(keyed.items()):
        points.sort(key=lambda p: p[0])
        labels = [p[0] for p in points]
        med = [p[1]["median"] for p in points]
        err = [[p[1]["median"] - p[1]["q25"] for p in points], [p[1]["q75"] - p[1]["median"] for p in points]]
        ax.errorbar(labels, med, yerr=err, marker="o", capsize=3, label=f"{env_id} {algo} {teacher} {query}")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.axhline(0.0, color="grey", linestyle=":", linewidth=1)
    finish_axes(fig, ax, out_dir / "return_vs_labels.png", "labels", "normalized return (median, IQR)")
    plot_return_vs_human_minutes(document["runs"], out_dir / "return_vs_human_minutes.png")
    plot_groups(document["groups"], out_dir / "groups.png")
    if document.get("cost"):
        plot_return_vs_cost(document["cost"], document["config"].get("currency", "USD"), out_dir / "return_vs_cost.png")


def plot_return_vs_human_minutes(runs: list[dict[str, Any]], path: Path) -> None:
    """Every preference run's true evaluation return against the minutes a person had to be there
    (``human_time_s``), one panel per env, one series per teacher and query, a line through the
    label budgets' medians."""
    import matplotlib.pyplot as plt

    prefs = [r for r in runs if r["kind"] == "preferences"]
    envs = sorted({r["env_id"] for r in prefs}) or ["(no preference runs)"]
    fig, axes = plt.subplots(1, len(envs), figsize=(5.5 * len(envs), 4), dpi=110, squeeze=False)
    for ax, env_id in zip(axes[0], envs):
        series: dict[tuple, list[dict]] = defaultdict(list)
        for r in prefs:
            if r["env_id"] == env_id:
                series[(r["algo"], r["teacher"], r["query"])].append(r)
        for (algo, teacher, query), members in sorted(series.items()):
            minutes = [m.get("human_time_s", 0.0) / 60 for m in members]
            points = ax.scatter(minutes, [m["eval_return_mean"] for m in members], s=14, alpha=0.6)
            by_budget: dict[int, list[dict]] = defaultdict(list)
            for m in members:
                by_budget[m["labels"]].append(m)
            budgets = sorted(by_budget)
            ax.plot([float(np.median([m.get("human_time_s", 0.0) / 60 for m in by_budget[b]])) for b in budgets],
                    [float(np.median([m["eval_return_mean"] for m in by_budget[b]])) for b in budgets],
                    marker="o", color=points.get_facecolor()[0], label=f"{algo} {teacher} {query}")
            for b in budgets:
                ax.annotate(f"{b}", (float(np.median([m.get("human_time_s", 0.0) / 60 for m in by_budget[b]])),
                                     float(np.median([m["eval_return_mean"] for m in by_budget[b]]))), fontsize=7)
        ax.set_title(f"{env_id} (numbers: label budgets)")
        ax.set_xlabel("human minutes (first pair asked to last answer)")
        ax.set_ylabel("true evaluation return")
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_groups(groups: list[dict[str, Any]], path: Path) -> None:
    """One row per group (env, algo, teacher, query, labels): every seed's normalized return as a
    dot, the median as a bar with its IQR -- the comparison of teachers or query methods at a glance."""
    import matplotlib.pyplot as plt

    from prefloop.plots import finish_axes

    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.45 * len(groups)), dpi=110)
    for row, g in enumerate(reversed(groups)):
        n = g["normalized_return"]
        ax.barh(row, n["median"], color="tab:blue", alpha=0.35, height=0.6)
        ax.errorbar(n["median"], row, xerr=[[n["median"] - n["q25"]], [n["q75"] - n["median"]]], color="tab:blue", capsize=3)
        ax.plot(n["per_seed"], [row] * len(n["per_seed"]), "o", color="black", markersize=3)
    ax.set_yticks(range(len(groups)))
    ax.set_yticklabels([f"{g['env_id']} {g['algo']} {g['teacher']} {g['query']} {g['labels']}" for g in reversed(groups)], fontsize=7)
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.axvline(0.0, color="grey", linestyle=":", linewidth=1)
    finish_axes(fig, ax, path, "normalized return (bar: median, whisker: IQR, dots: seeds)", "", legend=False)


def _mean_curve(curves: list[list[dict]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    end = min(c[-1]["env_step"] for c in curves)
    grid = np.linspace(0, end, 100)
    values = np.stack([
        np.interp(grid, [p["env_step"] for p in c], [p["true_return"] for p in c]) for c in curves
    ])
    return grid, values.mean(axis=0), values.min(axis=0), values.max(axis=0)
