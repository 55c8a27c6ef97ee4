"""Bad input at the command line: one clear line naming the problem and the fix, exit code 2,
and nothing already stored changed."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import gymnasium as gym
import pytest

from prefloop.cli.main import main
from prefloop.training.config import TrainConfig


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_unknown_env_id_names_close_ids(capsys, tmp_path: Path) -> None:
    code, err = run_cli(capsys, "train", "--env", "CartPol-v1", "--run-dir", str(tmp_path / "r"), "--no-progress")
    assert code == 2
    assert "Unknown environment id 'CartPol-v1'" in err and "'CartPole-v1'" in err
    assert not (tmp_path / "r").exists(), "a refused run leaves no folder behind"


def test_unsupported_observation_leaf_is_refused(capsys, tmp_path: Path) -> None:
    # Tuple observations train (tests/test_dict_goal.py); a Text leaf inside one cannot
    gym.register("prefloop-test/TupleObs-v0", entry_point=TupleObsEnv)
    try:
        code, err = run_cli(capsys, "train", "--env", "prefloop-test/TupleObs-v0", "--run-dir", str(tmp_path / "r"))
    finally:
        gym.registry.pop("prefloop-test/TupleObs-v0")
    assert code == 2 and "observation leaf '1' is a Text space" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("param", "expected"),
    [("beta=-1", "beta"), ("epsilon=1.5", "epsilon"), ("gamma=0", "gamma"), ("temperature=2", "temperature")],
)
def test_invalid_teacher_parameters_are_named(capsys, tmp_path: Path, param: str, expected: str) -> None:
    code, err = run_cli(capsys, "train", "--teacher", "stochastic", "--teacher-param", param, "--run-dir", str(tmp_path / "r"))
    assert code == 2 and expected in err
    assert not (tmp_path / "r").exists()


def test_existing_run_folder_without_resume_is_left_untouched(capsys, tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    (run / "prefs.sqlite").write_bytes(b"precious labels")
    code, err = run_cli(capsys, "train", "--run-dir", str(run))
    assert code == 2 and "--resume" in err and "already exists" in err
    assert (run / "prefs.sqlite").read_bytes() == b"precious labels"
    assert sorted(p.name for p in run.iterdir()) == ["prefs.sqlite"]


def test_resume_of_a_folder_that_is_not_a_run(capsys, tmp_path: Path) -> None:
    code, err = run_cli(capsys, "train", "--resume", "--run-dir", str(tmp_path / "nothing"))
    assert code == 2 and "cannot resume" in err


def test_corrupt_database_is_refused_and_not_modified(capsys, tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    TrainConfig(env_id="CartPole-v1", run_dir=run, steps=2000, labels=10, progress_bar=False).resolve().save(run / "config.json")
    store = run / "prefs.sqlite"
    store.write_bytes(b"\x00garbage, not a database" * 100)
    before = digest(store)
    code, err = run_cli(capsys, "train", "--resume", "--run-dir", str(run))
    assert code == 2 and "prefs.sqlite" in err
    assert digest(store) == before


def test_foreign_database_url_is_refused_before_a_run_folder_is_made(capsys, tmp_path: Path) -> None:
    import sqlite3

    foreign = tmp_path / "other-app.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO invoices VALUES (1, 9.5)")
    before = digest(foreign)
    code, err = run_cli(capsys, "train", "--db-url", f"sqlite:///{foreign}", "--run-dir", str(tmp_path / "r"))
    assert code == 2 and "other-app.db" in err
    assert digest(foreign) == before and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_more_labels_than_segments_says_what_to_change(capsys, tmp_path: Path) -> None:
    code, err = run_cli(
        capsys, "train", "--labels", "5000", "--steps", "2000", "--run-dir", str(tmp_path / "r"), "--no-progress"
    )
    assert code == 2 and "fewer --labels or more --steps" in err


def test_bad_numbers_are_rejected_by_the_parser(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--labels", "-5"])
    assert exc.value.code == 2
    assert "must be > 0" in capsys.readouterr().err
    for value, said in (("-1", "must be an integer from 0 to 50, got -1"), ("abc", "expected an integer from 0 to 50, got 'abc'")):
        with pytest.raises(SystemExit) as exc:
            main(["run", "--env", "CartPole-v1", "--probation-checks", value])
        assert exc.value.code == 2
        assert f"argument --probation-checks: {said}" in capsys.readouterr().err  # the flag, not a config field


class TupleObsEnv(gym.Env):
    observation_space = gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Text(3)))
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return (0, "abc"), {}

    def step(self, action):
        return (0, "abc"), 0.0, True, False, {}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--teachers", "mistke"], "Did you mean 'mistake'"),
        (["--teachers", "mistake:epsilon=1.5"], "epsilon must be in [0, 1]"),
        (["--teachers", "oracle:temperature=2"], "unknown teacher parameter(s) temperature"),
        (["--reuse", "no-such-sweep"], "--reuse no-such-sweep: no such folder"),
        (["--labels", "0"], "labels"),
        (["--envs", "CartPol-v1"], "Did you mean 'CartPole-v1'"),
        (["--algos", "sac"], "SAC needs a Box action space; CartPole-v1 has Discrete(2)"),
    ],
)
def test_bad_bench_arguments_are_named_before_anything_runs(capsys, tmp_path: Path, args, expected) -> None:
    try:
        code = main(["bench", "--out", str(tmp_path / "out"), *args])
    except SystemExit as exit_:  # argparse's own check of an argument
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_bench_into_a_used_folder_asks_for_resume_and_changes_nothing(capsys, tmp_path: Path) -> None:
    run = tmp_path / "out" / "runs" / "CartPole-v1-ppo-true-s0"
    run.mkdir(parents=True)
    (run / "prefs.sqlite").write_bytes(b"precious labels")
    code, err = run_cli(capsys, "bench", "--seeds", "0", "--out", str(tmp_path / "out"))
    assert code == 2 and "--resume" in err and "already exists" in err
    assert (run / "prefs.sqlite").read_bytes() == b"precious labels"


def test_train_does_not_wait_forever_for_people_it_starts_no_app_for(capsys, tmp_path: Path) -> None:
    """A run made by `prefloop run` (teacher human) continues with `prefloop run`, which starts the
    rater app; `prefloop train` says so instead of waiting for raters who have no page."""
    run = tmp_path / "human run"
    run.mkdir()
    TrainConfig(env_id="CartPole-v1", run_dir=run, teacher="human", steps=2000, labels=10,
                progress_bar=False).resolve().save(run / "config.json")
    before = sorted(p.name for p in run.iterdir())
    code, err = run_cli(capsys, "train", "--resume", "--run-dir", str(run))
    assert code == 2 and err.count("\n") == 1
    assert f"prefloop run --run-dir '{run}' --resume" in err
    assert sorted(p.name for p in run.iterdir()) == before
    code, err = run_cli(capsys, "train", "--teacher", "human", "--run-dir", str(tmp_path / "new"))
    assert code == 2 and "prefloop run" in err and not (tmp_path / "new").exists()
    # ... and `prefloop run` takes exactly that command line
    from prefloop.cli.main import build_parser, check_resume_arguments

    check_resume_arguments(build_parser().parse_args(["run", "--run-dir", str(run), "--resume"]))


@pytest.mark.parametrize("command", ["train", "run"])
def test_a_stopped_run_says_the_whole_command_that_continues_it(
    tmp_path: Path, command: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefloop.cli.main import build_parser, continue_hint

    monkeypatch.delenv("MAKELEVEL", raising=False)  # `make test` runs pytest under make
    run = tmp_path / "r"
    args = build_parser().parse_args([command, "--run-dir", str(run)])
    assert "start it again" in continue_hint(args)  # nothing to continue yet
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert continue_hint(args) == f"continue with `prefloop {command} --run-dir {run} --resume`"


def test_a_stopped_run_on_another_port_says_that_port_to_continue_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Raters keep the app's address: the resumed run's app must come back on the same host and port.
    from prefloop.cli.main import build_parser, check_resume_arguments, continue_hint

    monkeypatch.delenv("MAKELEVEL", raising=False)
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text("{}")
    args = build_parser().parse_args(["run", "--run-dir", str(run), "--port", "8761", "--host", "localhost"])
    hint = continue_hint(args)
    assert hint == f"continue with `prefloop run --run-dir {run} --resume --host localhost --port 8761`"
    resumed = build_parser().parse_args(hint.split("`")[1].split()[1:])
    check_resume_arguments(resumed)  # accepted as it is printed
    assert (resumed.host, resumed.port) == ("localhost", 8761)


def test_a_run_started_by_make_says_the_make_command_that_continues_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `make run` puts no prefloop on PATH; its Makefile passes no run settings when ARGS has --resume.
    from prefloop.cli.main import build_parser, check_resume_arguments, continue_hint

    monkeypatch.setenv("MAKELEVEL", "1")
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text("{}")
    args = build_parser().parse_args(["run", "--run-dir", str(run), "--port", "8502"])
    assert continue_hint(args).endswith(f'(with make: make run PORT=8502 ARGS="--run-dir {run} --resume")')
    check_resume_arguments(build_parser().parse_args(["run", "--port", "8502", "--run-dir", str(run), "--resume"]))
    if shutil.which("make"):  # what `make run` would run (-n: print, run nothing)
        printed = subprocess.run(["make", "-n", "run", "PORT=8502", f"ARGS=--run-dir {run} --resume"],
                                 cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=True).stdout
        (line,) = [x for x in printed.splitlines() if "prefloop run" in x]
        assert line.split("prefloop run", 1)[1].split() == ["--port", "8502", "--run-dir", str(run), "--resume"]
        printed = subprocess.run(["make", "-n", "run"], cwd=Path(__file__).resolve().parents[1],
                                 capture_output=True, text=True, check=True).stdout
        assert "--labels 60" in printed  # a new run still gets the README's settings


def test_a_mistyped_flag_shows_the_commands_usage_and_the_flag_it_resembles(capsys, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["run", "--lables", "5", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert "usage: prefloop run" in err and "did you mean --labels?" in err
    assert not (tmp_path / "r").exists()


def test_train_and_run_help_name_the_pixel_presets_a_user_can_pass_to_env() -> None:
    import argparse

    from prefloop.cli.main import build_parser

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("train", "run"):
        help_text = " ".join(subparsers.choices[command].format_help().split())
        assert "prefloop/CartPolePixels-v1" in help_text and "prefloop/Atari-v0" in help_text, command


@pytest.mark.parametrize("command", [
    ["raters", "list"], ["raters", "add", "bob"], ["rate", "--port", "8568"], ["export", "--out", "OUT"], ["doctor"],
])
def test_a_misspelt_run_name_is_refused_naming_the_runs_and_creates_none(capsys, tmp_path: Path, command: list[str]) -> None:
    from prefloop.store import PreferenceStore, sqlite_url

    run_dir = tmp_path / "human1"
    run_dir.mkdir()
    url = sqlite_url(run_dir / "prefs.sqlite")
    PreferenceStore(url, "human1").close()
    args = [str(tmp_path / "out") if word == "OUT" else word for word in command]
    code = main([*args, "--run-dir", str(run_dir), "--run-name", "nop"])
    out, err = capsys.readouterr()
    if command == ["doctor"]:  # a report, not an exception: one ERROR naming the runs there are
        assert code == 1 and "no run 'nop' in the store; it holds: ['human1']" in out, out
    else:
        assert code == 2 and err.count("\n") == 1, err
        assert "no run 'nop' in" in err and "it holds: 'human1'. Check --run-name" in err, err
    with PreferenceStore(url, "human1", read_only=True) as store, store.read_transaction() as conn:
        assert [row[0] for row in conn.exec_driver_sql("SELECT name FROM runs")] == ["human1"]
    assert not (tmp_path / "out").exists()


def test_a_recording_of_another_env_is_refused_before_the_run_folder_exists(capsys, tmp_path: Path) -> None:
    import json

    from conftest import cartpole_segments

    from prefloop.store import PreferenceStore, sqlite_url
    from prefloop.types import SegmentPair

    recorded = tmp_path / "recorded"
    recorded.mkdir()
    with PreferenceStore(sqlite_url(recorded / "prefs.sqlite"), "recorded") as store:
        store.set_meta("config", json.dumps(TrainConfig(env_id="CartPole-v1", run_dir=recorded).resolve().to_json()))
        left, right = cartpole_segments(2)
        (pair_id,) = store.add_pairs([SegmentPair(left, right)])
        assert store.claim_next("alice") is not None
        store.answer(pair_id, "alice", "left", 1.0)
    run = tmp_path / "r"
    code, err = run_cli(capsys, "train", "--env", "Pendulum-v1", "--teacher", f"recorded:{recorded}", "--labels", "10",
                        "--steps", "3000", "--run-dir", str(run), "--no-progress")
    assert code == 2 and "given on env 'CartPole-v1', but this run is on 'Pendulum-v1'" in err and "--env CartPole-v1" in err, err
    assert not run.exists()


@pytest.mark.parametrize("checkpoint", [False, True])
def test_resume_with_new_settings_of_a_run_that_stored_nothing_says_to_start_it_afresh(
    capsys, tmp_path: Path, checkpoint: bool
) -> None:
    from test_rundir import failed_start, write_checkpoint

    from prefloop.training.rundir import RunDir

    run = RunDir(tmp_path / "r14")
    failed_start(run)  # e.g. --labels 100000000: it failed in its first label round
    if checkpoint:
        write_checkpoint(run, 100)
    code, err = run_cli(capsys, "train", "--resume", "--labels", "10", "--run-dir", str(run.path))
    assert code == 2 and "--labels would be ignored" in err
    if checkpoint:  # a run worth continuing: never suggest replacing it
        assert "new --run-dir" in err and "afresh" not in err
    else:
        assert "start it afresh with the new settings: leave out --resume" in err
