"""prefloop bench: the aggregation against hand-made numbers, the results schema, and a tiny sweep
on each executor giving the same numbers."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import pytest

from prefloop.bench.sweep import SCHEMA, BenchConfig, run_bench
from prefloop.bench.report import aggregate, markdown_table, time_split
from prefloop.metrics import median_iqr, normalized_return


def run_row(kind: str, seed: int, ret: float, wall: float, labels: int = 0) -> dict:
    return {
        "kind": kind, "env_id": "E-v0", "algo": "ppo", "seed": seed, "labels": labels,
        "teacher": "oracle" if kind == "preferences" else None,
        "query": "uniform" if kind == "preferences" else None,
        "eval_return_mean": ret, "wall_time_s": wall, "cpu_time_s": wall / 2, "reward_learning_time_s": wall / 10,
    }


def test_aggregate_normalises_with_baseline_means_and_reports_median_and_iqr() -> None:
    runs = [
        run_row("true_reward", 0, 100.0, 10.0), run_row("true_reward", 1, 80.0, 10.0), run_row("true_reward", 2, 90.0, 20.0),
        run_row("preferences", 0, 90.0, 12.0, 50), run_row("preferences", 1, 50.0, 11.0, 50), run_row("preferences", 2, 10.0, 30.0, 50),
    ]
    random_rows = [{"env_id": "E-v0", "seed": s, "return_mean": 10.0} for s in range(3)]
    [group] = aggregate(runs, random_rows)
    # R_true = mean(100, 80, 90) = 90, R_random = 10: (R - 10) / 80
    assert group["normalized_return"]["per_seed"] == pytest.approx([1.0, 0.5, 0.0])
    assert group["normalized_return"]["median"] == pytest.approx(0.5)
    assert group["normalized_return"]["q25"] == pytest.approx(0.25)
    assert group["normalized_return"]["q75"] == pytest.approx(0.75)
    # wall-time ratio per seed against the same seed's baseline: 1.2, 1.1, 1.5
    assert group["wall_time_ratio"]["median"] == pytest.approx(1.2)
    assert group["cpu_time_ratio"]["per_seed"] == pytest.approx([1.2, 1.1, 1.5])
    assert group["true_reward_return"] == 90.0 and group["random_return"] == 10.0
    assert "| E-v0 | ppo | oracle | uniform | 50 | 0.50 [0.25, 0.75] | 50.0 | 90.0 | 10.0 | 1.20 | 1.20 | 10% |" in markdown_table([group])
    # runs arrive in the order they finish; per-seed lists still follow the seeds
    [shuffled] = aggregate(runs[::-1], random_rows)
    assert shuffled["seeds"] == [0, 1, 2] and shuffled["normalized_return"]["per_seed"] == pytest.approx([1.0, 0.5, 0.0])
    # 93 s of run time, of which 5.3 s in reward learning; a reused run costs nothing here
    split = time_split(runs + [{**runs[0], "reused_from": "elsewhere"}])
    assert split["runs"] == 6 and split["run_time_s"] == pytest.approx(93.0)
    assert split["reward_learning_s"] == pytest.approx(5.3) and split["policy_learning_s"] == pytest.approx(87.7)


def test_metrics_edge_cases() -> None:
    assert math.isnan(normalized_return(5.0, 10.0, 10.0))  # baselines equal: undefined, not a division by zero
    assert median_iqr([float("nan"), 1.0, 3.0]) == (2.0, 1.5, 2.5)
    assert all(math.isnan(v) for v in median_iqr([]))


def _refuse_non_json(token: str) -> None:
    raise AssertionError(f"results.json holds {token}, which is not JSON")


@pytest.mark.slow
def test_tiny_sweep_gives_the_same_numbers_on_both_executors(tmp_path: Path) -> None:
    results = {}
    for executor in ("process", "ray"):
        config = BenchConfig(
            envs=("CartPole-v1",), label_budgets=(8,), seeds=(0,), queries=("uniform",), steps=1_500,
            out_dir=tmp_path / executor, workers=2, eval_episodes=2, random_episodes=3, executor=executor,
        )
        document = run_bench(config)
        results[executor] = document
        # Valid JSON for any reader: a fit with too few labels has no correlation yet, written as null, never NaN.
        saved = json.loads((tmp_path / executor / "results.json").read_text(), parse_constant=_refuse_non_json)
        assert saved["schema"] == SCHEMA
        assert {r["kind"] for r in saved["runs"]} == {"preferences", "true_reward"}
        for row in saved["runs"]:
            assert {"env_id", "algo", "seed", "steps", "eval_return_mean", "eval_returns", "wall_time_s", "cpu_time_s", "curve"} <= set(row)
        documented = set(re.findall(r"`([a-z_0-9]+)`", (Path(__file__).parents[1] / "docs" / "bench-results-schema.md").read_text()))
        undocumented = (set(saved) | set(saved["config"]) | set(saved["time"]) | {k for r in saved["runs"] for k in r}
                        | {k for g in saved["groups"] for k in g}) - documented
        assert not undocumented, f"results.json keys missing from docs/bench-results-schema.md: {undocumented}"
        [group] = saved["groups"]
        assert {"normalized_return", "return", "wall_time_ratio", "true_reward_return", "random_return"} <= set(group)
        assert (tmp_path / executor / "results.md").read_text().count("| CartPole-v1 |") == 1
        assert saved["time"]["runs"] == 2 and 0 < saved["time"]["reward_learning_share"] < 1
        assert "reward learning" in (tmp_path / executor / "results.md").read_text()
        assert (tmp_path / executor / "learning_curves.png").stat().st_size > 1000
        assert (tmp_path / executor / "return_vs_labels.png").stat().st_size > 1000
        assert (tmp_path / executor / "groups.png").stat().st_size > 1000

    def numbers(document: dict) -> list:
        return sorted((r["kind"], r["seed"], r["eval_returns"], r["labels_used"]) for r in document["runs"])

    assert numbers(results["process"]) == numbers(results["ray"])


def test_interrupted_sweep_resumes_and_a_new_sweep_reuses_identical_baselines(tmp_path: Path, monkeypatch, caplog) -> None:
    import prefloop.bench.sweep
    from prefloop.training.rundir import RunDirError

    monkeypatch.setattr(prefloop.bench.sweep, "HEARTBEAT_S", 0.5)
    caplog.set_level(logging.INFO, logger="prefloop.bench")

    tiny = dict(envs=("CartPole-v1",), label_budgets=(8,), seeds=(0,), queries=("uniform",), steps=1_500,
                workers=1, eval_episodes=2, random_episodes=3)
    first = run_bench(BenchConfig(out_dir=tmp_path / "first", **tiny))
    assert "0/2 runs finished" in caplog.text  # progress while the first runs go on
    preference_dir = Path(next(r["run_dir"] for r in first["runs"] if r["kind"] == "preferences"))
    # Simulate a sweep killed while its preference run was still going: no row, no results.json.
    (preference_dir / "bench_row.json").unlink()
    (tmp_path / "first" / "results.json").unlink()
    stored_before = {f.name: f.read_bytes() for f in preference_dir.glob("prefs.sqlite*")}
    assert stored_before

    with pytest.raises(RunDirError, match="--resume"):
        run_bench(BenchConfig(out_dir=tmp_path / "first", **tiny))
    resumed = run_bench(BenchConfig(out_dir=tmp_path / "first", resume=True, **tiny))

    [kept] = list((tmp_path / "first" / "runs" / "interrupted").iterdir())
    assert {f.name: f.read_bytes() for f in kept.glob("prefs.sqlite*")} == stored_before  # nothing stored is lost
    by_kind = {r["kind"]: r for r in resumed["runs"]}
    assert "reused_from" in by_kind["true_reward"] and "reused_from" not in by_kind["preferences"]
    assert by_kind["preferences"]["eval_returns"] == next(r for r in first["runs"] if r["kind"] == "preferences")["eval_returns"]

    # Another teacher on the same env and seed: the true-reward baseline is the same computation.
    second = run_bench(BenchConfig(out_dir=tmp_path / "second", teachers=("mistake",), reuse_from=(tmp_path / "first",), **tiny))
    baseline = next(r for r in second["runs"] if r["kind"] == "true_reward")
    assert baseline["reused_from"].startswith(str(tmp_path / "first"))
    assert not (tmp_path / "second" / "runs" / Path(baseline["run_dir"]).name).exists()
    assert [g["teacher"] for g in second["groups"]] == ["mistake"]
    # A different step budget is a different computation: nothing is reused.
    third = run_bench(BenchConfig(out_dir=tmp_path / "third", reuse_from=(tmp_path / "first",), **{**tiny, "steps": 1_600}))
    assert not any("reused_from" in r for r in third["runs"])
    # Resumed once more with every run finished: a report of the kept runs, saying nothing ran.
    run_bench(BenchConfig(out_dir=tmp_path / "first", resume=True, **tiny))
    summary = (tmp_path / "first" / "results.md").read_text()
    assert "no run was left to run; 2 runs reused" in summary and "nan" not in summary


def test_a_teacher_with_overrides_reaches_the_run_config_and_names_its_group(tmp_path: Path) -> None:
    from prefloop.bench.sweep import plan_jobs

    jobs = plan_jobs(BenchConfig(teachers=("oracle", "mistake:epsilon=0.3"), seeds=(0,), out_dir=tmp_path))
    preference = [j.config for j in jobs if j.kind == "preferences"]
    assert [(c.teacher, c.teacher_params) for c in preference] == [("oracle", {}), ("mistake", {"epsilon": 0.3})]
    assert preference[1].run_dir.name == "CartPole-v1-ppo-mistake-epsilon=0.3-disagreement+cover+ends-200-s0"
    assert len({j.identity() for j in jobs}) == len(jobs)


def test_a_bench_run_is_the_run_prefloop_train_makes_with_the_same_seed(tmp_path: Path) -> None:
    """Found in review: bench seeded every run's reward-model trainer (validation split, batch
    order) with 0, so `bench --seeds 3` and `train --seed 3` learned different rewards."""
    from prefloop.bench.sweep import plan_jobs
    from prefloop.cli.main import build_parser, build_train_config

    for seed in (0, 3):
        job = next(j for j in plan_jobs(BenchConfig(seeds=(seed,), label_budgets=(50,), out_dir=tmp_path))
                   if j.kind == "preferences")
        args = build_parser().parse_args(["train", "--env", "CartPole-v1", "--labels", "50", "--seed", str(seed)])
        assert job.config.reward_model == build_train_config(args).reward_model


def test_bench_takes_an_algorithm_class_by_its_import_path_as_train_does(tmp_path: Path) -> None:
    pytest.importorskip("sb3_contrib")
    from prefloop.bench.sweep import check_grid, plan_jobs
    from prefloop.cli.main import build_parser

    args = build_parser().parse_args(["bench", "--algos", "sb3_contrib:TRPO", "PPO", "--out", str(tmp_path)])
    assert args.algos == ["sb3_contrib:TRPO", "ppo"]
    config = BenchConfig(algos=tuple(args.algos), seeds=(0,), out_dir=tmp_path)
    check_grid(config)  # TRPO acts in CartPole's Discrete action space
    jobs = plan_jobs(config)
    assert {job.config.algo for job in jobs} == {"sb3_contrib:TRPO", "ppo"}
    assert all(":" not in job.config.run_dir.name for job in jobs)  # a folder name, not a path separator on Windows
    assert len({job.config.run_dir for job in jobs}) == len(jobs)
