"""Issue 12, classes 1-5 and 8: secrets, one trainer per run folder, locked and read-only stores,
damaged checkpoints, edited configs, and flags a teacher would ignore -- on SQLite and PostgreSQL.

Every command runs as a real process (``python -m prefloop.cli``) against a real run folder made by
a real (small) CartPole run; every refusal must be one line, without a traceback, and leave every
byte of the run folder (and the store) as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import free_port, postgres_database

from prefloop.credentials import ENV_DB_PASSWORD, url_password, url_without_password
from prefloop.ops.local_postgres import SUPERUSER
from prefloop.store import PreferenceStore, sqlite_url
from prefloop.training.rundir import LOCK_NAME

STEPS = 2000
LABELS = 10
RUN = "run"


def prefloop(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "prefloop.cli", *args], env=full_env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "prefloop.cli", *args], env=full_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    """Exit 2, no traceback, exactly one ``prefloop: error:`` line, containing ``expected``."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    errors = [line for line in result.stderr.splitlines() if line.startswith("prefloop: error:")]
    assert result.returncode == 2 and len(errors) == 1, output
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


def folder_state(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` -> sha256 of its bytes; but the trainer lock and the empty
    ``-wal``/``-shm`` files SQLite makes next to a database any connection opens (no data)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME and not p.name.endswith("-shm")
        and not (p.name.endswith("-wal") and p.stat().st_size == 0)
    }


def store_state(url: str, run_name: str) -> tuple:
    with PreferenceStore(url, run_name, read_only=True) as store:
        labels = [(label.pair_id, label.rater_id, label.choice.value) for label in store.labels(include_retracted=True)]
        meta = {key: store.get_meta(key) for key in ("config", "env_spec", "guideline", "progress")}
        return tuple(labels), tuple(sorted(store.counts().items())), json.dumps(meta, sort_keys=True)


def strict_json_files(folder: Path) -> list[Path]:
    """The .json files under ``folder``; fails on any that is not strict JSON (NaN, Infinity)."""
    def refuse(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    files = [p for p in folder.rglob("*.json") if p.is_file() and not any(part.endswith(".damaged") for part in p.parts)]
    for path in files:
        json.loads(path.read_text(), parse_constant=refuse)
    return files


class Cli:
    """``prefloop ...`` in this process (no interpreter start-up per command): exit code and all
    it printed or logged."""

    def __init__(self, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture):
        self.capsys, self.caplog = capsys, caplog

    def __call__(self, *args: str) -> tuple[int, str, str]:
        from prefloop.cli.main import main

        self.caplog.clear()
        with self.caplog.at_level("INFO", logger="prefloop"):
            code = main(list(args))
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err + self.caplog.text

    def error(self, *args: str, expected: tuple[str, ...] = ()) -> str:
        """Run a command that must be refused: exit 2, exactly one ``prefloop: error:`` line."""
        code, out, err = self(*args)
        errors = [line for line in err.splitlines() if line.startswith("prefloop: error:")]
        assert code == 2 and len(errors) == 1 and "Traceback" not in out + err, (args, out, err)
        for text in expected:
            assert text in errors[0], errors[0]
        return errors[0]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> Cli:
    return Cli(capsys, caplog)


def command_lines() -> dict[int, str]:
    """pid -> command line of every process on this machine (what `ps` shows every user)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                pass
    return found


def descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


# ---------------------------------------------------------------------------------------------
# A finished small run per backend, made once; tests work on copies.


@pytest.fixture(scope="module")
def pg_database(request: pytest.FixtureRequest) -> Iterator[str]:
    with postgres_database(request) as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def finished_run(backend: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> tuple[Path, dict[str, str]]:
    """(run folder, environment its commands need) of a finished run; the PostgreSQL one was
    started with the password inside --db-url, so later commands get it from the environment."""
    folder = tmp_path_factory.mktemp(f"finished-{backend}") / RUN
    args = ["train", "--env", "CartPole-v1", "--steps", str(STEPS), "--labels", str(LABELS), "--eval-episodes", "1",
            "--run-dir", str(folder), "--no-progress"]
    env: dict[str, str] = {}
    if backend == "postgresql":
        url = request.getfixturevalue("pg_database")
        args += ["--db-url", url]
        env[ENV_DB_PASSWORD] = url_password(url) or ""
    result = prefloop(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    if env:
        assert env[ENV_DB_PASSWORD] not in result.stdout + result.stderr, "the password in the run's output"
    return folder, env


def store_url_of(run: Path) -> str:
    saved = json.loads((run / "config.json").read_text())["db_url"]
    return saved or sqlite_url(run / "prefs.sqlite")


@pytest.fixture
def unfinished_run(
    finished_run: tuple[Path, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, dict[str, str]]:
    """A copy of the finished run without its summary: what a run killed after its last
    checkpoint looks like (--resume then evaluates and finishes it). Its store's password, if
    any, is in this process's environment, as a user would set it."""
    source, env = finished_run
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    copy = tmp_path / RUN
    shutil.copytree(source, copy)
    (copy / "summary.json").unlink()
    return copy, env


# ---------------------------------------------------------------------------------------------
# 1. Secrets


def test_a_database_password_reaches_no_file_export_page_or_log(
    finished_run: tuple[Path, dict[str, str]], backend: str, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch,
) -> None:
    if backend != "postgresql":
        pytest.skip("the password belongs to the PostgreSQL store")
    run, env = finished_run
    password = env[ENV_DB_PASSWORD]
    assert len(password) >= 16
    secret = password.encode()
    config = json.loads((run / "config.json").read_text())
    url = config["db_url"]
    assert url_password(url) is None and url.startswith("postgresql")
    assert [p for p in run.rglob("*") if p.is_file() and secret in p.read_bytes()] == [], "password in the run folder"
    monkeypatch.setenv(ENV_DB_PASSWORD, password)
    with PreferenceStore(url, RUN, read_only=True) as store, store.read_transaction() as conn:
        from sqlalchemy import select

        from prefloop.store import run_meta_table

        values = [v for (v,) in conn.execute(select(run_meta_table.c.value))]
    assert values and not any(password in v for v in values), "password in the store's run meta"
    from prefloop.apps.export_download import export_zip

    with zipfile.ZipFile(io.BytesIO(export_zip(url, RUN))) as archive:
        assert not any(secret in archive.read(name) for name in archive.namelist()), "password in the download"

    # Export and doctor find the store from config.json; the password only comes from the
    # environment or a file named at run time.
    password_file = tmp_path / "pw"
    password_file.write_text(password + "\n")
    for how, args in (("env", []), ("file", ["--db-password-file", str(password_file)])):
        if how == "file":
            monkeypatch.delenv(ENV_DB_PASSWORD)
        out = tmp_path / f"export-{how}"
        code, stdout, stderr = cli("export", "--run-dir", str(run), "--out", str(out), *args)
        assert code == 0 and password not in stdout + stderr, stderr
        assert [p for p in out.rglob("*") if p.is_file() and secret in p.read_bytes()] == [], "password in the export"
        # nor the database's address: a dataset is shared without saying where it was kept
        assert json.loads((out / "manifest.json").read_text())["config"]["db_url"] is None
        code, stdout, stderr = cli("doctor", "--run-dir", str(run), *args)
        assert code == 0 and password not in stdout + stderr, stdout
    # Without it: one line saying where the password goes.
    assert password not in cli.error("export", "--run-dir", str(run), "--out", str(tmp_path / "x"), expected=(ENV_DB_PASSWORD,))
    cli.error("doctor", "--run-dir", str(run), "--db-password-file", str(tmp_path / "missing"), expected=("password file",))
    code, out, _ = cli("doctor", "--run-dir", str(run))
    assert code == 1 and "store_unreachable" in out and ENV_DB_PASSWORD in out and "backup" not in out, out


@pytest.mark.slow
def test_prefloop_run_puts_no_secret_on_any_command_line_or_output(local_postgres, tmp_path: Path) -> None:
    name = f"cmdline_{uuid.uuid4().hex[:12]}"
    url = local_postgres.create_database(name)
    password = url_password(url) or ""
    secrets = {"password": password, "token": "rater-" + uuid.uuid4().hex, "admin": "admin-" + uuid.uuid4().hex}
    env = {ENV_DB_PASSWORD: password, "PREFLOOP_RATER_TOKEN": secrets["token"], "PREFLOOP_ADMIN_TOKEN": secrets["admin"]}
    run = tmp_path / "human"
    proc = start("run", "--env", "CartPole-v1", "--steps", "3000", "--labels", "10", "--run-dir", str(run),
                 "--db-url", url_without_password(url), "--port", str(free_port()), "--no-progress", env=env)
    seen: dict[int, str] = {}
    family: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            family |= descendants(proc.pid)
            lines = command_lines()
            seen.update({pid: lines[pid] for pid in family | {proc.pid} if pid in lines})
            if any("streamlit" in line for line in seen.values()):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"no rater app started within 120 s; processes: {seen}")
        everything = command_lines()  # every process on the machine, as `ps` shows them
    finally:
        family |= descendants(proc.pid)
        proc.send_signal(signal.SIGINT)  # like Ctrl-C: the run stops its rater app
        try:
            output, _ = proc.communicate(timeout=60)
        finally:
            for pid in family:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            local_postgres.drop_database(name)
    assert any(" rate " in line for line in seen.values()), seen
    for what, secret in secrets.items():
        assert not [line for line in everything.values() if secret in line], f"{what} on a command line"
        assert secret not in output, f"{what} in the output of prefloop run"
        assert [p for p in run.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()] == [], what


def test_a_password_in_the_url_stays_in_memory(tmp_path: Path) -> None:
    from prefloop.training.config import TrainConfig

    config = TrainConfig(env_id="CartPole-v1", run_dir=tmp_path, db_url="postgresql+psycopg://u:s3cr%40t@h:5432/db?sslmode=require")
    assert config.to_json()["db_url"] == "postgresql+psycopg://u@h:5432/db?sslmode=require"
    config.save(tmp_path / "config.json")
    assert "s3cr" not in (tmp_path / "config.json").read_text()
    assert url_without_password("postgresql://u@h/db?password=s3cret") == "postgresql://u@h/db"
    assert url_without_password("postgresql://u:s3cret@h:notaport/db") == "postgresql://u@h:notaport/db"


def test_every_token_flag_has_an_environment_form(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from prefloop.cli.main import build_parser

    monkeypatch.setenv("PREFLOOP_RATER_TOKEN", "rater-token-1")
    monkeypatch.setenv("PREFLOOP_ADMIN_TOKEN", "admin-token-1")
    parser = build_parser()
    for command in (["run"], ["rate", "--run-dir", str(tmp_path)]):
        args = parser.parse_args(command)
        assert (args.token, args.admin_token) == ("rater-token-1", "admin-token-1")
    flags = {option for action in parser._subparsers._group_actions[0].choices.values()  # type: ignore[union-attr]
             for a in action._actions for option in a.option_strings}
    assert {f for f in flags if "token" in f or "password" in f} == {"--token", "--admin-token", "--db-password-file"}


# ---------------------------------------------------------------------------------------------
# 2. One trainer per run folder


@pytest.mark.slow
def test_a_second_trainer_is_refused_with_the_holders_pid_and_the_first_run_is_unharmed(tmp_path: Path, cli: Cli) -> None:
    run = tmp_path / RUN
    first = start("train", "--env", "CartPole-v1", "--steps", "5000", "--labels", "20", "--eval-episodes", "1",
                  "--run-dir", str(run), "--no-progress")
    try:
        deadline = time.monotonic() + 120
        while not list((run / "checkpoints").glob("step-*[0-9]")):
            assert first.poll() is None and time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.1)
        for args in (["train", "--resume", "--run-dir", str(run)],
                     ["train", "--env", "CartPole-v1", "--run-dir", str(run)],
                     ["run", "--resume", "--run-dir", str(run), "--port", str(free_port())]):
            cli.error(*args, "--no-progress", expected=(f"PID {first.pid}",))
        assert first.poll() is None, "the first trainer is still running"
        output, _ = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, output
    assert json.loads((run / "summary.json").read_text())["labels_used"] == 20
    with PreferenceStore(sqlite_url(run / "prefs.sqlite"), RUN, read_only=True) as store:
        assert store.counts()["pairs"] == 20, "the budget of 20 pairs was kept"
    assert cli("doctor", "--run-dir", str(run))[0] == 0


@pytest.mark.slow
def test_sigterm_stops_prefloop_train_as_ctrl_c_does_and_its_fit_worker_with_it(tmp_path: Path) -> None:
    """A timeout, systemd or `docker stop` ends a simulated teacher's run the way Ctrl-C does: the
    fit worker stopped, every label kept, the continue hint, exit status 143."""
    run = tmp_path / RUN
    trainer = start("train", "--env", "CartPole-v1", "--steps", "200000", "--labels", "50", "--eval-episodes", "1",
                    "--run-dir", str(run), "--no-progress")  # 200k steps: the fits go to a worker process
    try:
        deadline = time.monotonic() + 120
        while not (workers := [pid for pid, line in command_lines().items()
                               if "prefloop.training.fit_worker" in line and _parent(pid) == trainer.pid]) \
                or not list((run / "checkpoints").glob("step-*[0-9]")):
            assert trainer.poll() is None and time.monotonic() < deadline, "no worker and first checkpoint in time"
            time.sleep(0.1)
        trainer.send_signal(signal.SIGTERM)
        output, _ = trainer.communicate(timeout=60)
    finally:
        if trainer.poll() is None:
            trainer.kill()
    assert trainer.returncode == 128 + signal.SIGTERM, output
    assert "Traceback" not in output and "every label so far is stored" in output and "--resume" in output, output
    deadline = time.monotonic() + 30
    while "prefloop.training.fit_worker" in command_lines().get(workers[0], ""):  # gone, not just orphaned
        assert time.monotonic() < deadline, "the fit worker outlived its trainer"
        time.sleep(0.1)
    with PreferenceStore(sqlite_url(run / "prefs.sqlite"), RUN, read_only=True) as store:
        counts = store.counts()
    assert counts["labels"] > 0 and counts["labels"] == counts["answered"], counts


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    from prefloop.training.rundir import RunDir, lock_holder

    (tmp_path / "config.json").write_text("{}")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom prefloop.training.rundir import RunDir\n"
        "with RunDir(sys.argv[1]).owned(existing=True):\n    print('held', flush=True); time.sleep(120)\n"
    ), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert lock_holder(tmp_path) == holder.pid
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(tmp_path) is None, "SIGKILL released the lock: nothing stale to clean up"
    with RunDir(tmp_path).owned(existing=True):
        assert lock_holder(tmp_path) == os.getpid()
    assert lock_holder(tmp_path) is None


# ---------------------------------------------------------------------------------------------
# 3. Locked and read-only stores are not "damaged"


@contextmanager
def read_only_mount(folder: Path) -> Iterator[None]:
    """``folder`` on a read-only mount (a bind mount of itself); as non-root, without write permission."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr!r}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True, capture_output=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=False, capture_output=True)


def not_called_damaged(line: str) -> None:
    line = line.replace("not damaged", "")
    assert "damaged" not in line and "backup" not in line and "corrupt" not in line, line


def test_a_read_only_run_folder_is_exported_and_checked_and_never_called_damaged(
    unfinished_run: tuple[Path, dict[str, str]], backend: str, tmp_path: Path, cli: Cli
) -> None:
    if backend != "sqlite":
        pytest.skip("the run folder holds the SQLite store")
    run, _env = unfinished_run
    assert cli("export", "--run-dir", str(run), "--out", str(tmp_path / "expected"))[0] == 0
    before = folder_state(run)
    with read_only_mount(run):
        code, out, err = cli("doctor", "--run-dir", str(run))
        assert code == 0 and "healthy" in out, out + err
        assert cli("export", "--run-dir", str(run), "--out", str(tmp_path / "archive"))[0] == 0
        not_called_damaged(cli.error("train", "--resume", "--run-dir", str(run), "--no-progress", expected=("read-only",)))
        not_called_damaged(cli.error("rate", "--run-dir", str(run), "--port", str(free_port()), expected=("read-only",)))
        code, out, err = cli("doctor", "--run-dir", str(run), "--repair")
        assert code == 0, out + err  # nothing to repair, so nothing to write
    assert folder_state(run) == before
    for name in ("labels.jsonl", "pairs.jsonl", "segments.jsonl"):
        assert (tmp_path / "archive" / name).read_bytes() == (tmp_path / "expected" / name).read_bytes()


LOCK_HOLDERS = {
    # SQLite: the whole file, as a sqlite3 shell in an exclusive transaction holds it.
    "sqlite": (
        "import sqlite3, sys, time\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA locking_mode=EXCLUSIVE'); c.execute('BEGIN EXCLUSIVE')\n"
        "c.execute(\"INSERT INTO prefloop_meta VALUES ('held', 'by a test')\")\n"
        "print('held', flush=True); time.sleep(120)\n"
    ),
    # PostgreSQL: the runs table, as a migration or a pg_dump --lock... would.
    "postgresql": (
        "import psycopg, sys, time\n"
        "from sqlalchemy.engine import make_url\n"
        "u = make_url(sys.argv[1])\n"
        "c = psycopg.connect(host=u.host, port=u.port, user=u.username, password=u.password, dbname=u.database)\n"
        "c.execute('LOCK TABLE runs IN ACCESS EXCLUSIVE MODE')\n"
        "print('held', flush=True); time.sleep(120)\n"
    ),
}


def test_a_locked_store_is_reported_as_locked_not_damaged(
    unfinished_run: tuple[Path, dict[str, str]], backend: str, pg_database: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, cli: Cli,
) -> None:
    from prefloop.store import engine as store_engine  # where the timeout is read

    run, _env = unfinished_run
    monkeypatch.setattr(store_engine, "SQLITE_BUSY_TIMEOUT_S", 0.5)  # SQLite busy_timeout, PostgreSQL lock_timeout
    target = str(run / "prefs.sqlite") if backend == "sqlite" else pg_database
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDERS[backend], target], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        before = folder_state(run)
        code, out, err = cli("doctor", "--run-dir", str(run))
        assert code == 1 and "store_locked" in out and "locked by another process" in out, out + err
        not_called_damaged(out)
        for args in (["export", "--run-dir", str(run), "--out", str(tmp_path / "out")],
                     ["rate", "--run-dir", str(run), "--port", str(free_port())],
                     ["train", "--resume", "--run-dir", str(run), "--no-progress"]):
            not_called_damaged(cli.error(*args, expected=("locked by another process",)))
        assert folder_state(run) == before and not (tmp_path / "out").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_read_only_postgresql_database_is_exported_and_not_called_damaged(
    local_postgres, finished_run: tuple[Path, dict[str, str]], backend: str, pg_database: str, tmp_path: Path,
    cli: Cli, monkeypatch: pytest.MonkeyPatch,
) -> None:
    if backend != "postgresql":
        pytest.skip("a PostgreSQL database set read-only")
    import psycopg
    from sqlalchemy.engine import make_url

    source, env = finished_run
    run = tmp_path / RUN
    shutil.copytree(source, run)
    (run / "summary.json").unlink()
    monkeypatch.setenv(ENV_DB_PASSWORD, env[ENV_DB_PASSWORD])
    name = make_url(pg_database).database
    before = store_state(pg_database, RUN)

    def set_read_only(on: bool) -> None:
        with psycopg.connect(host="127.0.0.1", port=local_postgres.port, user=SUPERUSER,
                             password=local_postgres.password, dbname="postgres", autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = {"on" if on else "off"}')

    set_read_only(True)
    try:
        code, out, err = cli("doctor", "--run-dir", str(run))
        assert code == 0, out + err
        assert cli("export", "--run-dir", str(run), "--out", str(tmp_path / "out"))[0] == 0
        not_called_damaged(cli.error("train", "--resume", "--run-dir", str(run), "--no-progress", expected=("cannot be written",)))
        not_called_damaged(cli.error("rate", "--run-dir", str(run), "--port", str(free_port()), expected=("cannot be written",)))
    finally:
        set_read_only(False)
    assert store_state(pg_database, RUN) == before


# ---------------------------------------------------------------------------------------------
# 4. Damaged newest checkpoint; finished runs; strict JSON


@pytest.mark.slow
@pytest.mark.parametrize("damaged", ["policy.zip", "state.json", "reward_model/reward_model.safetensors"])
def test_resume_falls_back_to_the_newest_checkpoint_that_loads(
    unfinished_run: tuple[Path, dict[str, str]], backend: str, damaged: str, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend != "sqlite" and damaged != "policy.zip":
        pytest.skip("the checkpoint files are the same on both backends; one case on PostgreSQL")
    run, _env = unfinished_run
    older, newest = sorted((run / "checkpoints").glob("step-*"))
    target = newest / damaged
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    url = store_url_of(run)
    labels_before = store_state(url, RUN)[0]

    code, out, _ = cli("doctor", "--run-dir", str(run))
    assert code == 1 and f"continues from {older.name}" in out, out
    code, out, err = cli("train", "--resume", "--run-dir", str(run), "--no-progress")
    assert code == 0, out + err
    assert f"resuming from {older.name}" in err and newest.name in err, err
    assert (run / "checkpoints" / (newest.name + ".damaged")).is_dir(), "kept for inspection, never deleted"
    assert store_state(url, RUN)[0] == labels_before
    strict_json_files(run)
    assert json.loads((run / "summary.json").read_text())["labels_used"] == LABELS


def test_resuming_a_finished_run_changes_nothing(finished_run: tuple[Path, dict[str, str]], tmp_path: Path, cli: Cli,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    source, env = finished_run
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    run = tmp_path / RUN
    shutil.copytree(source, run)
    before, store_before = folder_state(run), store_state(store_url_of(run), RUN)
    cli.error("train", "--resume", "--run-dir", str(run), "--no-progress", expected=("finished",))
    assert folder_state(run) == before and store_state(store_url_of(run), RUN) == store_before
    assert len(strict_json_files(run)) >= 4  # config, summary, two checkpoints' state


def test_json_the_project_writes_is_strict_even_with_nan(tmp_path: Path) -> None:
    from prefloop.training.rundir import RunDir

    RunDir(tmp_path).write_result({"eval_return_mean": float("nan"), "curve": [{"x": float("inf")}]})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"eval_return_mean": None, "curve": [{"x": None}]}
    strict_json_files(tmp_path)


# ---------------------------------------------------------------------------------------------
# 5. An edited config.json


@pytest.mark.parametrize("key, value", [("env_id", "Acrobot-v1"), ("env_id", "CartPole-v0"), ("run_name", "other"),
                                        ("seed", 7)])
def test_an_edited_config_is_found_by_doctor_and_refused_by_resume_before_any_write(
    unfinished_run: tuple[Path, dict[str, str]], backend: str, key: str, value: object, cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if backend != "sqlite" and key != "run_name":
        pytest.skip("one case on PostgreSQL: the run name decides which run of the database is continued")
    run, _env = unfinished_run
    config = json.loads((run / "config.json").read_text())
    config[key] = value
    (run / "config.json").write_text(json.dumps(config, indent=2))
    url = store_url_of(run)
    before, store_before = folder_state(run), store_state(url, RUN)

    code, out, err = cli("doctor", "--run-dir", str(run))
    assert code == 1 and "config_matches_run" in out, out + err
    assert "config.json" in cli.error("train", "--resume", "--run-dir", str(run), "--no-progress")
    assert folder_state(run) == before and store_state(url, RUN) == store_before
    with PreferenceStore(url, RUN, read_only=True) as store:
        assert json.loads(store.get_meta("config") or "{}")[key] != value


def test_a_setting_added_since_a_run_was_recorded_is_not_an_edit_but_a_changed_one_is(tmp_path: Path) -> None:
    from prefloop.training.config import TrainConfig, config_differences

    current = TrainConfig(env_id="CartPole-v1", run_dir=tmp_path).resolve().to_json()
    recorded = json.loads(json.dumps(current))
    del recorded["query"]["cover_first_round"]  # a run recorded before that query setting existed
    assert config_differences(recorded, current) == []
    recorded["query"]["oversampling"] = 3
    assert [d.split(":")[0] for d in config_differences(recorded, current)] == ["query"]


# ---------------------------------------------------------------------------------------------
# 8. Flags a teacher would ignore


@pytest.mark.parametrize("args, expected", [
    (["--raters-per-pair", "3"], "raters_per_pair 3 needs that many raters per pair"),
    (["--teacher", "stochastic", "--raters-per-pair", "2"], "the 'stochastic' teacher has 1"),
    (["--teacher", "crowd:careful,random", "--raters-per-pair", "3"], "has 2, so pairs would wait for ever"),
    (["--teacher", "recorded:/nowhere", "--raters-per-pair", "2"], "needs that many raters per pair"),
    (["--teacher", "human", "--teacher-param", "beta=1"], "apply to simulated teachers only"),
    (["--teacher", "recorded:/nowhere", "--teacher-param", "epsilon=0.1"], "apply to simulated teachers only"),
    (["--gold-fraction", "0.2"], "--gold-fraction applies to raters who answer in their own time"),
    (["--teacher", "mistake", "--when-behind", "wait"], "--when-behind applies to raters who answer in their own time"),
    (["--teacher", "recorded:/nowhere", "--when-behind", "pace"], "--when-behind applies"),
    (["--ensemble", "1"], "needs at least 2 members"),
    (["--ensemble", "1", "--query", "disagreement", "--teacher", "human"], "needs at least 2 members"),
])
def test_a_flag_the_teacher_would_ignore_is_refused(args: list[str], expected: str, tmp_path: Path, cli: Cli) -> None:
    command = ["run", "--port", str(free_port())] if "human" in args else ["train"]  # people rate through `run`
    cli.error(*command, "--run-dir", str(tmp_path / "run"), *args, expected=(expected,))
    assert not (tmp_path / "run").exists()


def test_the_flags_work_where_they_apply(tmp_path: Path) -> None:
    from prefloop.cli.main import build_parser, build_train_config

    human = build_train_config(build_parser().parse_args(
        ["run", "--run-dir", str(tmp_path), "--gold-fraction", "0.2", "--when-behind", "wait", "--raters-per-pair", "3"]))
    assert (human.gold_fraction, human.when_behind, human.raters_per_pair) == (0.2, "wait", 3)
    simulated = build_train_config(build_parser().parse_args(
        ["train", "--run-dir", str(tmp_path), "--teacher", "stochastic", "--teacher-param", "beta=2", "--ensemble", "1",
         "--query", "entropy"]))
    assert simulated.teacher_params == {"beta": 2.0} and simulated.reward_model.n_members == 1
    paced = build_train_config(build_parser().parse_args(
        ["train", "--run-dir", str(tmp_path), "--answer-seconds", "2", "--when-behind", "wait", "--gold-fraction", "0.1"]))
    assert (paced.when_behind, paced.gold_fraction) == ("wait", 0.1)  # a simulated rater on a clock reads them
    crowd = build_train_config(build_parser().parse_args(
        ["train", "--run-dir", str(tmp_path), "--teacher", "crowd:3xcareful", "--raters-per-pair", "3", "--gold-fraction", "0.1"]))
    assert (crowd.raters_per_pair, crowd.gold_fraction) == (3, 0.1)  # a crowd of 3 gives 3 labels a pair, and is asked gold


def test_resume_refuses_run_settings_instead_of_ignoring_them(tmp_path: Path, cli: Cli) -> None:
    cli.error("train", "--resume", "--run-dir", str(tmp_path), "--steps", "8000", "--labels", "50",
              expected=("--labels, --steps would be ignored",))
    cli.error("train", "--resume", "--run-dir", str(tmp_path), "--no-action-squares", "--normalize-observations",
              expected=("--no-action-squares, --normalize-observations would be ignored",))
    assert list(tmp_path.iterdir()) == []


def test_steps_past_the_asked_number_are_stated(finished_run: tuple[Path, dict[str, str]], backend: str,
                                               tmp_path: Path, cli: Cli) -> None:
    if backend != "sqlite":
        pytest.skip("the step count does not depend on the store")
    run = tmp_path / RUN
    code, _out, err = cli("train", "--env", "CartPole-v1", "--steps", "2000", "--labels", "10", "--eval-episodes", "1",
                          "--run-dir", str(run), "--no-progress")
    assert code == 0, err
    newest = sorted((run / "checkpoints").glob("step-*"))[-1]
    ran = json.loads((newest / "state.json").read_text())["env_step"]
    # PPO with 8 envs of 32 steps learns in rollouts of 256 steps: the last one ends past 2000.
    assert ran != 2000 and f"ran {ran} env steps for steps=2000: PPO learns in whole rollouts" in err
