"""What a human teacher costs the trainer: `prefloop run` (trainer + rater app + clip worker) with a
browser "rater" answering by keyboard, against the same run with the oracle teacher.

The rater is Debian's Chromium driven by Playwright; it answers what the oracle would (it looks the
shown pair up in the store), so both runs learn alike and only the machinery differs. Both runs use
``--when-behind continue``, as people would.

    python -m benchmarks.human_overhead --steps 100000 --labels 200 --out bench-out/human-overhead
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prefloop.store import PreferenceStore, sqlite_url
from prefloop.teachers import make_teacher

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
KEYS = {"left": "ArrowLeft", "right": "ArrowRight", "equal": "ArrowUp", "cant_tell": "ArrowDown"}


def prefloop(*args: str, **kwargs) -> subprocess.Popen:
    # The bot answers faster than a person may (the app refuses more than 30 answers a minute).
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PREFLOOP_MAX_ANSWERS_PER_MINUTE": "100000"}
    return subprocess.Popen([sys.executable, "-m", "prefloop.cli", *args], env=env, **kwargs)


def oracle_run(out: Path, steps: int, labels: int) -> dict:
    run = out / "oracle"
    proc = prefloop("train", "--env", "CartPole-v1", "--steps", str(steps), "--labels", str(labels),
                    "--run-dir", str(run), "--no-progress", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert proc.wait() == 0, "oracle run failed"
    return json.loads((run / "summary.json").read_text())


def human_run(out: Path, steps: int, labels: int, port: int, think_s: float) -> tuple[dict, int]:
    from playwright.sync_api import sync_playwright

    run = out / "human"
    log = open(out / "human-run.log", "w")
    proc = prefloop("run", "--env", "CartPole-v1", "--steps", str(steps), "--labels", str(labels),
                    "--run-dir", str(run), "--no-progress", "--port", str(port), stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{base}/_stcore/health", timeout=1)
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "the rater app did not come up"
            time.sleep(0.3)
    oracle = make_teacher("oracle")
    answered = 0
    with sync_playwright() as pw, PreferenceStore(sqlite_url(run / "prefs.sqlite"), run_name="human") as store:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(f"{base}/?rater=bench-bot")
        last = None
        while proc.poll() is None:
            try:
                shown = page.evaluate("() => window.__prefloopRater && [window.__prefloopRater.pairId, window.__prefloopRater.ready]")
            except Exception:  # the page reloads now and then (e.g. at the end of the run)
                shown = None
            if not shown or shown[0] is None or not shown[1] or shown[0] == last:
                time.sleep(0.1)
                continue
            pair = store.get_pair(int(shown[0]))
            page.keyboard.press(KEYS[oracle.compare(pair.left, pair.right).value])
            last = shown[0]
            answered += 1
            time.sleep(think_s)
        browser.close()
    log.close()
    assert proc.returncode == 0, f"prefloop run failed, see {out / 'human-run.log'}"
    return json.loads((run / "summary.json").read_text()), answered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--labels", type=int, default=200)
    parser.add_argument("--port", type=int, default=8631)
    parser.add_argument("--think-s", type=float, default=0.3, help="seconds the bot waits between answers")
    parser.add_argument("--out", type=Path, default=Path("bench-out/human-overhead"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=False)
    oracle = oracle_run(args.out, args.steps, args.labels)
    human, answered = human_run(args.out, args.steps, args.labels, args.port, args.think_s)
    result = {
        "steps": args.steps, "labels": args.labels,
        "oracle": {"wall_time_s": oracle["wall_time_s"], "cpu_time_s": oracle.get("cpu_time_s"),
                   "eval_return_mean": oracle["eval_return_mean"], "labels_used": oracle["labels_used"]},
        "human": {"wall_time_s": human["wall_time_s"], "cpu_time_s": human.get("cpu_time_s"),
                  "eval_return_mean": human["eval_return_mean"], "labels_used": human["labels_used"],
                  "answers_by_browser": answered},
    }
    result["wall_time_ratio"] = human["wall_time_s"] / oracle["wall_time_s"]
    (args.out / "result.json").write_text(json.dumps(result, indent=2))
    print("| teacher | trainer wall time (s) | trainer CPU time (s) | labels used | eval return |")
    print("|---|---:|---:|---:|---:|")
    for name in ("oracle", "human"):
        r = result[name]
        print(f"| {name} | {r['wall_time_s']:.1f} | {r['cpu_time_s'] or float('nan'):.1f} | {r['labels_used']} | {r['eval_return_mean']:.1f} |")
    print(f"human / oracle trainer wall time: {result['wall_time_ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
