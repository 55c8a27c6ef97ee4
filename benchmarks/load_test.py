"""Many raters at once on one run: throughput, claim latency, and no label lost or counted twice.

Each simulated rater is its own OS process with its own :class:`PreferenceStore`, as real rater
app workers are. Processes rather than threads because the interesting contention is between
processes: SQLite's file lock (``BEGIN IMMEDIATE``, ``busy_timeout``) and PostgreSQL's row locks
see separate connections from separate processes, and no GIL serialises the raters' Python work.

Raters claim a pair, think a few milliseconds, and answer; some also

- submit the same answer form twice (it must count once),
- press "skip" (release the pair),
- are slow: take a short lease, let it expire, and answer late (accepted only if nobody else
  claimed the pair meanwhile, else a ``LeaseError``).

A quarter of the pairs need two labels from two different raters. Afterwards the database is
checked against what every rater was told: every label an ``answer()`` call returned is stored
unchanged (0 lost), no stored label was never acknowledged, no rater has two live labels on one
pair, no pair has more live labels than it asked for, every pair's status matches its labels.

Usage (bounded in count and time, loopback only)::

    python -m benchmarks.load_test --raters 50 --pairs 1000 --out bench-out/load/load.json

Prints a Markdown table and writes the numbers as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import create_engine, select

from prefloop.store import (
    ANSWERED,
    LeaseError,
    PreferenceStore,
    labels_table,
    pairs_table,
    sqlite_url,
)
from prefloop.types import Choice, Segment, SegmentPair

BACKENDS = ("sqlite", "postgresql")
_CHOICES = (Choice.LEFT, Choice.RIGHT, Choice.EQUAL, Choice.CANT_TELL)


@dataclass(frozen=True)
class LoadConfig:
    """One load test.

    Attributes:
        raters: concurrent rater processes.
        pairs: pairs queued before the raters start; every ``double_every``-th needs 2 labels.
        think_ms: each answer comes after a uniform 0..think_ms ms "look at the clips".
        lease_seconds: the normal lease of a claim.
        skip_fraction: claims released again ("skip") instead of answered.
        double_submit_fraction: answers submitted a second time (with another choice).
        slow_fraction: claims taken with a ``slow_lease_seconds`` lease and answered after it ran out.
        max_seconds: every rater stops after this long, finished or not.
        segment_length: steps per segment (obs are 4 floats per step, as in CartPole).
        seed: seeds the segments and every rater's choices.
    """

    raters: int = 50
    pairs: int = 1000
    double_every: int = 4
    think_ms: float = 20.0
    lease_seconds: float = 60.0
    skip_fraction: float = 0.03
    double_submit_fraction: float = 0.05
    slow_fraction: float = 0.01
    slow_lease_seconds: float = 0.2
    max_seconds: float = 300.0
    segment_length: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.raters < 2:
            raise ValueError(f"raters must be >= 2 (pairs needing 2 labels need 2 raters), got {self.raters}")
        if self.pairs < 1 or self.double_every < 1:
            raise ValueError(f"pairs and double_every must be >= 1, got {self.pairs}, {self.double_every}")
        if not 0 < self.max_seconds <= 3600:
            raise ValueError(f"max_seconds must be in (0, 3600], got {self.max_seconds}")

    def labels_per_pair(self, index: int) -> int:
        return 2 if (index + 1) % self.double_every == 0 else 1


def make_pairs(config: LoadConfig) -> list[tuple[SegmentPair, int]]:
    """The queued pairs with the labels each needs; segments are CartPole-sized random arrays."""
    rng = np.random.default_rng(config.seed)
    length = config.segment_length

    def segment() -> Segment:
        return Segment(
            obs=rng.normal(size=(length, 4)).astype(np.float32),
            actions=rng.integers(0, 2, size=length).astype(np.int64),
            true_rewards=np.ones(length, dtype=np.float32),
            n_valid=length,
            terminated=False,
            episode_seed=int(rng.integers(0, 2**31)),
            start_step=0,
            episode_actions=rng.integers(0, 2, size=length).astype(np.int64),
        )

    return [(SegmentPair(segment(), segment(), score=float(i)), config.labels_per_pair(i)) for i in range(config.pairs)]


def seed_run(url: str, run_name: str, config: LoadConfig) -> dict[int, int]:
    """Queue the pairs; returns labels_per_pair by pair id."""
    wanted: dict[int, int] = {}
    with PreferenceStore(url, run_name) as store:
        by_need: dict[int, list[SegmentPair]] = {}
        for pair, need in make_pairs(config):
            by_need.setdefault(need, []).append(pair)
        for need, pairs in sorted(by_need.items()):
            for pair_id in store.add_pairs(pairs, labels_per_pair=need):
                wanted[pair_id] = need
    return wanted


def rater_process(url: str, run_name: str, rater_id: str, config: LoadConfig, seed: int, barrier: Any, results: Any) -> None:
    """One rater: claim, think, answer until every pair of the run is answered (or time is up).

    Puts one dict on ``results``: acknowledged labels as (label_id, pair_id, rater, choice),
    claim latencies in seconds, and counters.
    """
    report: dict[str, Any] = {
        "rater": rater_id, "labels": [], "claim_s": [], "empty_claims": 0, "releases": 0,
        "late_rejected": 0, "late_accepted": 0, "double_submits": 0, "double_submit_changed": 0,
        "error": None, "started": None, "finished": None,
    }
    rng = random.Random(seed)
    store = PreferenceStore(url, run_name)
    try:
        barrier.wait(timeout=120)
        report["started"] = time.time()
        deadline = time.monotonic() + config.max_seconds
        skipped: list[int] = []
        while time.monotonic() < deadline:
            slow = rng.random() < config.slow_fraction
            lease = config.slow_lease_seconds if slow else config.lease_seconds
            started = time.perf_counter()
            pair = store.claim_next(rater_id, lease_seconds=lease, exclude=skipped)
            elapsed = time.perf_counter() - started
            skipped = []
            if pair is None:
                report["empty_claims"] += 1
                counts = store.counts()
                if counts["pending"] == 0 and counts["claimed"] == 0:
                    break
                time.sleep(0.02)  # others hold the rest, or need another rater; look again soon
                continue
            report["claim_s"].append(elapsed)
            assert pair.id is not None
            if not slow and rng.random() < config.skip_fraction:
                store.release(pair.id, rater_id)
                report["releases"] += 1
                skipped = [pair.id]
                continue
            think = config.slow_lease_seconds * 1.5 if slow else rng.uniform(0, config.think_ms / 1000)
            time.sleep(think)
            choice = rng.choice(_CHOICES)
            try:
                label = store.answer(pair.id, rater_id, choice, think)
            except LeaseError:
                report["late_rejected"] += 1  # the lease ran out and another rater took the pair
                continue
            if slow:
                report["late_accepted"] += 1
            report["labels"].append((label.id, label.pair_id, label.rater_id, label.choice.value))
            report["finished"] = time.time()
            if rng.random() < config.double_submit_fraction:
                again = store.answer(pair.id, rater_id, rng.choice(_CHOICES), think)
                report["double_submits"] += 1
                if again != label:
                    report["double_submit_changed"] += 1
    except BaseException as exc:  # reported, so the parent can fail loudly with the cause
        report["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        store.close()
        results.put(report)


def run_raters(url: str, run_name: str, config: LoadConfig) -> list[dict[str, Any]]:
    """Start ``config.raters`` processes on one run and collect their reports."""
    # fork: children need no re-import (50 imports would cost more CPU than the test itself);
    # no store or engine is open in this process while forking.
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    barrier, results = ctx.Barrier(config.raters), ctx.Queue()
    workers = [
        ctx.Process(
            target=rater_process,
            args=(url, run_name, f"rater-{i:02d}", config, config.seed * 1000 + i, barrier, results),
            daemon=True,
        )
        for i in range(config.raters)
    ]
    for worker in workers:
        worker.start()
    reports: list[dict[str, Any]] = []
    deadline = time.monotonic() + config.max_seconds + 180
    try:
        while len(reports) < len(workers):
            try:
                reports.append(results.get(timeout=1))
            except queue.Empty:
                dead = [w for w in workers if w.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{len(workers) - len(reports)} rater processes did not report "
                        f"(exit codes {[w.exitcode for w in dead]}, or past the time limit)"
                    )
        for worker in workers:
            worker.join(timeout=30)
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
    return reports


def verify(url: str, run_name: str, wanted: dict[int, int], reports: list[dict[str, Any]]) -> dict[str, int]:
    """Compare the database with what the raters were told; every count should be 0."""
    with PreferenceStore(url, run_name) as store:
        run_id = store.run_id
        stored = store.labels(include_retracted=True)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            statuses = dict(conn.execute(select(pairs_table.c.id, pairs_table.c.status).where(pairs_table.c.run_id == run_id)).all())
            live_rows = conn.execute(
                select(labels_table.c.pair_id, labels_table.c.rater_id)
                .join(pairs_table, pairs_table.c.id == labels_table.c.pair_id)
                .where(pairs_table.c.run_id == run_id, labels_table.c.retracted_at.is_(None))
            ).all()
    finally:
        engine.dispose()

    acknowledged = {row[0]: tuple(row) for r in reports for row in r["labels"]}
    in_db = {lab.id: (lab.id, lab.pair_id, lab.rater_id, lab.choice.value) for lab in stored if lab.retracted_at is None}
    live_per_pair = Counter(pair for pair, _ in live_rows)
    live_per_rater_pair = Counter((pair, rater) for pair, rater in live_rows)
    ack_counts = Counter(row[0] for r in reports for row in r["labels"])
    lost = [row for label_id, row in acknowledged.items() if in_db.get(label_id) != row]
    unacknowledged = [row for label_id, row in in_db.items() if label_id not in acknowledged]
    if lost or unacknowledged:  # the evidence, for whoever has to find out why
        print(f"lost (told, not stored as told): {lost[:5]}; stored but never told: {unacknowledged[:5]}", file=sys.stderr)
    return {
        "lost_labels": len(lost),
        "unacknowledged_labels": len(unacknowledged),
        "label_acknowledged_twice": sum(1 for n in ack_counts.values() if n > 1),
        "duplicate_live_labels": sum(1 for n in live_per_rater_pair.values() if n > 1),
        "over_answered_pairs": sum(1 for pair, n in live_per_pair.items() if n > wanted.get(pair, 0)),
        "status_mismatches": sum(
            1 for pair, need in wanted.items() if (statuses.get(pair) == ANSWERED) != (live_per_pair[pair] >= need)
        ),
        "incomplete_pairs": sum(1 for pair, need in wanted.items() if live_per_pair[pair] < need),
        "double_submit_changed": sum(r["double_submit_changed"] for r in reports),
        "rater_errors": sum(1 for r in reports if r["error"]),
    }


def run_backend(url: str, backend: str, config: LoadConfig, run_name: str = "load-test") -> dict[str, Any]:
    """Queue the pairs, let the raters loose, verify; one JSON-able result dict."""
    wanted = seed_run(url, run_name, config)
    reports = run_raters(url, run_name, config)
    invariants = verify(url, run_name, wanted, reports)
    claims = sorted(s for r in reports for s in r["claim_s"])
    n_labels = sum(len(r["labels"]) for r in reports)
    starts = [r["started"] for r in reports if r["started"]]
    ends = [r["finished"] for r in reports if r["finished"]]
    wall = (max(ends) - min(starts)) if starts and ends else float("nan")
    return {
        "backend": backend,
        "raters": config.raters,
        "pairs": config.pairs,
        "labels_expected": sum(wanted.values()),
        "labels_acknowledged": n_labels,
        "wall_s": wall,
        "labels_per_s": n_labels / wall if wall and wall > 0 else float("nan"),
        "claim_p50_ms": 1000 * statistics.median(claims) if claims else float("nan"),
        "claim_p95_ms": 1000 * _percentile(claims, 0.95) if claims else float("nan"),
        "claims": len(claims),
        "empty_claims": sum(r["empty_claims"] for r in reports),
        "releases": sum(r["releases"] for r in reports),
        "late_answers_accepted": sum(r["late_accepted"] for r in reports),
        "late_answers_rejected": sum(r["late_rejected"] for r in reports),
        "double_submits": sum(r["double_submits"] for r in reports),
        "rater_errors": [r["error"] for r in reports if r["error"]][:5],
        "invariants": invariants,
        "ok": all(v == 0 for v in invariants.values()),
    }


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return float(sorted_values[index])


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    head = (
        "| backend | raters | pairs | labels | labels/s | claim p50 ms | claim p95 ms | late ok/rejected "
        "| double submits | lost | dup live | over-answered | status mismatch | incomplete | ok |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in results:
        inv = r["invariants"]
        rows.append(
            f"| {r['backend']} | {r['raters']} | {r['pairs']} | {r['labels_acknowledged']}/{r['labels_expected']} "
            f"| {r['labels_per_s']:.0f} | {r['claim_p50_ms']:.1f} | {r['claim_p95_ms']:.1f} "
            f"| {r['late_answers_accepted']}/{r['late_answers_rejected']} | {r['double_submits']} "
            f"| {inv['lost_labels']} | {inv['duplicate_live_labels']} | {inv['over_answered_pairs']} "
            f"| {inv['status_mismatches']} | {inv['incomplete_pairs']} | {'yes' if r['ok'] else 'NO: ' + _problems(r)} |"
        )
    return head + "\n".join(rows) + "\n"


def _problems(result: dict[str, Any]) -> str:
    found = [f"{k}={v}" for k, v in result["invariants"].items() if v]
    return ", ".join(found + [str(e) for e in result["rater_errors"][:2]])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raters", type=int, default=50)
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--think-ms", type=float, default=20.0)
    parser.add_argument("--slow-fraction", type=float, default=0.01, help="claims answered after their short lease expired")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="per backend; raters stop after this")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-out/load/load.json"))
    args = parser.parse_args(argv)
    config = LoadConfig(raters=args.raters, pairs=args.pairs, think_ms=args.think_ms, slow_fraction=args.slow_fraction, max_seconds=args.max_seconds, seed=args.seed)

    results = []
    for backend in args.backends:
        with tempfile.TemporaryDirectory(prefix="prefloop-load-") as tmp:
            if backend == "sqlite":
                results.append(run_backend(sqlite_url(Path(tmp) / "prefs.sqlite"), backend, config))
            else:
                from prefloop.ops.local_postgres import start_local_postgres

                with start_local_postgres() as server:
                    results.append(run_backend(server.create_database("load"), backend, config))
        print(f"{backend}: done, ok={results[-1]['ok']}", file=sys.stderr, flush=True)

    table = markdown_table(results)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": asdict(config), "cpu_count": os.cpu_count(), "results": results}, indent=2))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
