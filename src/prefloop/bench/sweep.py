"""``prefloop bench``: preference runs against their baselines, over a grid, in parallel.

For every env x algorithm x seed the grid also runs the same algorithm on the true reward (same
hyper-parameters and steps) and measures a uniformly random policy. Each preference run's return is
normalised as ``(R - R_random) / (R_true - R_random)`` with the baselines' means over seeds.

Outputs in ``out_dir``: ``results.json`` (schema ``prefloop.bench/1``, documented in
docs/bench-results-schema.md), ``results.md`` (a table: median and interquartile range over seeds),
``learning_curves.png``, ``return_vs_labels.png``, ``return_vs_human_minutes.png`` and ``groups.png`` (every group's seeds side by
side); each run's folder is under ``runs/``. The summaries and plots are in :mod:`prefloop.bench.report`.

A finished run leaves ``bench_row.json`` in its folder. ``resume`` takes those of ``out_dir``
instead of running them again (an interrupted run's folder is moved to ``runs/interrupted/``,
kept, and the run starts over, so results stay a function of the seed). ``reuse_from`` takes
finished runs from other sweeps' folders when their resolved :class:`TrainConfig` is identical
apart from where it was written (e.g. the true-reward baselines every sweep of an env shares).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import itertools
import json
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prefloop.bench.report import (
    aggregate,
    cost_rows,
    cost_table,
    markdown_table,
    time_split,
    write_plots,
)
from prefloop.cost import CostSettings
from prefloop.envs.presets import default_preset
from prefloop.reward_models import RewardModelConfig
from prefloop.serialization import strict_json
from prefloop.teachers.simulated import teacher_spec
from prefloop.teachers.specs import folder_name, parse_teacher_spec
from prefloop.training.config import ConfigError, TrainConfig
from prefloop.training.query import DEFAULT_QUERY, QueryConfig
from prefloop.training.rundir import RunDirError, write_atomic

log = logging.getLogger("prefloop.bench")
SCHEMA = "prefloop.bench/1"


@dataclass(frozen=True)
class BenchConfig:
    """A grid of runs. ``algos=(None,)`` means each env preset's default algorithm; a teacher is a
    B-Pref preset name with optional overrides, e.g. ``"mistake:epsilon=0.2"``, a simulated crowd
    (``"crowd:3xcareful@0.05,random,adversarial"``) or a fitted rater (``"fitted:PATH,rater=NAME"``);
    ``rater_models`` are the losses compared (``RewardModelConfig.rater_model``)."""

    envs: tuple[str, ...] = ("CartPole-v1",)
    label_budgets: tuple[int, ...] = (200,)
    seeds: tuple[int, ...] = (0, 1, 2)
    teachers: tuple[str, ...] = ("oracle",)
    queries: tuple[str, ...] = (DEFAULT_QUERY,)
    rater_models: tuple[str, ...] = ("reliability",)
    algos: tuple[str | None, ...] = (None,)
    steps: int | None = None
    out_dir: Path = Path("bench-out/latest")
    workers: int | None = None
    eval_episodes: int = 10
    random_episodes: int = 20
    executor: str = "process"
    ray_address: str | None = None
    resume: bool = False
    reuse_from: tuple[Path, ...] = ()
    answer_seconds: float = 0.0  # > 0: teachers answer at human pace through the store (prefloop.teachers.clock)
    answer_seconds_sigma: float = 0.0
    background_fit: bool | None = None  # TrainConfig.background_fit of the preference runs
    # What labels cost (prefloop.cost): the results add cost and return gained per hour and per cost.
    hourly_rate: float | None = None
    cost_per_label: float | None = None
    currency: str = "USD"


ROW_FILE = "bench_row.json"
# Fields that say where or how visibly a run was made, not what it computes.
_NOT_IDENTITY = ("run_dir", "run_name", "progress_bar", "db_url")


@dataclass(frozen=True)
class Job:
    kind: str  # "preferences" or "true_reward"
    config: TrainConfig

    def identity(self) -> str:
        """What makes two jobs the same computation: the kind and the resolved config, minus paths."""
        return run_identity(self.kind, self.config.resolve().to_json())


# Fields only a preference run reads: a true-reward baseline is the same computation whatever they
# say, so a baseline stays reusable when the reward model's or the segments' defaults change.
_PREFERENCE_ONLY = (
    "teacher", "teacher_params", "labels", "segment_length", "query", "reward_model", "schedule",
    "segment_buffer", "guideline", "when_behind", "min_initial_labels", "gold_fraction", "raters_per_pair",
    "reset_critic", "background_fit",
)


def run_identity(kind: str, resolved_config: dict[str, Any]) -> str:
    ignored = _NOT_IDENTITY + (_PREFERENCE_ONLY if kind == "true_reward" else ())
    data = {k: v for k, v in resolved_config.items() if k not in ignored}
    return json.dumps({"kind": kind, "config": data}, sort_keys=True)


def plan_jobs(config: BenchConfig) -> list[Job]:
    """Every run of the grid. Each seed's true-reward baseline comes right before that seed's
    preference runs, so on a pool the runs compared for wall time mostly run side by side, under
    the same load."""
    runs_dir = Path(config.out_dir) / "runs"
    jobs: list[Job] = []
    for env_id, algo, seed in itertools.product(config.envs, config.algos, config.seeds):
        algo_name = algo or default_preset(env_id).algo
        algo_folder = folder_name(algo_name)  # an import path (sb3_contrib:TRPO) has a colon
        jobs.append(Job("true_reward", TrainConfig(
            env_id=env_id, run_dir=runs_dir / f"{env_id}-{algo_folder}-true-s{seed}", algo=algo_name,
            steps=config.steps, seed=seed, reward_source="true", progress_bar=False,
            eval_episodes=config.eval_episodes,
        )))
        for labels, teacher, query, rater_model in itertools.product(
            config.label_budgets, config.teachers, config.queries, config.rater_models
        ):
            name, params = parse_teacher_spec(teacher)
            folder_teacher = folder_name(teacher_spec(name, params))
            loss = "" if rater_model == "reliability" else f"-{rater_model}"
            jobs.append(Job("preferences", TrainConfig(
                env_id=env_id, run_dir=runs_dir / f"{env_id}-{algo_folder}-{folder_teacher}{loss}-{query}-{labels}-s{seed}",
                algo=algo_name, steps=config.steps, seed=seed, labels=labels, teacher=name, teacher_params=params,
                query=QueryConfig.from_spec(query), progress_bar=False, eval_episodes=config.eval_episodes,
                # seeded with the run's seed, as `prefloop train --seed` does: a bench run is that run
                reward_model=RewardModelConfig(rater_model=rater_model, seed=seed),
                answer_seconds=config.answer_seconds, answer_seconds_sigma=config.answer_seconds_sigma,
                background_fit=config.background_fit,
            )))
    return jobs


def run_job(job: Job) -> dict[str, Any]:
    """Run one job (in a worker process) and return its row of ``results.json``."""
    from prefloop.training.loop import train

    logging.basicConfig(level=logging.WARNING)
    result = train(job.config)
    config = result.config
    row = {
        "kind": job.kind,
        "env_id": config.env_id,
        "algo": config.algo,
        "seed": config.seed,
        "steps": config.steps,
        "labels": config.labels if job.kind == "preferences" else 0,
        "teacher": teacher_spec(config.teacher, config.teacher_params) if job.kind == "preferences" else None,
        "query": config.query.spec if job.kind == "preferences" else None,
        "rater_model": config.reward_model.rater_model if job.kind == "preferences" else None,
        "rater_reliability": _rater_reliability(config) if job.kind == "preferences" else None,
        "eval_return_mean": result.eval_return_mean,
        "eval_returns": result.eval_returns,
        "labels_used": result.labels_used,
        "wall_time_s": result.wall_time_s,
        "cpu_time_s": result.cpu_time_s,
        "reward_learning_time_s": result.reward_learning_time_s,
        "reward_model": result.reward_model,
        "labels_fitted": result.labels_fitted,
        "pairs_withdrawn": result.pairs_withdrawn,
        "human_answer_s": result.human_time.get("answer_s", 0.0),
        "human_time_s": result.human_time.get("span_s", 0.0),
        "curve": result.curve,
        "run_dir": str(config.run_dir),
    }
    write_atomic(config.run_dir / ROW_FILE, strict_json(row))
    return row


def _rater_reliability(config: TrainConfig) -> list[dict[str, Any]] | None:
    """The run's last per-rater reliability estimates (run meta), None when the plain loss was used."""
    from prefloop.store import PreferenceStore, sqlite_url
    from prefloop.training.rundir import RunDir

    url = config.db_url or sqlite_url(RunDir(config.run_dir).store_path)
    with PreferenceStore(url, run_name=config.run_name or "default") as store:
        raw = store.get_meta("rater_reliability")
    return None if raw is None else json.loads(raw)["raters"]


