"""`prefloop doctor` on real damaged run folders and stores: it finds the damage, repairs only what
is safe, and never deletes a label."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from prefloop.reward_models import RewardEnsemble, save_reward_model
from sqlalchemy import create_engine, text

from prefloop.ops.doctor import ERROR, INFO, WARNING, add_doctor_parser, check_run
from prefloop.store import PreferenceStore, sqlite_url
from prefloop.training.rundir import RunDir
from prefloop.types import Choice, Segment, SegmentPair

L = 5


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def segment(rng: np.random.Generator) -> Segment:
    return Segment(
        obs=rng.normal(size=(L, 4)).astype(np.float32),
        actions=rng.integers(0, 2, size=L).astype(np.int64),
        true_rewards=np.ones(L, dtype=np.float32),
        n_valid=L,
        terminated=False,
        episode_seed=1,
        start_step=0,
        episode_actions=rng.integers(0, 2, size=L).astype(np.int64),
    )


def fill_store(url: str, run_name: str) -> list[int]:
    """Six pairs: three answered (one by two raters), one leased to carol, two pending."""
    rng = np.random.default_rng(0)
    with PreferenceStore(url, run_name) as store:
        ids = store.add_pairs([SegmentPair(segment(rng), segment(rng)) for _ in range(5)])
        ids += store.add_pairs([SegmentPair(segment(rng), segment(rng))], labels_per_pair=2)
        for rater, choice in (("alice", Choice.LEFT), ("alice", Choice.RIGHT), ("alice", Choice.EQUAL)):
            pair = store.claim_next(rater)
            store.answer(pair.id, rater, choice, 1.0)
        store.claim_next("carol", lease_seconds=600)
    return ids


def write_checkpoint(run: RunDir, env_step: int, labels: int) -> Path:
    """A real checkpoint as train() writes it: SB3 policy, reward model, state.json."""
    from stable_baselines3 import PPO

    env = gym.make("CartPole-v1")
    target = run.new_checkpoint_dir(env_step)
    PPO("MlpPolicy", env, n_steps=64, batch_size=32, policy_kwargs={"net_arch": [8]}, device="cpu").save(target / "policy.zip")
    save_reward_model(RewardEnsemble(env.observation_space, env.action_space, n_members=1, hidden_sizes=(8,)), target / "reward_model")
    state = {"env_step": env_step, "policy_timesteps": env_step, "initial_steps": 0, "curve": [],
             "fit_history": [{"env_step": env_step, "labels": labels}]}
    (target / "state.json").write_text(json.dumps(state))
    env.close()
    return run.publish_checkpoint(target)


@pytest.fixture(scope="module")
def template_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A healthy run folder with two checkpoints, built once and copied per test."""
    path = tmp_path_factory.mktemp("template") / "run"
    path.mkdir()
    (path / "checkpoints").mkdir()
    (path / "config.json").write_text(json.dumps({"env_id": "CartPole-v1", "run_dir": str(path),
                                                  "run_name": "run", "db_url": None, "reward_source": "preferences"}))
    fill_store(sqlite_url(path / "prefs.sqlite"), "run")
    run = RunDir(path)
    write_checkpoint(run, 1000, labels=2)
    write_checkpoint(run, 2000, labels=3)
    return path


