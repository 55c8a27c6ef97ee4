"""Does `prefloop raters fit` recover B-Pref's teacher parameters? Simulated raters with known
beta, gamma, epsilon and thresholds label pairs of real segments through a real SQLite store,
each under their own rater id; `prefloop raters fit` then fits every rater from the store alone,
and the fitted values (with 90 % bootstrap intervals) are set beside the true ones.

    python benchmarks/raters_fit.py --env Pendulum-v1 --labels 300 --out bench-out/raters-fit

Segments are what a random policy plays (recorded by the loop's own wrappers); pairs are drawn
uniformly; each rater's return scale is the mean true return of a segment, as the loop's is.
Writes ``results.json``, ``results.md`` and ``raters_fit.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from prefloop.envs import EnvSpec, SegmentBuffer, VecSegmentRecorder
from prefloop.envs.presets import default_preset

from prefloop.cli.main import main as prefloop
from prefloop.store import PreferenceStore, sqlite_url
from prefloop.teachers import SimulatedTeacher, TeacherConfig
from prefloop.teachers.labeling import answer_pending
from prefloop.training.loop import build_vec_env, collect_random
from prefloop.types import SegmentPair

# (name, beta as a multiple of 1 / typical |return difference|, gamma, epsilon, skip, equal)
SETTINGS = [
    ("b1-e0.00", 1.0, 1.0, 0.0, 0.0, 0.0),
    ("b1-e0.10", 1.0, 1.0, 0.1, 0.0, 0.0),
    ("b1-e0.25", 1.0, 1.0, 0.25, 0.0, 0.0),
    ("b0.3-e0.05", 0.3, 1.0, 0.05, 0.0, 0.0),
    ("b3-e0.10", 3.0, 1.0, 0.1, 0.0, 0.0),
    ("binf-e0.15", math.inf, 1.0, 0.15, 0.0, 0.0),
    ("b1-g0.9-e0.05", 1.0, 0.9, 0.05, 0.0, 0.0),
    ("b1-e0.10-equal0.1", 1.0, 1.0, 0.1, 0.0, 0.1),
]


def record_segments(env_id: str, steps: int, seed: int) -> list:
    preset = default_preset(env_id)
    venv = build_vec_env(EnvSpec(env_id, preset.env_kwargs), 1, seed)
    buffer = SegmentBuffer(100_000)
    recorder = VecSegmentRecorder(venv, buffer, preset.segment_length, seed=seed)
    collect_random(recorder, steps, seed)
    recorder.close()
    return buffer.recent()


def run(env_id: str, labels: int, seed: int, bootstrap: int, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    segments = record_segments(env_id, steps=labels * 2 * default_preset(env_id).segment_length * 2, seed=seed)
    returns = np.array([s.true_return for s in segments])
    scale = float(np.mean(returns))
    diff_scale = float(np.median(np.abs(returns[rng.integers(0, len(returns), 2000)] - returns[rng.integers(0, len(returns), 2000)])))
    url = sqlite_url(out / "prefs.sqlite")
    truth = {}
    with PreferenceStore(url, run_name="raters-fit") as store:
        for i, (name, beta_mult, gamma, eps, skip, equal) in enumerate(SETTINGS):
            beta = beta_mult / diff_scale
            config = TeacherConfig(beta=beta, gamma=gamma, epsilon=eps, skip_threshold=skip, equal_threshold=equal)
            teacher = SimulatedTeacher(config, seed=seed * 100 + i, rater_id=name)
            teacher.set_return_scale(scale)
            idx = rng.integers(0, len(segments), size=(labels, 2))
            store.add_pairs([SegmentPair(segments[a], segments[b]) for a, b in idx if a != b])
            answer_pending(store, teacher)
            truth[name] = {"beta": beta, "gamma": gamma, "epsilon": eps, "skip_threshold": skip, "equal_threshold": equal}
    fit_json = out / "fits.json"
    started = time.perf_counter()
    prefloop(["raters", "fit", "--db-url", url, "--run-name", "raters-fit", "--bootstrap", str(bootstrap), "--json", str(fit_json)])
    fit_time = time.perf_counter() - started
    fits = json.loads(fit_json.read_text())["raters"]
    document = {"env_id": env_id, "labels_per_rater": labels, "seed": seed, "bootstrap": bootstrap,
                "segments": len(segments), "typical_return_difference": diff_scale, "return_scale": scale,
                "fit_time_s": fit_time, "truth": truth, "fits": fits}
    (out / "results.json").write_text(json.dumps(document, indent=1))
    (out / "results.md").write_text(markdown(document))
    plot(document, out / "raters_fit.png")
    print(markdown(document))
    return document


def _num(value: object) -> float:
    return float(value) if not isinstance(value, str) else float(value)  # "inf" / "nan" strings


def markdown(doc: dict) -> str:
    lines = [
        f"# `prefloop raters fit` on simulated raters ({doc['env_id']}, {doc['labels_per_rater']} labels each, "
        f"{doc['bootstrap']} bootstrap resamples)\n",
        f"Typical |return difference| of a pair: {doc['typical_return_difference']:.3g}; beta is given in units of "
        "1 / return (the table's beta x that difference is the rater's rationality on a typical pair).\n",
        "| rater | true beta | fitted beta [90 %] | true eps | fitted eps [90 %] | |eps err| <= 0.07 | beta within x1.5 | gamma (true / fitted) | equal threshold (true / fitted) |",
        "|---|---:|---|---:|---|:-:|:-:|---|---|",
    ]
    for name, true in doc["truth"].items():
        fit = doc["fits"][name]
        b, e = fit["beta"], fit["epsilon"]
        bv, tb = _num(b["value"]), true["beta"]
        beta_ok = (math.isinf(tb) and (math.isinf(bv) or bv * doc["typical_return_difference"] > 10)) or (
            math.isfinite(tb) and tb / 1.5 <= bv <= tb * 1.5)
        eps_ok = abs(_num(e["value"]) - true["epsilon"]) <= 0.07
        lines.append(
            f"| {name} | {tb:.3g} | {bv:.3g} [{_num(b['low']):.3g}, {_num(b['high']):.3g}] | {true['epsilon']:.2f} "
            f"| {_num(e['value']):.3f} [{_num(e['low']):.3f}, {_num(e['high']):.3f}] | {'yes' if eps_ok else 'no'} "
            f"| {'yes' if beta_ok else 'no'} | {true['gamma']:.2f} / {_num(fit['gamma']['value']):.2f} "
            f"| {true['equal_threshold']:.2f} / {_num(fit['equal_threshold']['value']):.3f} |"
        )
    lines.append(f"\nFit time (all raters, with the bootstrap): {doc['fit_time_s']:.0f} s.\n")
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_eps, ax_beta) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    scale = doc["typical_return_difference"]
    for i, (name, true) in enumerate(doc["truth"].items()):
        fit = doc["fits"][name]
        e = fit["epsilon"]
        ax_eps.errorbar(true["epsilon"] + 0.004 * (i % 3), _num(e["value"]),
                        yerr=[[_num(e["value"]) - _num(e["low"])], [_num(e["high"]) - _num(e["value"])]],
                        marker="o", capsize=3, label=name)
        if math.isfinite(true["beta"]):
            b = fit["beta"]
            value, low, high = (min(_num(b[k]) * scale, 1e3) for k in ("value", "low", "high"))
            ax_beta.errorbar(true["beta"] * scale, value, yerr=[[value - low], [high - value]], marker="o", capsize=3, label=name)
    ax_eps.plot([0, 0.3], [0, 0.3], "k--", lw=0.8)
    ax_eps.fill_between([0, 0.3], [-0.07, 0.23], [0.07, 0.37], color="grey", alpha=0.15, label="±0.07")
    ax_eps.set(xlabel="true epsilon", ylabel="fitted epsilon (90 % bootstrap interval)", title="mistake rate")
    xs = np.array([0.2, 5])
    ax_beta.plot(xs, xs, "k--", lw=0.8)
    ax_beta.fill_between(xs, xs / 1.5, xs * 1.5, color="grey", alpha=0.15, label="x1.5")
    ax_beta.set(xscale="log", yscale="log", xlabel="true beta x typical |return difference|",
                ylabel="fitted (same units; inf drawn at 1000)", title="rationality")
    ax_beta.set_xticks([0.3, 1, 3], labels=["0.3", "1", "3"])
    ax_beta.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_eps.legend(fontsize=6)
    ax_beta.legend(fontsize=6)
    fig.suptitle(f"prefloop raters fit: {doc['env_id']}, {doc['labels_per_rater']} labels per rater")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--labels", type=int, default=300, help="labels per simulated rater")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("bench-out/raters-fit"))
    parser.add_argument("--replot", action="store_true", help="redraw results.md and the plot from --out/results.json")
    args = parser.parse_args()
    if args.replot:
        document = json.loads((args.out / "results.json").read_text())
        (args.out / "results.md").write_text(markdown(document))
        plot(document, args.out / "raters_fit.png")
        return
    run(args.env, args.labels, args.seed, args.bootstrap, args.out)


if __name__ == "__main__":
    main()