def finished_rows(folder: Path) -> dict[str, dict[str, Any]]:
    """The finished runs of a sweep folder, by :meth:`Job.identity`.

    Reads each ``runs/*/bench_row.json`` and, for sweeps written before those existed, the rows of
    ``results.json`` whose run folder still holds its ``config.json``.
    """
    folder = Path(folder)
    rows: dict[str, dict[str, Any]] = {}
    candidates: list[tuple[Path, dict[str, Any]]] = []
    results = folder / "results.json"
    if results.is_file():
        for row in json.loads(results.read_text()).get("runs", []):
            candidates.append((folder / "runs" / Path(row["run_dir"]).name, row))
    for row_file in sorted(folder.glob(f"runs/*/{ROW_FILE}")):
        candidates.append((row_file.parent, json.loads(row_file.read_text())))
    for run_dir, row in candidates:
        config_file = run_dir / "config.json"
        if not config_file.is_file():
            continue
        try:
            resolved = TrainConfig.load(config_file).to_json()
        except ConfigError as exc:  # written by another prefloop version: run it again instead
            log.warning("not reusing %s: %s", run_dir, exc)
            continue
        rows[run_identity(row["kind"], resolved)] = row
    return rows


def random_baselines(config: BenchConfig) -> list[dict[str, Any]]:
    from prefloop.envs import EnvSpec
    from prefloop.training.evaluation import random_policy_returns

    rows = []
    for env_id, seed in itertools.product(config.envs, config.seeds):
        preset = default_preset(env_id)
        returns = random_policy_returns(EnvSpec(env_id, preset.env_kwargs), config.random_episodes, seed=seed + 20_000)
        rows.append({"env_id": env_id, "seed": seed, "return_mean": float(np.mean(returns)), "returns": returns})
    return rows