@pytest.fixture
def run_dir(template_run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(template_run, target)
    return target


def sql(url: str, statement: str, **params) -> list[tuple]:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        engine.dispose()


def all_labels(url: str) -> list[tuple]:
    return sql(url, "SELECT id, pair_id, rater_id, choice, created_at, retracted_at FROM labels ORDER BY id")


def checks_of(report, severity: str | None = None) -> list[str]:
    return [f.check for f in report.remaining if severity is None or f.severity == severity]


def test_a_healthy_run_is_healthy(run_dir: Path) -> None:
    report = check_run(run_dir)
    assert report.healthy, report.to_text()
    for check in ("sqlite_integrity", "schema", "pair_status", "expired_leases", "segment_arrays", "checkpoints"):
        assert check in report.checks


def test_wrong_statuses_and_an_expired_lease_are_found_and_repaired_without_touching_labels(store_url: str) -> None:
    ids = fill_store(store_url, "run")
    labels_before = all_labels(store_url)
    answered = sql(store_url, "SELECT id FROM pairs WHERE status = 'answered' ORDER BY id")[0][0]
    pending = sql(store_url, "SELECT id FROM pairs WHERE status = 'pending' ORDER BY id")[0][0]
    sql(store_url, "UPDATE pairs SET status = 'pending' WHERE id = :id", id=answered)  # has its label
    sql(store_url, "UPDATE pairs SET status = 'answered' WHERE id = :id", id=pending)  # has none
    later = time.time() + 3600  # carol's 10-minute lease has expired by then

    found = check_run(db_url=store_url, run_name="run", clock=lambda: later)

    assert not found.healthy
    status = next(f for f in found.findings if f.check == "pair_status")
    # the fix is a command to paste: it names the store it was given
    assert status.severity == ERROR and "2 pairs" in status.what
    assert "`prefloop doctor --db-url " in status.fix and " --run-name run --repair`" in status.fix
    lease = next(f for f in found.findings if f.check == "expired_leases")
    # routine after a stopped app (the next claim takes it over): told, not counted as a problem
    assert lease.severity == INFO and "1 pairs" in lease.what and lease not in found.remaining

    repaired = check_run(db_url=store_url, run_name="run", repair=True, clock=lambda: later)

    assert repaired.healthy and {f.check for f in repaired.findings} == {"pair_status", "expired_leases"}
    assert all(f.repaired for f in repaired.findings)
    assert check_run(db_url=store_url, run_name="run", clock=lambda: later).healthy
    assert all_labels(store_url) == labels_before  # not one label changed
    statuses = dict(sql(store_url, "SELECT id, status FROM pairs"))
    assert statuses[answered] == "answered" and statuses[pending] == "pending"
    assert sql(store_url, "SELECT COUNT(*) FROM pairs WHERE status = 'claimed'") == [(0,)]
    with PreferenceStore(store_url, "run", clock=lambda: later) as store:
        assert store.claim_next("bob").id == min(set(ids) - {p for p, in sql(store_url, "SELECT pair_id FROM labels")})


def test_a_truncated_sqlite_file_is_reported_and_left_as_it_is(run_dir: Path) -> None:
    store = run_dir / "prefs.sqlite"
    data = store.read_bytes()
    store.write_bytes(data[: len(data) // 2])
    before = store.read_bytes()

    report = check_run(run_dir, repair=True)

    (finding,) = [f for f in report.remaining if f.check == "sqlite_integrity"]
    assert finding.severity == ERROR and ".recover" in finding.fix
    assert store.read_bytes() == before


def test_leftover_tmp_checkpoint_is_removed_by_repair_but_a_fresh_one_is_left_alone(run_dir: Path) -> None:
    stale = run_dir / "checkpoints" / "step-000003000.tmp"
    (stale / "reward_model").mkdir(parents=True)
    (stale / "policy.zip").write_bytes(b"PK half written")
    old = time.time() - 3600
    os.utime(stale, (old, old))

    assert checks_of(check_run(run_dir), WARNING) == ["checkpoint_tmp"]
    repaired = check_run(run_dir, repair=True)
    assert repaired.healthy and not stale.exists()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000001000", "step-000002000"]

    fresh = run_dir / "checkpoints" / "step-000004000.tmp"
    fresh.mkdir()
    report = check_run(run_dir, repair=True)
    assert fresh.exists() and checks_of(report) == ["checkpoint_tmp"] and "stop" in report.remaining[0].fix


def test_a_damaged_latest_checkpoint_names_the_one_resume_can_use(run_dir: Path) -> None:
    policy = run_dir / "checkpoints" / "step-000002000" / "policy.zip"
    policy.write_bytes(policy.read_bytes()[:100])

    report = check_run(run_dir, repair=True)

    (finding,) = report.remaining
    assert finding.check == "checkpoint_loads" and "policy.zip" in finding.what
    assert "step-000001000" in finding.fix
    assert policy.exists()  # reported, not deleted


def test_a_checkpoint_trained_on_labels_the_store_no_longer_has_is_an_error(run_dir: Path) -> None:
    url = sqlite_url(run_dir / "prefs.sqlite")
    sql(url, "UPDATE labels SET retracted_at = 5.0 WHERE rater_id = 'alice' AND choice = 'equal'")
    sql(url, "UPDATE pairs SET status = 'pending' WHERE status = 'answered' AND id NOT IN (SELECT pair_id FROM labels WHERE retracted_at IS NULL)")

    report = check_run(run_dir)

    assert checks_of(report) == ["labels_vs_checkpoint"]
    assert "trained on 3 labels" in report.remaining[0].what


def test_missing_segments_broken_arrays_and_orphan_labels_are_reported_never_deleted(run_dir: Path) -> None:
    path = run_dir / "prefs.sqlite"
    with sqlite3.connect(path) as raw:  # foreign keys are off in a plain connection, as in a bad edit
        left, right = raw.execute("SELECT left_segment_id, right_segment_id FROM pairs ORDER BY id LIMIT 1").fetchone()
        raw.execute("UPDATE segments SET obs = ? WHERE id = ?", (b"not an npy array", left))
        raw.execute("UPDATE pairs SET right_segment_id = 9999 WHERE right_segment_id = ?", (right,))
        raw.execute("INSERT INTO labels (pair_id, rater_id, choice, response_time_s, created_at) "
                    "VALUES (4242, 'zoe', 'left', 1.0, 0.0)")
        counts_before = [raw.execute(f"SELECT COUNT(*) FROM {t}").fetchone() for t in ("segments", "labels", "pairs")]
    raw.close()

    report = check_run(run_dir, repair=True)

    assert sorted(checks_of(report, ERROR)) == ["labels_on_unknown_pairs", "pair_segments", "segment_arrays"]
    assert f"segment {left}" in next(f.what for f in report.remaining if f.check == "segment_arrays")
    with sqlite3.connect(path) as raw:
        assert [raw.execute(f"SELECT COUNT(*) FROM {t}").fetchone() for t in ("segments", "labels", "pairs")] == counts_before
    raw.close()


def test_a_store_of_another_schema_version_is_an_error(run_dir: Path) -> None:
    url = sqlite_url(run_dir / "prefs.sqlite")
    sql(url, "UPDATE prefloop_meta SET value = '99' WHERE key = 'schema_version'")
    report = check_run(run_dir)
    assert checks_of(report) == ["schema"] and "99" in report.remaining[0].what


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="prefloop")
    add_doctor_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["doctor", *argv])
    return args.func(args)


def test_cli_exit_code_is_0_when_healthy_and_1_while_problems_remain(run_dir: Path, capsys) -> None:
    url = sqlite_url(run_dir / "prefs.sqlite")
    assert run_cli("--run-dir", str(run_dir)) == 0
    assert "healthy" in capsys.readouterr().out

    sql(url, "UPDATE pairs SET status = 'answered' WHERE status = 'pending'")
    assert run_cli("--run-dir", str(run_dir), "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["healthy"] is False and report["findings"][0]["check"] == "pair_status"

    assert run_cli("--run-dir", str(run_dir), "--repair") == 0
    assert "[repaired]" in capsys.readouterr().out
    assert run_cli("--db-url", url, "--run-name", "run") == 0


def test_a_config_that_resume_would_refuse_is_reported(tmp_path) -> None:
    import json as _json

    from prefloop.ops.doctor import check_run
    from prefloop.training.config import TrainConfig

    run = tmp_path / "run"
    run.mkdir()
    TrainConfig(env_id="CartPole-v1", run_dir=run, labels=10, steps=1000).resolve().save(run / "config.json")
    data = _json.loads((run / "config.json").read_text())
    data["labels"] = "two hundred"
    (run / "config.json").write_text(_json.dumps(data))
    report = check_run(run)
    assert not report.healthy
    assert any(f.check == "config" and "labels" in f.what for f in report.remaining)
