"""The README's main command taught at human pace by a browser rater through the real app.

``prefloop run`` (trainer + rater app + clip worker) with Debian's Chromium driven by Playwright as
the person: it opens the URL the run prints, and for every pair the app shows it waits until the
clips play, looks at them for ``--think-s`` seconds and presses the arrow key of its answer. Its
answers are the oracle's (it looks the shown pair up in the store), optionally wrong on a share of
pairs (``--mistakes``, B-Pref's mistake teacher). One row per seed: the true return of the final
policy, how many of the rater's answers the last reward-model fit used, and the person's time: from
opening the app to the last answer, and to the run saying it is complete.

    python -m benchmarks.human_pace --seeds 0 1 2 --think-s 3 --out bench-out/human-pace-3s
    python -m benchmarks.human_pace --seeds 0 1 2 --think-s 3 --mistakes 0.1 --out bench-out/human-pace-err10
"""

from __future__ import annotations

import argparse
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.human_overhead import CHROMIUM_ARGS, KEYS, prefloop
from prefloop.store import PreferenceStore, sqlite_url
from prefloop.teachers import make_teacher

# The README's main command (`make run`), less the seed.
MAIN_COMMAND = ("run", "--env", "CartPole-v1", "--labels", "60", "--steps", "150000")


def printed_url(proc: subprocess.Popen, lines: "queue.Queue[str]", log_file, timeout_s: float = 300) -> str:
    """The rater-app URL the run prints once its app answers (every line is also logged)."""

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            log_file.write(line)
            log_file.flush()
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        if line.startswith("rater app: "):
            return line.split()[2]
    raise RuntimeError("the run printed no rater-app URL; see its log")


def one_run(out: Path, seed: int, port: int, think_s: float, mistakes: float, extra: list[str]) -> dict:
    from playwright.sync_api import sync_playwright

    run = out / f"s{seed}"
    log_file = open(out / f"s{seed}.log", "w")
    proc = prefloop(*MAIN_COMMAND, "--seed", str(seed), "--run-dir", str(run), "--no-progress", "--port", str(port),
                    *extra, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    started = time.monotonic()
    url = printed_url(proc, queue.Queue(), log_file)
    opened = time.monotonic()
    teacher = make_teacher("mistake", seed=seed, epsilon=mistakes)
    answers: list[float] = []  # monotonic times of the bot's answers
    with sync_playwright() as pw, PreferenceStore(sqlite_url(run / "prefs.sqlite"), run_name=run.name) as store:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(f"{url}?rater=bench-person")
        last = None
        while proc.poll() is None:
            try:
                shown = page.evaluate("() => window.__prefloopRater && [window.__prefloopRater.pairId, window.__prefloopRater.ready]")
            except Exception:  # the page reloads now and then (e.g. when the run completes)
                shown = None
            if not shown or shown[0] is None or not shown[1] or shown[0] == last:
                time.sleep(0.1)
                continue
            time.sleep(think_s)  # a person looks at both clips before answering
            pair = store.get_pair(int(shown[0]))
            page.keyboard.press(KEYS[teacher.compare(pair.left, pair.right).value])
            last = shown[0]
            answers.append(time.monotonic())
        browser.close()
    finished = time.monotonic()
    log_file.close()
    if proc.returncode != 0:
        raise RuntimeError(f"prefloop run failed (exit {proc.returncode}), see {out / f's{seed}.log'}")
    summary = json.loads((run / "summary.json").read_text())
    with PreferenceStore(sqlite_url(run / "prefs.sqlite"), run_name=run.name) as store:
        stored = [label for label in store.labels() if label.rater_id == "bench-person"]
        counts = store.counts()
    return {
        "seed": seed,
        "eval_return_mean": summary["eval_return_mean"],
        "bot_answers": len(answers),
        "labels_stored": len(stored),
        "labels_fitted": summary.get("labels_fitted"),
        "answers_used": (summary.get("labels_fitted") or 0) / max(1, len(stored)),
        "pairs_withdrawn": counts.get("withdrawn", 0),
        "person_to_last_answer_s": (answers[-1] - opened) if answers else 0.0,
        "person_to_run_end_s": finished - opened,
        "app_start_s": opened - started,
        "median_response_time_s": float(np.median([label.response_time_s for label in stored])) if stored else None,
        "trainer_wall_time_s": summary["wall_time_s"],
        "human_time": summary.get("human_time"),
    }


def plot(result_dirs: list[Path], path: Path) -> None:
    """True return against the person's minutes (open -> last answer), one series per result folder."""
    import matplotlib.pyplot as plt

    from prefloop.plots import finish_axes

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for folder in result_dirs:
        result = json.loads((folder / "result.json").read_text())
        runs = result["runs"]
        name = f"{result['think_s']:g} s per pair" + (f", {result['mistakes']:.0%} wrong" if result["mistakes"] else "")
        ax.plot([r["person_to_last_answer_s"] / 60 for r in runs], [r["eval_return_mean"] for r in runs], "o",
                label=f"{name} (seeds {', '.join(str(r['seed']) for r in runs)})")
    ax.axhline(450, color="grey", linestyle="--", linewidth=1)
    ax.set_ylim(0, 520)
    finish_axes(fig, ax, path, "person's minutes (app opened -> last answer)", "CartPole-v1 true return (10 episodes)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--think-s", type=float, default=3.0, help="seconds the person looks at a pair before answering")
    parser.add_argument("--mistakes", type=float, default=0.0, help="share of pairs answered wrongly (B-Pref mistake epsilon)")
    parser.add_argument("--port", type=int, default=8612)
    parser.add_argument("--out", type=Path, default=Path("bench-out/human-pace"))
    parser.add_argument("--plot", type=Path, nargs="+", default=None, metavar="DIR",
                        help="only plot the result.json of these output folders into --out (a PNG file)")
    parser.add_argument("extra", nargs="*", help="more `prefloop run` arguments, after --")
    args = parser.parse_args(argv)
    if args.plot:
        plot(args.plot, args.out)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        row = one_run(args.out, seed, args.port, args.think_s, args.mistakes, args.extra)
        rows.append(row)
        (args.out / "result.json").write_text(json.dumps({"command": ["prefloop", *MAIN_COMMAND, *args.extra],
                                                          "think_s": args.think_s, "mistakes": args.mistakes, "runs": rows}, indent=2))
        print(json.dumps(row), flush=True)
    print(f"\n`prefloop {' '.join(MAIN_COMMAND + tuple(args.extra))} --seed S`, a Chromium rater answering after "
          f"{args.think_s:g} s, {args.mistakes:.0%} wrong")
    print("| seed | true return | rater answers | used by the last fit | person: open → last answer | → run complete |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['seed']} | {r['eval_return_mean']:.1f} | {r['labels_stored']} | {r['labels_fitted']} ({r['answers_used']:.0%}) "
              f"| {r['person_to_last_answer_s'] / 60:.1f} min | {r['person_to_run_end_s'] / 60:.1f} min |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
