"""The run folder survives crashes at any point: a half-created folder can be started again, a
half-written or half-deleted checkpoint is never taken for a complete one, leftovers are cleaned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefloop.training.config import TrainConfig
from prefloop.training.rundir import KEEP_CHECKPOINTS, RunDir, RunDirError


def config(path: Path) -> TrainConfig:
    return TrainConfig(env_id="CartPole-v1", run_dir=path)


def write_checkpoint(run: RunDir, step: int, publish: bool = True) -> Path:
    target = run.new_checkpoint_dir(step)
    (target / "policy.zip").write_bytes(b"policy %d" % step)
    (target / "state.json").write_text(json.dumps({"env_step": step}))
    return run.publish_checkpoint(target) if publish else target


def test_create_writes_the_config_and_refuses_an_existing_run(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.create(config(run.path))
    assert TrainConfig.load(run.config_path).env_id == "CartPole-v1"
    assert sorted(p.name for p in run.path.iterdir()) == ["checkpoints", "config.json"]
    with pytest.raises(RunDirError, match="--resume"):
        run.create(config(run.path))


@pytest.mark.parametrize("leftovers", [["checkpoints/"], ["config.json.tmp"], ["checkpoints/", "config.json.tmp"]])
def test_a_folder_left_by_a_create_killed_before_config_json_can_be_started_again(
    tmp_path: Path, leftovers: list[str]
) -> None:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    for name in leftovers:
        (run.path / name).mkdir() if name.endswith("/") else (run.path / name).write_text('{"env_id": "Cart')
    run.create(config(run.path))
    assert run.load_config().env_id == "CartPole-v1"
    assert not (run.path / "config.json.tmp").exists()


def test_a_folder_with_anything_else_is_refused_untouched(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    (run.path / "checkpoints" / "step-000000100").mkdir(parents=True)
    with pytest.raises(RunDirError, match="already exists"):
        run.create(config(run.path))
    assert not run.config_path.exists()


def test_publishing_keeps_the_newest_and_removes_crash_leftovers(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.create(config(run.path))
    write_checkpoint(run, 100)
    crashed = write_checkpoint(run, 150, publish=False)  # a trainer killed while writing it
    assert run.latest_checkpoint().name == "step-000000100"  # the half-written one is ignored
    for step in (200, 300):
        write_checkpoint(run, step)

    names = sorted(p.name for p in run.checkpoints_dir.iterdir())
    assert names == ["step-000000200", "step-000000300"] and KEEP_CHECKPOINTS == 2
    assert not crashed.exists()


def test_republishing_the_same_step_replaces_it(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.create(config(run.path))
    write_checkpoint(run, 100)
    target = run.new_checkpoint_dir(100)
    (target / "policy.zip").write_bytes(b"newer")
    (target / "state.json").write_text(json.dumps({"env_step": 100}))
    run.publish_checkpoint(target)
    assert (run.latest_checkpoint() / "policy.zip").read_bytes() == b"newer"
    assert sorted(p.name for p in run.checkpoints_dir.iterdir()) == ["step-000000100"]


def test_only_exact_step_folders_with_state_json_count_as_checkpoints(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.create(config(run.path))
    write_checkpoint(run, 100)
    for name in ("step-000000900.old.tmp", "step-000000800.tmp", "step-000000700.bak"):  # all have state.json
        (run.checkpoints_dir / name).mkdir()
        (run.checkpoints_dir / name / "state.json").write_text("{}")
    (run.checkpoints_dir / "step-000000600").mkdir()  # no state.json: incomplete
    assert run.latest_checkpoint().name == "step-000000100"
