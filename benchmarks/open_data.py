"""Open data: size and time of each export layout, and of loading it back, on a run of real segments.

    python benchmarks/open_data.py --env CartPole-v1 --steps 20000 --pairs 500
    python benchmarks/open_data.py --env prefloop/CartPolePixels-v1 --steps 2000 --pairs 50

Records random play into a fresh SQLite store, queues ``--pairs`` pairs with two labels each, then
times ``export`` (jsonl, parquet), ``load`` (every check) and the Minari export, and prints one JSON
line per layout (files' bytes, seconds). One process, torch.set_num_threads(1).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--steps", type=int, default=20_000, help="random env steps recorded")
    parser.add_argument("--length", type=int, default=25, help="segment length")
    parser.add_argument("--pairs", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from prefloop.datasets import export_dataset, load_dataset
    from prefloop.envs import EnvSpec, SegmentBuffer, VecSegmentRecorder
    from prefloop.store import PreferenceStore, sqlite_url
    from prefloop.training.loop import build_vec_env, collect_random
    from prefloop.types import Choice, SegmentPair

    buffer = SegmentBuffer(100_000)
    recorder = VecSegmentRecorder(build_vec_env(EnvSpec(args.env), 2, seed=0), buffer, args.length, seed=0)
    collect_random(recorder, args.steps, seed=0)
    segments = buffer.recent()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="prefloop-open-data-") as tmp:
        root = Path(tmp)
        os.environ["MINARI_DATASETS_PATH"] = str(root / "minari")
        url = sqlite_url(root / "store.sqlite")
        with PreferenceStore(url, "bench") as store:
            store.set_meta("env_spec", json.dumps(EnvSpec(args.env).to_json()))
            picks = [rng.choice(len(segments), 2, replace=False) for _ in range(args.pairs)]
            ids = store.add_pairs([SegmentPair(segments[a], segments[b]) for a, b in picks], labels_per_pair=2)
            for rater in ("alice", "bob"):
                for _ in ids:
                    pair = store.claim_next(rater)
                    store.answer(pair.id, rater, Choice.LEFT if rng.random() < 0.5 else Choice.RIGHT, 1.0)
        print(json.dumps({"env": args.env, "recorded_segments": len(segments), "pairs": args.pairs, "labels": 2 * args.pairs,
                          "obs": f"{segments[0].obs.dtype}{list(segments[0].obs.shape)}"}))
        for layout in ("jsonl", "parquet"):
            start = time.perf_counter()
            export_dataset(url, "bench", root / layout, layout=layout)
            exported = time.perf_counter() - start
            start = time.perf_counter()
            load_dataset(root / layout)
            loaded = time.perf_counter() - start
            files = {p.name: p.stat().st_size for p in sorted((root / layout).iterdir())}
            print(json.dumps({"layout": layout, "bytes": sum(files.values()), "files": files,
                              "export_s": round(exported, 3), "load_s": round(loaded, 3)}))
        from prefloop.datasets.episodes import export_minari

        start = time.perf_counter()
        summary = export_minari(url, "bench", "prefloop/bench-v0")
        seconds = time.perf_counter() - start
        size = sum(p.stat().st_size for p in Path(summary.path).rglob("*") if p.is_file())
        print(json.dumps({"layout": "minari", "bytes": size, "episodes": summary.episodes, "steps": summary.steps,
                          "export_s": round(seconds, 3)}))


if __name__ == "__main__":
    main()