EXECUTORS = ("process", "ray")
HEARTBEAT_S = 60.0  # seconds between "still running" lines while no run finishes


def execute(jobs: list[Job], workers: int, executor: str = "process", ray_address: str | None = None) -> list[dict[str, Any]]:
    """Run jobs in parallel and log each as it finishes.

    ``process`` (default): a local process pool. ``ray``: Ray tasks of one CPU each, on a local
    Ray instance started here (bound to 127.0.0.1, shut down afterwards) or on the cluster at
    ``ray_address`` (its workers need prefloop installed). Every job is seeded and runs torch on
    one thread, so both executors give the same numbers for the same seeds.
    """
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []

    def finished(job: Job, row: dict[str, Any]) -> None:
        rows.append(row)
        log.info(
            "[%d/%d] %s %s return %.1f (%.0f s, %.0f s elapsed)",
            len(rows), len(jobs), job.kind, job.config.run_dir.name, row["eval_return_mean"], row["wall_time_s"],
            time.perf_counter() - started,
        )

    if executor == "ray":
        _execute_on_ray(jobs, workers, ray_address, finished, started)
        return rows
    if executor != "process":
        raise ValueError(f"unknown executor {executor!r}; choose one of {EXECUTORS}")
    context = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending = {pool.submit(run_job, job): job for job in jobs}
        while pending:
            done, _ = cf.wait(pending, timeout=HEARTBEAT_S, return_when=cf.FIRST_COMPLETED)
            if not done:
                _heartbeat(len(rows), len(jobs), started)
            for future in done:
                finished(pending.pop(future), future.result())
    return rows


