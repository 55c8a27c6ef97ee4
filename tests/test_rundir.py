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
    write_checkpoint(run, 100)  # a run with a checkpoint (or a label) is worth continuing
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


def failed_start(run: RunDir) -> str:
    """A run folder as a run leaves it that fails during its first label round (impossible
    settings): config.json, a store with segments and pending pairs but no label, TensorBoard logs.
    Returns the store's URL."""
    from conftest import cartpole_segments

    from prefloop.store import PreferenceStore, sqlite_url
    from prefloop.types import SegmentPair

    run.create(config(run.path))
    url = sqlite_url(run.store_path)
    with PreferenceStore(url, "run") as store:
        left, right = cartpole_segments(2)
        store.add_pairs([SegmentPair(left, right)])
    (run.tensorboard_dir / "PPO_1").mkdir(parents=True)
    return url


def test_a_run_that_failed_before_its_first_label_and_checkpoint_is_started_afresh(tmp_path: Path, caplog) -> None:
    run = RunDir(tmp_path / "run")
    failed_start(run)
    fixed = TrainConfig(env_id="CartPole-v1", run_dir=run.path, labels=10)
    with caplog.at_level("WARNING", logger="prefloop.training.rundir"):
        run.create(fixed)
    assert "starting afresh" in caplog.text
    assert run.load_config().labels == 10
    assert sorted(p.name for p in run.path.iterdir()) == ["checkpoints", "config.json", "failed-starts"]  # no old store, no old logs
    # ... which are kept aside, not deleted (a rater app still serving the old store could have written to it)
    (aside,) = (run.path / "failed-starts").iterdir()
    assert {"config.json", "prefs.sqlite", "tb"} <= {p.name for p in aside.iterdir()}
    # and a second failure there is as replaceable as the first (failed_start's own create moves
    # the fixed run's bare config aside too: three starts kept, in the same second, none overwritten)
    failed_start(run)
    run.create(fixed)
    assert len(list((run.path / "failed-starts").iterdir())) == 3


@pytest.mark.parametrize("value", ["label", "rater", "checkpoint", "other file", "store elsewhere"])
def test_a_failed_start_with_anything_of_value_is_still_refused_untouched(tmp_path: Path, value: str) -> None:
    from prefloop.store import PreferenceStore

    run = RunDir(tmp_path / "run")
    url = failed_start(run)
    with PreferenceStore(url, "run") as store:
        if value == "label":
            pair = store.claim_next("alice")
            assert pair is not None and pair.id is not None
            store.answer(pair.id, "alice", "left", 1.0)
        elif value == "rater":
            store.add_rater("bob", "bob", "0" * 64)
    if value == "checkpoint":
        write_checkpoint(run, 100)
    elif value == "other file":
        (run.path / "notes.txt").write_text("mine")
    elif value == "store elsewhere":  # not this folder's store to judge or replace
        saved = json.loads(run.config_path.read_text())
        run.config_path.write_text(json.dumps({**saved, "db_url": "postgresql+psycopg://u@h/db"}))

    def files() -> dict[str, int]:  # (a reader of a WAL store may add its -wal/-shm side files)
        return {p.name: p.stat().st_mtime_ns for p in run.path.iterdir() if p.is_file() and not p.name.endswith(("-wal", "-shm"))}

    before = files()
    with pytest.raises(RunDirError, match="already exists. Pass --resume"):
        run.create(TrainConfig(env_id="CartPole-v1", run_dir=run.path, labels=10))
    assert files() == before
    with PreferenceStore(url, "run", read_only=True) as store:
        assert len(store.labels()) == (value == "label")


def test_a_failed_start_held_by_a_trainer_is_refused(tmp_path: Path) -> None:
    from prefloop.training.rundir import RunDirBusyError

    run = RunDir(tmp_path / "run")
    failed_start(run)
    with RunDir(run.path).owned(existing=True):  # another trainer (resuming it) holds the lock
        with pytest.raises(RunDirBusyError, match="in use by another trainer"):
            RunDir(run.path).create(config(run.path))
    assert run.store_path.exists()


def test_a_run_dir_that_is_a_file_is_named_a_file(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("mine")
    with pytest.raises(RunDirError, match="is a file, not a folder; choose another --run-dir"):
        RunDir(afile).create(config(afile))
    assert afile.read_text() == "mine"
