"""Hostile paths, numbers and files at the command line: one line naming the problem and the fix,
exit code 2, no traceback, nothing written and no memory spent on what was refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefloop.cli.main import main
from prefloop.store import sqlite_url
from prefloop.untrusted import TooLargeError, read_users_text


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("prefloop")]
    assert len(lines) == 1, err
    return lines[0]


def test_an_output_path_under_a_file_is_one_line_for_every_command(capsys, tmp_path: Path) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("mine")
    for args in (
        ["train", "--env", "CartPole-v1", "--labels", "10", "--steps", "3000", "--run-dir", str(a_file / "sub"), "--no-progress"],
        ["bench", "--envs", "CartPole-v1", "--labels", "10", "--seeds", "0", "--steps", "3000", "--workers", "1",
         "--out", str(a_file / "sub")],
    ):
        code, err = run_cli(capsys, *args)
        assert code == 2
        line = one_error_line(err)
        assert f"cannot use {a_file / 'sub'}: Not a directory" in line and "a file, not a folder" in line
    assert a_file.read_text() == "mine"


def test_a_number_config_json_could_not_hold_is_refused_before_the_run_starts(capsys, tmp_path: Path) -> None:
    code, err = run_cli(capsys, "train", "--env", "CartPole-v1", "--steps", "99999999999999999999",
                        "--run-dir", str(tmp_path / "r"), "--no-progress")
    assert code == 2 and "steps must be an integer that fits in 64 bits" in one_error_line(err)
    assert not (tmp_path / "r").exists()  # (such a run could never be resumed: config.json refuses it)


def test_doctor_names_an_unusable_database_url_without_its_password(capsys) -> None:
    code, err = run_cli(capsys, "doctor", "--db-url", "foo://u:hunter2secret@127.0.0.1/db")
    line = one_error_line(err)
    assert code == 2 and "cannot use database URL foo://u:***@127.0.0.1/db" in line and "PostgreSQL" in line
    assert "hunter2secret" not in err


@pytest.mark.parametrize("args, expected", [
    (["--seeds", "0", "0"], "--seeds lists 0 more than once"),
    (["--envs", "CartPole-v1", "CartPole-v1"], "--envs lists CartPole-v1 more than once"),
])
def test_bench_refuses_the_same_run_twice_before_anything_runs(capsys, tmp_path: Path, args, expected) -> None:
    code, err = run_cli(capsys, "bench", "--labels", "10", "--steps", "3000", "--workers", "1",
                        "--out", str(tmp_path / "b"), *args)
    assert code == 2 and expected in one_error_line(err)
    assert not (tmp_path / "b").exists()


def test_bench_refuses_a_ray_address_ray_could_not_use(capsys, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--ray-address", "foo", "--out", str(tmp_path / "b")])
    assert exit_.value.code == 2
    assert "--ray-address: expected auto, HOST:PORT or ray://HOST:PORT" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("args, expected", [
    (["--lease-seconds", "-1"], "--lease-seconds must be a number of seconds >= 5, got -1"),
    (["--idle-seconds", "0"], "--idle-seconds must be a number of seconds >= 5, got 0"),
    (["--break-minutes", "-3"], "--break-minutes must be a number of minutes >= 0"),
])
def test_rate_refuses_timings_the_app_cannot_use_before_it_starts(capsys, tmp_path: Path, args, expected) -> None:
    """(Before, the app started and only a person opening the page saw the error.)"""
    code, err = run_cli(capsys, "rate", "--db-url", sqlite_url(tmp_path / "prefs.sqlite"), "--port", "8599", *args)
    assert code == 2 and expected in one_error_line(err)
    assert not (tmp_path / "prefs.sqlite").exists()


def test_a_guideline_file_is_read_no_further_than_a_page(capsys, tmp_path: Path) -> None:
    huge = tmp_path / "guideline.md"
    huge.write_text("x" * 100_000)
    code, err = run_cli(capsys, "raters", "guideline", "--db-url", sqlite_url(tmp_path / "prefs.sqlite"), "--file", str(huge))
    assert code == 2 and "has more than 20000 characters" in one_error_line(err)
    assert not (tmp_path / "prefs.sqlite").exists()


def test_reading_a_users_text_file_stops_at_its_limit(tmp_path: Path) -> None:
    text = "é" * 10  # two bytes each: the limit is in characters
    (tmp_path / "ok.md").write_text(text, encoding="utf-8")
    assert read_users_text(tmp_path / "ok.md", 10) == text
    with pytest.raises(TooLargeError, match="more than 9 characters"):
        read_users_text(tmp_path / "ok.md", 9)
    with pytest.raises(TooLargeError):
        read_users_text(Path("/dev/zero"), 1_000)  # endless: read only as far as 1,000 characters can take
    (tmp_path / "bad.md").write_bytes(b"\xff\xfe")
    with pytest.raises(UnicodeDecodeError):
        read_users_text(tmp_path / "bad.md", 10)


@pytest.mark.parametrize("url", ["javascript:alert(1)", "ftp://host/", "http://", "https://h/?a=1", "127.0.0.1:8501"])
def test_a_rater_link_starts_only_from_the_apps_web_address(capsys, tmp_path: Path, url: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["raters", "add", "alice", "--db-url", sqlite_url(tmp_path / "prefs.sqlite"), "--url", url])
    assert exit_.value.code == 2 and "expected the app's address, http(s)://HOST[:PORT]/" in capsys.readouterr().err
    assert not (tmp_path / "prefs.sqlite").exists()  # and no rater was added


def test_the_resume_hint_of_a_run_whose_password_was_in_the_url_says_where_it_goes(tmp_path: Path) -> None:
    """config.json keeps the URL without its password: resuming needs it again, from a safe place."""
    from prefloop.cli.main import build_parser, continue_hint

    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text("{}")
    with_password = build_parser().parse_args(["train", "--run-dir", str(run), "--db-url", "postgresql+psycopg://u:pw9secret@127.0.0.1/db"])
    hint = continue_hint(with_password)
    assert "--resume" in hint and "$PREFLOOP_DB_PASSWORD or --db-password-file" in hint and "pw9secret" not in hint
    without = build_parser().parse_args(["train", "--run-dir", str(run), "--db-url", "postgresql+psycopg://u@127.0.0.1/db"])
    assert "PASSWORD" not in continue_hint(without)


def test_too_few_steps_for_a_presets_exploration_names_the_preset_and_both_fixes(capsys, tmp_path: Path) -> None:
    code, err = run_cli(capsys, "train", "--env", "Acrobot-v1", "--labels", "10", "--steps", "3000",
                        "--run-dir", str(tmp_path / "r"), "--no-progress")
    line = one_error_line(err)
    assert code == 2 and "Acrobot-v1's preset explores for 20000 steps" in line
    assert "--steps" in line and "--unsupervised-steps" in line
    assert not (tmp_path / "r").exists()


def test_bench_resume_of_a_folder_that_holds_no_sweep_says_so(capsys, tmp_path: Path) -> None:
    """(It used to start the whole sweep again under a mistyped --out.)"""
    code, err = run_cli(capsys, "bench", "--envs", "CartPole-v1", "--labels", "10", "--seeds", "0", "--steps", "3000",
                        "--workers", "1", "--out", str(tmp_path / "typo"), "--resume")
    assert code == 2 and "holds no sweep to finish" in one_error_line(err)
    assert not (tmp_path / "typo").exists()


def test_gymnasiums_module_colon_id_form_imports_the_module_and_keeps_the_preset(capsys, tmp_path: Path) -> None:
    """``--env package:EnvId`` (Gymnasium's form for a package that registers its envs on import)."""
    from prefloop.envs import EnvSpec, check_env_id
    from prefloop.envs.presets import default_preset

    check_env_id("gymnasium:CartPole-v1")
    assert EnvSpec("gymnasium:CartPole-v1").build().spec.id == "CartPole-v1"
    assert default_preset("gymnasium:CartPole-v1") == default_preset("CartPole-v1")
    code, err = run_cli(capsys, "train", "--env", "nosuchpackage:Foo-v0", "--run-dir", str(tmp_path / "r"), "--no-progress")
    assert code == 2 and "cannot import 'nosuchpackage'" in one_error_line(err)
    assert not (tmp_path / "r").exists()