def _heartbeat(finished: int, total: int, started: float) -> None:
    """A line a minute while runs go on, so a sweep of long runs never looks stuck."""
    log.info("bench: %d/%d runs finished, %.0f s elapsed", finished, total, time.perf_counter() - started)


def _execute_on_ray(jobs: list[Job], workers: int, address: str | None, finished, started: float) -> None:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("--ray needs Ray: pip install 'prefloop[ray]'") from exc
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            try:
                ray.init(address=address, log_to_driver=False)
            except (ValueError, ConnectionError, RuntimeError) as exc:
                raise ConfigError(f"--ray-address {address}: no Ray cluster there ({exc}); give the head's "
                                  "address, e.g. ray://HOST:10001 or HOST:6379, or leave it out for a local Ray") from None
        else:
            # A private local instance on loopback only; the dashboard is not needed.
            ray.init(num_cpus=workers, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        remote_job = ray.remote(num_cpus=1)(run_job)
        pending = {remote_job.remote(job): job for job in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=HEARTBEAT_S)
            if not done:
                _heartbeat(len(jobs) - len(pending), len(jobs), started)
            for ref in done:
                finished(pending.pop(ref), ray.get(ref))
    finally:
        if started_here:
            ray.shutdown()


def results_document(config: BenchConfig, runs: list[dict[str, Any]], random_rows: list[dict[str, Any]], wall_time_s: float) -> dict[str, Any]:
    """The ``results.json`` document.

    Keys: ``schema`` ("prefloop.bench/1"); ``created_at`` (ISO time); ``config`` (the grid);
    ``wall_time_s`` (the whole sweep); ``runs`` (one row per run: kind "preferences" or
    "true_reward", env_id, algo, seed, steps, labels, teacher, query, eval_return_mean,
    eval_returns, labels_used, wall_time_s, cpu_time_s, reward_learning_time_s, reward_model stats, curve
    [{env_step, true_return, learned_return?}], run_dir, and reused_from when the run was taken
    from an earlier sweep instead of run again); ``random`` (env_id, seed, return_mean,
    returns); ``groups`` (see :func:`prefloop.bench.report.aggregate`: statistics are {median, q25, q75, per_seed});
    ``cost`` (see :func:`prefloop.bench.report.cost_rows`; empty without a price).
    """
    grid = dataclasses.asdict(config)
    groups = aggregate(runs, random_rows)
    grid["out_dir"] = str(config.out_dir)
    grid["reuse_from"] = [str(p) for p in config.reuse_from]
    return {
        "schema": SCHEMA,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": grid,
        "wall_time_s": wall_time_s,
        "runs": sorted(runs, key=lambda r: (r["env_id"], r["kind"], r["labels"], r["seed"])),
        "random": random_rows,
        "groups": groups,
        "time": time_split(runs),
        "cost": cost_rows(groups, _cost_settings(config)),
    }


def _cost_settings(config: BenchConfig) -> CostSettings | None:
    if config.hourly_rate is None and config.cost_per_label is None:
        return None
    return CostSettings(config.hourly_rate, config.cost_per_label, config.currency)


def check_grid(config: BenchConfig) -> None:
    """Refuse a grid with an unknown env, an algorithm that cannot act in an env, or spaces the
    reward model cannot read -- before any folder is made or any run starts.

    Raises:
        EnvSetupError, AlgorithmError: one line naming the env/algorithm and the fix.
    """
    from prefloop.envs import EnvSpec, make_env
    from prefloop.training.algos import check_algorithm_fits

    for env_id in config.envs:
        preset = default_preset(env_id)
        env = make_env(EnvSpec(env_id, preset.env_kwargs))
        try:
            for algo in config.algos:
                check_algorithm_fits(algo or preset.algo, env.action_space, env_id)
        finally:
            env.close()


def split_finished(config: BenchConfig, jobs: list[Job]) -> tuple[list[dict[str, Any]], list[Job]]:
    """Rows of jobs already finished (``resume``, ``reuse_from``) and the jobs still to run.

    Raises:
        RunDirError: a job's folder exists and ``resume`` is off (nothing is changed).
    """
    known: dict[str, dict[str, Any]] = {}
    for folder in config.reuse_from:
        if not Path(folder).is_dir():
            raise RunDirError(f"--reuse {folder}: no such folder; give the --out folder of an earlier sweep")
        known.update(finished_rows(Path(folder)))
    if config.resume:
        if not Path(config.out_dir).is_dir():  # a mistyped --out would silently start the whole sweep again
            raise RunDirError(f"--resume: {config.out_dir} holds no sweep to finish; check --out, or leave out "
                              "--resume to start a new sweep there")
        known.update(finished_rows(Path(config.out_dir)))
    done: list[dict[str, Any]] = []
    todo: list[Job] = []
    for job in jobs:
        row = known.get(job.identity())
        if row is not None:
            done.append({**row, "reused_from": row["run_dir"]})
            continue
        run_dir = job.config.run_dir
        if run_dir.exists():
            if not config.resume:
                raise RunDirError(
                    f"{run_dir} already exists: add --resume to finish this sweep, or choose a new --out folder "
                    "(nothing was changed)"
                )
            # Interrupted: keep what it stored, start the run over so its result depends only on the seed.
            aside = run_dir.parent / "interrupted" / f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            aside.parent.mkdir(parents=True, exist_ok=True)
            run_dir.rename(aside)
            log.warning("%s was interrupted; kept it as %s and run it again", run_dir, aside)
        todo.append(job)
    return done, todo


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Run the grid and write results.json, results.md and the plots into ``config.out_dir``."""
    out_dir = Path(config.out_dir)
    check_grid(config)
    jobs = plan_jobs(config)
    done, todo = split_finished(config, jobs)
    out_dir.mkdir(parents=True, exist_ok=True)
    workers = config.workers or os.cpu_count() or 1
    log.info("bench: %d runs on %d workers -> %s (%d finished earlier, reused)", len(todo), workers, out_dir, len(done))
    started = time.perf_counter()
    random_rows = random_baselines(config)
    runs = done + execute(todo, workers, config.executor, config.ray_address)
    document = results_document(config, runs, random_rows, time.perf_counter() - started)
    (out_dir / "results.json").write_text(strict_json(document, indent=1))
    table = markdown_table(document["groups"])
    split = document["time"]
    ran = (
        f"{split['runs']} runs took {split['run_time_s']:.0f} s of run time: reward learning "
        f"{split['reward_learning_s']:.0f} s ({split['reward_learning_share']:.0%}), policy learning {split['policy_learning_s']:.0f} s"
        if split["runs"] else "no run was left to run"
    )
    timing = (
        f"Sweep wall time: {document['wall_time_s']:.0f} s on {workers} workers; {ran}"
        + (f"; {len(done)} runs reused from earlier sweeps" if done else "") + ".\n"
    )
    costs = cost_table(document["cost"], config.currency)
    (out_dir / "results.md").write_text(f"# prefloop bench\n\n{table}\n{timing}" + (f"\n{costs}" if costs else ""))
    write_plots(document, out_dir)
    print(table)
    if costs:
        print(costs)
    print(timing, end="")
    print(f"results: {out_dir / 'results.json'}, {out_dir / 'results.md'}, plots: {out_dir}/*.png")
    return document
