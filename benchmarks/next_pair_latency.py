"""How fast the rater app shows the next pair, and how long a clip takes to encode.

Builds a store of CartPole pairs (segments of 75 steps: 1.5 s clips at CartPole's 50 fps), renders
and encodes their clips (timing each encode), serves the rater app on 127.0.0.1 and drives Debian's
Chromium through ``--answers`` answers by key, like a fast rater who looks ``--think`` seconds at
each pair. For every answer it measures, inside the page:

- next pair playable: key press -> both clips of the next pair loaded (readyState >= 2) and
  playing started -- what the rater waits for;
- next pair moving: key press -> both new clips' playback position advanced;
- answer saved: key press -> the server acknowledged the answer (it is in the database).

Prints a table and writes ``latency.json`` and ``latency.png`` (histograms) into ``--out``.

    .venv/bin/python benchmarks/next_pair_latency.py --out bench-out/rater-latency
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

# Runs in the page: press a key the way a rater does and time what follows (all in ms).
ANSWER_JS = """
async (key) => {
  const r = window.__prefloopRater;
  const before = r.pairId, saved = r.saveLatencies.length;
  const t0 = performance.now();
  document.dispatchEvent(new KeyboardEvent("keydown", {key, bubbles: true, composed: true}));
  const frame = () => new Promise((resolve) => requestAnimationFrame(resolve));
  let playable = null, moving = null, start = null;
  while (performance.now() - t0 < 20000) {
    await frame();
    if (r.pairId === before || r.pairId === null) continue;
    const vs = r.frontVideos();
    if (playable === null && r.ready && vs.every((v) => v.readyState >= 2)) {
      playable = performance.now() - t0;
      start = vs.map((v) => v.currentTime);
    }
    if (playable !== null && vs.every((v, i) => v.currentTime > start[i] || (start[i] > 0 && v.currentTime < start[i]))) {
      moving = performance.now() - t0;
      break;
    }
  }
  while (r.saveLatencies.length === saved && performance.now() - t0 < 20000) await frame();
  return {playable, moving, saved: r.saveLatencies[saved] ?? null, pair: r.pairId};
}
"""


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))


def build_store(path: Path, n_segments: int, n_pairs: int) -> tuple[str, str, list[float], list[float]]:
    """A store of ``n_pairs`` pairs over ``n_segments`` CartPole segments with clips; returns
    (url, run name, encode seconds per clip, CPU seconds per clip)."""
    from prefloop.envs import EnvSpec, SegmentBuffer, VecSegmentRecorder
    from prefloop.envs.clips import CLIP_MIME, encode_clip
    from prefloop.envs.render import SegmentRenderer

    from prefloop.store import PreferenceStore, sqlite_url
    from prefloop.training.loop import build_vec_env, collect_random
    from prefloop.types import SegmentPair

    spec = EnvSpec("CartPole-v1")
    buffer = SegmentBuffer(10_000)
    recorder = VecSegmentRecorder(build_vec_env(spec, 2, seed=0), buffer, 75, seed=0)
    steps = 2000
    while len(buffer) < n_segments:
        collect_random(recorder, steps, 0)
        steps *= 2
    segments = buffer.recent(n_segments)
    url, run = sqlite_url(path), "latency-bench"
    wall: list[float] = []
    cpu: list[float] = []
    with PreferenceStore(url, run) as store, SegmentRenderer(spec) as renderer:
        store.set_meta("env_spec", json.dumps(spec.to_json()))
        store.set_meta("render_fps", "50.0")
        store.set_meta("guideline", "Which cart keeps the pole upright better?")
        combos = list(itertools.combinations(segments, 2))[:n_pairs]
        store.add_pairs([SegmentPair(a, b) for a, b in combos])
        for seg in segments:
            frames = renderer.render(seg)
            started, started_cpu = time.perf_counter(), time.process_time()
            data = encode_clip(frames, 50.0)
            wall.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
            store.put_clip(seg.id, data, CLIP_MIME)
    return url, run, wall, cpu


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def drive(url: str, answers: int, think_s: float) -> list[dict]:
    from playwright.sync_api import sync_playwright

    results = []
    keys = ["ArrowLeft", "ArrowRight", "ArrowUp", "1", "2"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(url + "?rater=bench")
            page.wait_for_function("window.__prefloopRater && window.__prefloopRater.ready", timeout=30_000)
            for i in range(answers):
                time.sleep(think_s)
                result = page.evaluate(ANSWER_JS, keys[i % len(keys)])
                if result["playable"] is None:
                    raise RuntimeError(f"answer {i}: the next pair never became playable ({result})")
                results.append(result)
        finally:
            browser.close()
    return results


def summarise(name: str, values: list[float]) -> dict[str, float]:
    return {
        "name": name, "n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
        "mean": statistics.fmean(values), "max": max(values),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/rater-latency"))
    parser.add_argument("--answers", type=int, default=60, help="answers to time (>= 50 recommended)")
    parser.add_argument("--think", type=float, default=0.6, help="seconds the simulated rater looks at a pair")
    parser.add_argument("--segments", type=int, default=14, help="distinct clips (pairs are combinations)")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).is_file():
        print(f"error: {CHROMIUM} is missing; install Debian's chromium (make test does)", file=sys.stderr)
        return 2

    from prefloop.apps.launch import launch_rater_app, wait_until_ready

    args.out.mkdir(parents=True, exist_ok=True)
    n_pairs = args.answers + 6
    if args.segments * (args.segments - 1) // 2 < n_pairs:
        parser.error(f"--segments {args.segments} gives too few pairs for {args.answers} answers")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"rendering and encoding {args.segments} clips of 1.5 s ...", flush=True)
        url, run, encode_wall, encode_cpu = build_store(Path(tmp) / "prefs.sqlite", args.segments, n_pairs)
        port = free_port()
        # The bot answers faster than a person may (the app refuses more than 30 answers a minute).
        os.environ["PREFLOOP_MAX_ANSWERS_PER_MINUTE"] = "100000"
        app = launch_rater_app(url, run, port=port, log_path=Path(tmp) / "app.log")
        try:
            app_url = f"http://127.0.0.1:{port}/"
            wait_until_ready(app_url, timeout=60, process=app)
            print(f"driving Chromium through {args.answers} answers ...", flush=True)
            results = drive(app_url, args.answers, args.think)
        finally:
            app.terminate()
            app.wait(timeout=30)

    playable = [r["playable"] for r in results]
    moving = [r["moving"] for r in results if r["moving"] is not None]
    saved = [r["saved"] for r in results if r["saved"] is not None]
    rows = [
        summarise("next pair playable (ms)", playable),
        summarise("next pair moving (ms)", moving),
        summarise("answer saved, server ack (ms)", saved),
        summarise("encode 1.5 s clip, wall (ms)", [s * 1000 for s in encode_wall]),
        summarise("encode 1.5 s clip, CPU (ms)", [s * 1000 for s in encode_cpu]),
    ]
    print(f"\n{'measure':34} {'n':>4} {'p50':>8} {'p95':>8} {'mean':>8} {'max':>8}")
    for row in rows:
        print(f"{row['name']:34} {row['n']:>4} {row['p50']:>8.1f} {row['p95']:>8.1f} {row['mean']:>8.1f} {row['max']:>8.1f}")
    report = {
        "answers": args.answers, "think_s": args.think, "clip_seconds": 76 / 50.0, "clip_frames": 76,
        "summary": rows, "per_answer": results, "encode_wall_s": encode_wall, "encode_cpu_s": encode_cpu,
    }
    (args.out / "latency.json").write_text(json.dumps(report, indent=2))
    plot(args.out / "latency.png", playable, moving, saved, [s * 1000 for s in encode_wall])
    print(f"\nwrote {args.out / 'latency.json'} and {args.out / 'latency.png'}")
    return 0


def plot(path: Path, playable: list[float], moving: list[float], saved: list[float], encode: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    top = max(320.0, *playable, *moving, *saved)
    bins = np.linspace(0, top, 60)
    for values, label in ((playable, "next pair playable"), (moving, "next pair moving"), (saved, "answer saved")):
        if values:
            axes[0].hist(values, bins=bins, alpha=0.6, label=f"{label} (p95 {percentile(values, 95):.0f} ms)")
    axes[0].axvline(300, color="k", linestyle="--", linewidth=1, label="300 ms target")
    axes[0].set_xlabel("ms after the answer key")
    axes[0].set_ylabel("answers")
    axes[0].set_title("Rater app: answer to next pair (Chromium)")
    axes[0].legend(fontsize=8)
    axes[1].hist(encode, bins=20, color="tab:green", alpha=0.8)
    axes[1].set_xlabel("ms per 1.5 s clip (76 frames, 480x320 VP9)")
    axes[1].set_title("Clip encode time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
