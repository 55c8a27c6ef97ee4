"""SIGKILL a real `prefloop train` at 20 moments, resume it each time, and check nothing is lost.

The run is small (CartPole-v1, oracle teacher, 30k env steps, 60 labels). The script watches the
run folder and its SQLite store from outside (read-only) and kills the trainer with SIGKILL when
a trigger fires: during start-up, while the teacher answers the initial round, mid label round,
right after a round's last answer (during the reward-model fit), while a checkpoint is being
written (a ``step-*.tmp`` folder exists), during the policy update, during the final
evaluation. After every kill it checks, before resuming with ``prefloop train --resume``:

- no label lost: every label stored before is still there, unchanged (id, pair, rater, choice,
  time), and none was retracted;
- no label counted twice: one live label per (pair, rater), no pair with more live labels than
  it asked for, no pair asked twice beyond the budget;
- no segment lost: every segment a pair uses exists and its arrays load;
- the latest checkpoint loads (SB3 policy, reward model, state.json), and `prefloop doctor`
  finds no error (a leftover ``.tmp`` checkpoint is a warning);

and at the end: the run finishes, summary.json exists, labels == budget, the final reward model
was fitted on every label.

Usage (about 3-5 minutes on 2 cores)::

    python -m benchmarks.kill_resume --out bench-out/kill-resume/kill_resume.json

Prints a Markdown table and writes the JSON to ``--out``; exit code 1 if an invariant failed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STEPS = 30_000
LABELS = 60
POLL_S = 0.002
KILL_TIMEOUT_S = 240.0  # per kill: the trigger must fire within this, or the kill is recorded as missed


Trigger = Callable[[dict[str, Any], float, dict[str, Any]], bool]


@dataclass(frozen=True)
class KillPoint:
    """Kill the trainer ``delay_s`` after ``fires(now, seconds since launch, at launch)`` is true.

    ``now`` and ``at launch`` are :func:`observe` snapshots of the run folder.
    """

    name: str
    fires: Trigger
    delay_s: float = 0.0


def kill_points(labels: int = LABELS, steps: int = STEPS) -> list[KillPoint]:
    """20 moments spread over a run with ``labels`` labels and ``steps`` env steps, in run order.

    With the default schedule the initial round asks for 25% of the labels and 12 more rounds
    follow by 60% of the steps (cumulative 28, 33, 38, 41, 44, 47, 49, 52, 54, 56, 58, 60 of 60).
    """
    def at_labels(n: int) -> Trigger:
        return lambda o, _t, _l: o["labels"] >= n

    def tmp_checkpoint() -> Trigger:  # a checkpoint folder being written now, not a leftover
        return lambda o, _t, launch: bool(set(o["tmp_checkpoints"]) - set(launch["tmp_checkpoints"]))

    def checkpoint_at(step: int) -> Trigger:  # a checkpoint this process wrote
        return lambda o, _t, launch: o["checkpoint_step"] >= step and o["checkpoint_step"] > launch["checkpoint_step"]

    def after(seconds: float) -> Trigger:
        return lambda _o, t, _l: t >= seconds

    def answering() -> Trigger:  # this process's teacher has answered a pair and more are open
        return lambda o, _t, launch: o["labels"] > launch["labels"] and o["labels"] < o["pairs"]

    def round_answered() -> Trigger:  # this process answered the last open pair: the refit runs now
        return lambda o, _t, launch: o["labels"] > launch["labels"] and o["labels"] >= o["pairs"]

    def either(first: Trigger, second: Trigger) -> Trigger:
        return lambda o, t, launch: first(o, t, launch) or second(o, t, launch)

    first = max(1, -(-labels * 25 // 100))
    return [
        KillPoint("start-up: importing, creating the run folder", after(1.0)),
        KillPoint("initial round: teacher answering (3 labels)", at_labels(3)),
        KillPoint("initial round: teacher answering (late)", at_labels(first - 3)),
        KillPoint("a round fully answered: reward-model fit", round_answered()),
        KillPoint("writing a checkpoint (.tmp folder exists)", tmp_checkpoint()),
        KillPoint("policy update after a checkpoint", checkpoint_at(1), delay_s=0.3),
        KillPoint("mid label round: teacher answering", answering()),
        KillPoint("a round fully answered: reward-model fit", round_answered()),
        KillPoint("writing a checkpoint (.tmp folder exists)", tmp_checkpoint()),
        KillPoint("mid label round: teacher answering", answering()),
        KillPoint("resume start-up (imports, loading the checkpoint)", after(3.0)),
        KillPoint("a round fully answered: reward-model fit", round_answered()),
        KillPoint("writing a checkpoint (.tmp folder exists)", tmp_checkpoint()),
        KillPoint("mid label round: teacher answering", answering()),
        KillPoint("policy update at half the steps", checkpoint_at(steps // 2), delay_s=0.3),
        KillPoint("mid label round: teacher answering", answering()),
        KillPoint("writing a checkpoint (.tmp folder exists)", tmp_checkpoint()),
        KillPoint("last label answered: final fit (if already answered: next checkpoint)",
                  either(lambda o, _t, launch: launch["labels"] < labels <= o["labels"],
                         lambda o, _t, launch: launch["labels"] >= labels and o["checkpoint_step"] > launch["checkpoint_step"])),
        KillPoint("policy update after the last label", checkpoint_at(int(steps * 0.8)), delay_s=0.2),
        KillPoint("final checkpoint written: evaluation and summary", checkpoint_at(steps)),
    ]


# ---------------------------------------------------------------------------------------------
# Looking at the run from outside (read-only)


def observe(run_dir: Path) -> dict[str, Any]:
    """Cheap snapshot: live labels, pairs, newest complete / in-progress checkpoint, summary."""
    obs: dict[str, Any] = {"labels": 0, "pairs": 0, "checkpoint_step": -1, "tmp_checkpoints": [],
                           "summary": (run_dir / "summary.json").exists()}
    ckpts = run_dir / "checkpoints"
    try:
        for entry in os.scandir(ckpts):
            if not entry.name.startswith("step-"):
                continue
            if entry.name.endswith(".old.tmp"):
                continue  # an old checkpoint being deleted, not one being written
            if entry.name.endswith(".tmp"):
                obs["tmp_checkpoints"].append(entry.name)
            elif os.path.exists(os.path.join(entry.path, "state.json")):
                obs["checkpoint_step"] = max(obs["checkpoint_step"], int(entry.name[5:]))
    except (FileNotFoundError, ValueError):
        pass
    store = run_dir / "prefs.sqlite"
    if store.exists():
        try:
            with closing(sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True, timeout=5)) as raw:
                obs["labels"] = raw.execute("SELECT COUNT(*) FROM labels WHERE retracted_at IS NULL").fetchone()[0]
                obs["pairs"] = raw.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
        except sqlite3.Error:
            pass  # the trainer is creating the schema right now
    return obs


def progress_env_step(run_dir: Path) -> int | None:
    """The env step the trainer last published (run meta ``progress``), if any."""
    store = run_dir / "prefs.sqlite"
    if not store.exists():
        return None
    try:
        with closing(sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True, timeout=5)) as raw:
            row = raw.execute("SELECT value FROM run_meta WHERE key = 'progress'").fetchone()
        return int(json.loads(row[0])["env_step"]) if row else None
    except (sqlite3.Error, ValueError, KeyError, TypeError):
        return None


def snapshot_labels(run_dir: Path) -> list[tuple]:
    store = run_dir / "prefs.sqlite"
    if not store.exists():
        return []
    with closing(sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True, timeout=30)) as raw:
        try:
            return raw.execute(
                "SELECT id, pair_id, rater_id, choice, response_time_s, created_at, retracted_at FROM labels ORDER BY id"
            ).fetchall()
        except sqlite3.OperationalError:
            return []  # killed before the schema existed


def check_invariants(run_dir: Path, before: list[tuple], final: bool) -> tuple[list[str], list[tuple]]:
    """Every check listed in the module docstring; returns (problems, the labels now)."""
    from prefloop.ops.doctor import ERROR, check_run
    from prefloop.training.algos import algorithm_class
    from prefloop.training.config import TrainConfig

    problems: list[str] = []
    now = snapshot_labels(run_dir)
    by_id = {row[0]: row for row in now}
    changed = [row for row in before if by_id.get(row[0]) != row]
    if changed:
        problems.append(f"{len(changed)} labels stored before the kill are gone or changed (ids {[r[0] for r in changed[:5]]})")
    if any(row[6] is not None for row in now):
        problems.append("a label was retracted")
    store = run_dir / "prefs.sqlite"
    if store.exists() and now:
        with closing(sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True, timeout=30)) as raw:
            dup = raw.execute(
                "SELECT COUNT(*) FROM (SELECT pair_id, rater_id FROM labels WHERE retracted_at IS NULL "
                "GROUP BY pair_id, rater_id HAVING COUNT(*) > 1)"
            ).fetchone()[0]
            over = raw.execute(
                "SELECT COUNT(*) FROM pairs p WHERE (SELECT COUNT(*) FROM labels l WHERE l.pair_id = p.id "
                "AND l.retracted_at IS NULL) > p.labels_per_pair"
            ).fetchone()[0]
            n_pairs = raw.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
            lost_segments = raw.execute(
                "SELECT COUNT(*) FROM pairs p WHERE NOT EXISTS (SELECT 1 FROM segments s WHERE s.id = p.left_segment_id) "
                "OR NOT EXISTS (SELECT 1 FROM segments s WHERE s.id = p.right_segment_id)"
            ).fetchone()[0]
        if dup:
            problems.append(f"{dup} (pair, rater) with two live labels")
        if over:
            problems.append(f"{over} pairs with more labels than asked")
        if n_pairs > LABELS:
            problems.append(f"{n_pairs} pairs asked, budget {LABELS}")
        if lost_segments:
            problems.append(f"{lost_segments} pairs use a missing segment")
    if (run_dir / "config.json").exists():
        report = check_run(run_dir)  # integrity, statuses, segment arrays, checkpoint loads
        problems += [f"doctor: {f.check}: {f.what}" for f in report.remaining if f.severity == ERROR]
        config = TrainConfig.load(run_dir / "config.json")
        from prefloop.training.rundir import RunDir

        latest = RunDir(run_dir).latest_checkpoint()
        if latest is not None:
            try:
                algorithm_class(config.algo or "ppo").load(latest / "policy.zip", device="cpu")
            except Exception as exc:  # whatever SB3 raises is the finding
                problems.append(f"latest checkpoint {latest.name}: policy does not load ({type(exc).__name__}: {exc})")
    if final:
        summary_path = run_dir / "summary.json"
        if not summary_path.exists():
            problems.append("summary.json missing after the final resume")
        else:
            summary = json.loads(summary_path.read_text())
            if summary.get("labels_used") != LABELS:
                problems.append(f"summary labels_used {summary.get('labels_used')} != {LABELS}")
            fitted_on = (summary.get("reward_model") or {}).get("labels")
            if fitted_on != LABELS:
                problems.append(f"the final reward model was fitted on {fitted_on} labels, not all {LABELS}")
        if len(now) != LABELS:
            problems.append(f"{len(now)} labels stored, budget {LABELS}")
    return problems, now


# ---------------------------------------------------------------------------------------------
# Driving the trainer


def launch(run_dir: Path, resume: bool, log: Path) -> subprocess.Popen:
    if resume:
        args = ["train", "--resume", "--run-dir", str(run_dir), "--no-progress"]
    else:
        args = ["train", "--env", "CartPole-v1", "--teacher", "oracle", "--steps", str(STEPS), "--labels", str(LABELS),
                "--seed", "0", "--eval-episodes", "3", "--run-dir", str(run_dir), "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "a") as handle:
        handle.write(f"\n===== {' '.join(args)}\n")
        handle.flush()
        return subprocess.Popen([sys.executable, "-m", "prefloop.cli", *args], stdout=handle, stderr=subprocess.STDOUT, env=env)


def wait_and_kill(proc: subprocess.Popen, run_dir: Path, point: KillPoint) -> dict[str, Any]:
    """Poll until the trigger fires, then SIGKILL; what was seen at that moment."""
    started = time.monotonic()
    fired_at = None
    at_launch = obs = observe(run_dir)
    while True:
        if proc.poll() is not None:
            return {"killed": False, "exit_code": proc.returncode, "obs": obs}
        elapsed = time.monotonic() - started
        if elapsed > KILL_TIMEOUT_S:
            proc.kill()
            proc.wait()
            return {"killed": False, "exit_code": "timeout", "obs": obs}
        obs = observe(run_dir)
        if fired_at is None and point.fires(obs, elapsed, at_launch):
            fired_at = time.monotonic()
        if fired_at is not None and time.monotonic() - fired_at >= point.delay_s:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            after = observe(run_dir)
            writing = sorted(set(obs["tmp_checkpoints"]) - set(at_launch["tmp_checkpoints"]))
            return {"killed": True, "exit_code": proc.returncode, "obs": obs, "obs_after": after, "writing": writing,
                    "seconds_after_launch": round(time.monotonic() - started, 2)}
        time.sleep(POLL_S)


def run(out: Path, work: Path) -> dict[str, Any]:
    run_dir = work / "run"
    log = work / "trainer.log"
    rows: list[dict[str, Any]] = []
    labels_before: list[tuple] = []
    resume = False
    for index, point in enumerate(kill_points(), start=1):
        proc = launch(run_dir, resume, log)
        seen = wait_and_kill(proc, run_dir, point)
        writing = seen.get("writing") or []
        env_step = max([progress_env_step(run_dir) or 0, seen["obs"]["checkpoint_step"], *(int(n.split(".")[0][5:]) for n in writing)])
        problems, labels_now = check_invariants(run_dir, labels_before, final=False)
        if not seen["killed"]:
            problems.append(f"not killed: the trainer exited with {seen['exit_code']} first (see {log})")
        row = {
            "kill": index,
            "point": point.name,
            "seconds_after_launch": seen.get("seconds_after_launch"),
            "checkpoint_being_written": writing[0] if writing else None,
            "env_step_at_kill": env_step,
            "checkpoint_step_after_kill": observe(run_dir)["checkpoint_step"],
            "labels_before": len(labels_before),
            "labels_after": len(labels_now),
            "problems": problems,
            "ok": not problems,
        }
        rows.append(row)
        print(f"kill {index:2d} {point.name}: env step ~{env_step}, labels {row['labels_before']} -> "
              f"{row['labels_after']}, {'ok' if row['ok'] else problems}", file=sys.stderr, flush=True)
        labels_before = labels_now
        # A run killed before its config.json was written has nothing to resume: start it again.
        resume = (run_dir / "config.json").exists()
    proc = launch(run_dir, resume, log)
    proc.wait(timeout=900)
    problems, labels_now = check_invariants(run_dir, labels_before, final=True)
    if proc.returncode != 0:
        problems.append(f"the final resume exited with {proc.returncode} (see {log})")
    final = {"exit_code": proc.returncode, "labels": len(labels_now), "problems": problems, "ok": not problems,
             "summary": json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else None}
    return {"steps": STEPS, "labels": LABELS, "kills": rows, "final": final, "log": str(log),
            "ok": all(r["ok"] for r in rows) and final["ok"]}


def markdown_table(result: dict[str, Any]) -> str:
    lines = ["| # | kill point | s after launch | env step at kill (last known) | checkpoint resumed from | labels before -> after | invariants |",
             "|---|---|---|---|---|---|---|"]
    for r in result["kills"]:
        tmp = f" (killed while writing {r['checkpoint_being_written']})" if r["checkpoint_being_written"] else ""
        lines.append(f"| {r['kill']} | {r['point']}{tmp} | {r['seconds_after_launch']} | {r['env_step_at_kill']} "
                     f"| {max(r['checkpoint_step_after_kill'], 0) or 'none'} | {r['labels_before']} -> {r['labels_after']} "
                     f"| {'ok' if r['ok'] else '; '.join(r['problems'])} |")
    f = result["final"]
    summary = f["summary"] or {}
    lines.append(f"| end | final resume to completion | | {STEPS} | | {f['labels']} labels, summary labels_used "
                 f"{summary.get('labels_used')}, reward model fitted on {(summary.get('reward_model') or {}).get('labels')} "
                 f"| {'ok' if f['ok'] else '; '.join(f['problems'])} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/kill-resume/kill_resume.json"))
    parser.add_argument("--keep", action="store_true", help="keep the run folder (printed) for inspection")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="prefloop-kill-"))
    try:
        result = run(args.out, work)
    finally:
        if not args.keep:
            import shutil

            (args.out.parent).mkdir(parents=True, exist_ok=True)
            log = work / "trainer.log"
            if log.exists():
                shutil.copy(log, args.out.with_suffix(".log"))
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"run folder kept: {work}", file=sys.stderr)
    table = markdown_table(result)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(table)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
