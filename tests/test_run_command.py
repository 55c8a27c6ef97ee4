"""``prefloop run`` and ``prefloop rate`` as processes: the app belongs to its run.

A busy port is refused before anything is written; the URL is printed once, when the run's own app
answers; a dead app is restarted; SIGTERM / SIGHUP / SIGINT stop the app and the clip worker with
the run (no process left, the port free); ``rate --run-dir`` opens the run the folder holds.
"""

from __future__ import annotations

import argparse
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import RatedStore, free_port
from prefloop.apps.cli_rate import add_rate_parser, resolve_store
from prefloop.apps.clipworker import ClipWorker
from prefloop.apps.launch import AppStartError, launch_rater_app, wait_until_ready

from prefloop.cli.main import main
from prefloop.store import PreferenceStore
from prefloop.types import Choice


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@contextmanager
def other_server(port: int) -> Iterator[None]:
    """Someone else's web server on ``port`` that even answers Streamlit's health check."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"ok" if self.path.endswith("/_stcore/health") else b"not a rater app"
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("command", ["run", "rate"])
def test_a_busy_port_is_one_line_naming_it_and_no_run_folder_is_written(
    command: str, capsys: pytest.CaptureFixture, tmp_path: Path, rated_store: RatedStore
) -> None:
    port = free_port()
    run_dir = tmp_path / "new-run"
    args = (["run", "--run-dir", str(run_dir), "--steps", "2000", "--labels", "4"] if command == "run"
            else ["rate", "--db-url", rated_store.url, "--run-name", rated_store.run_name])
    with other_server(port):
        code = main([*args, "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and f"port {port}" in err and "--port" in err and "Traceback" not in err
    assert not run_dir.exists()


@pytest.mark.parametrize("command", ["run", "rate"])
@pytest.mark.parametrize("port", ["99999", "0", "-1", "http"])
def test_a_port_outside_1_to_65535_is_refused_before_anything_is_written(
    command: str, port: str, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    run_dir = tmp_path / "new-run"
    args = ["run", "--steps", "2000", "--labels", "4"] if command == "run" else ["rate"]
    with pytest.raises(SystemExit) as stopped:
        main([*args, "--run-dir", str(run_dir), f"--port={port}"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert f"prefloop {command}: error: argument --port" in err and "Traceback" not in err
    assert ("65535" in err) == (port != "http")
    assert not run_dir.exists()


def test_the_launcher_does_not_take_another_servers_answer_for_its_app(rated_store: RatedStore, tmp_path: Path) -> None:
    port = free_port()
    with other_server(port):
        app = launch_rater_app(rated_store.url, rated_store.run_name, port=port, log_path=tmp_path / "app.log")
        try:
            with pytest.raises(AppStartError, match="another server"):
                wait_until_ready(f"http://127.0.0.1:{port}/", timeout=60, process=app)
        finally:
            app.kill()
            app.wait()


def test_rate_run_dir_opens_the_run_an_import_made_and_serves_its_pairs(rated_store: RatedStore, tmp_path: Path) -> None:
    from conftest import app_served_on_loopback
    from streamlit.testing.v1 import AppTest

    dataset, folder = tmp_path / "dataset", tmp_path / "imported"
    assert main(["export", "--db-url", rated_store.url, "--run-name", rated_store.run_name, "--out", str(dataset)]) == 0
    assert main(["import", "--in", str(dataset), "--run-dir", str(folder)]) == 0

    parser = argparse.ArgumentParser()
    add_rate_parser(parser.add_subparsers())
    url, run_name = resolve_store(parser.parse_args(["rate", "--run-dir", str(folder)]))
    with PreferenceStore(url, run_name) as store:
        waiting = store.counts()["pending"]
    assert waiting == len(rated_store.pair_ids)  # the imported run, not an empty one
    named = tmp_path / "named"  # an import that chose its own run name
    assert main(["import", "--in", str(dataset), "--run-dir", str(named), "--run-name", "my-labels"]) == 0
    assert resolve_store(parser.parse_args(["rate", "--run-dir", str(named)]))[1] == "my-labels"
    with ClipWorker(url, run_name) as worker:  # what `prefloop rate` runs beside the app
        while worker.render_pending(8):
            pass

    def app_script(argv: list[str]) -> None:
        from prefloop.apps.rater_app import main as app_main

        app_main(argv)

    with app_served_on_loopback():
        at = AppTest.from_function(app_script, args=(["--db-url", url, "--run-name", run_name],), default_timeout=30)
        at.query_params["rater"] = "ada"
        at.run()
    shown = [e for e in at.get("bidi_component") if e.key == "rater_player"]
    assert shown, "the rater page shows a pair of the imported run"
    assert f"Pairs waiting: **{waiting}**" in "\n".join(str(c.value) for c in at.caption)


def descendants(pid: int, depth: int = 99) -> set[int]:
    """The processes below ``pid`` (children, grandchildren, ... down to ``depth``), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    level = [pid]
    for _ in range(depth):
        level = [c for parent in level for c in children.get(parent, []) if c not in found]
        found.update(level)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class RunProcess:
    """``prefloop run`` in a process of its own, its output collected line by line."""

    def __init__(self, run_dir: Path, port: int):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "prefloop.cli", "run", "--run-dir", str(run_dir), "--port", str(port),
             "--steps", "4000", "--labels", "6", "--when-behind", "wait", "--no-progress", "--eval-episodes", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, count: int = 1, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while sum(text in line for line in self.lines) < count:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {count} x {text!r} in the output of prefloop run:\n{''.join(self.lines)}")
            time.sleep(0.2)

    def output(self) -> str:
        return "".join(self.lines)


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_signal_to_prefloop_run_stops_the_app_and_worker_and_keeps_every_label(
    stop_signal: str, tmp_path: Path
) -> None:
    port = free_port()
    run = RunProcess(tmp_path / "run", port)
    try:
        run.wait_for("rater app: ")
        assert run.output().count(f"http://127.0.0.1:{port}/") == 1  # once, when this run's app answers
        app_processes = descendants(run.process.pid)
        assert len(app_processes) >= 2  # `prefloop rate` and its Streamlit server
        with PreferenceStore(f"sqlite:///{tmp_path / 'run' / 'prefs.sqlite'}", "run") as store:
            pair = store.claim_next("ada")
            store.answer(pair.id, "ada", Choice.LEFT, 2.0)

        if stop_signal == "SIGTERM":
            # The app dies under the trainer: it says so at once and starts it again.
            (rate_child,) = descendants(run.process.pid, depth=1)
            os.kill(rate_child, signal.SIGKILL)
            run.wait_for("the rater app stopped", timeout=30)
            run.wait_for("rater app: ", count=2)
            app_processes = descendants(run.process.pid)

        run.process.send_signal(getattr(signal, stop_signal))
        exit_code = run.process.wait(timeout=60)
        assert exit_code == 128 + getattr(signal, stop_signal)  # 143, 129, 130: what supervisors expect
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (any(alive(p) for p in app_processes) or not port_is_free(port)):
            time.sleep(0.2)
        assert not [p for p in app_processes if alive(p)], run.output()
        assert port_is_free(port)
        assert "every label so far is stored" in run.output()
        with PreferenceStore(f"sqlite:///{tmp_path / 'run' / 'prefs.sqlite'}", "run") as store:
            assert [(l.pair_id, l.choice) for l in store.labels()] == [(pair.id, Choice.LEFT)]
    finally:
        if run.process.poll() is None:
            os.killpg(run.process.pid, signal.SIGKILL)
            run.process.wait()


def test_a_clip_worker_that_dies_is_restarted_then_the_app_stops_with_the_reason(
    rated_store: RatedStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The worker is a thread beside the app: one that ends on an error is reported at once and
    started again, a bounded number of times; then `prefloop rate` stops (and `prefloop run`'s
    watch restarts or stops the whole app)."""
    import prefloop.apps.cli_rate as cli_rate
    import prefloop.apps.clipworker as clipworker

    starts: list[threading.Thread] = []

    def failing_worker(*args: object, **kwargs: object) -> tuple[threading.Thread, threading.Event]:
        thread = threading.Thread(target=lambda: None)
        thread.failure = "OperationalError: disk I/O error"  # type: ignore[attr-defined]
        thread.start()
        thread.join()
        starts.append(thread)
        return thread, threading.Event()

    class RunningApp:
        returncode = None

        def poll(self) -> None:
            return None

        def terminate(self) -> None:
            self.returncode = -signal.SIGTERM

        def wait(self, timeout: float | None = None) -> int:
            return -signal.SIGTERM

    monkeypatch.setattr(clipworker, "start_clip_worker_thread", failing_worker)
    monkeypatch.setattr(cli_rate, "launch_rater_app", lambda *a, **k: RunningApp())
    monkeypatch.setattr(cli_rate, "wait_until_ready", lambda *a, **k: None)
    monkeypatch.setattr(cli_rate, "WATCH_S", 0.01)

    code = main(["rate", "--db-url", rated_store.url, "--run-name", rated_store.run_name, "--port", str(free_port())])

    err = capsys.readouterr().err
    assert code == 1 and len(starts) == 1 + cli_rate.MAX_WORKER_RESTARTS
    assert err.count("the clip worker stopped (OperationalError: disk I/O error); restarting it") == cli_rate.MAX_WORKER_RESTARTS
    assert "error: the clip worker stopped 4 times" in err


def test_the_supervisor_restarts_a_dying_app_a_bounded_number_of_times_then_gives_up() -> None:
    from prefloop.apps.supervise import RaterAppSupervisor

    lines: list[str] = []
    gave_up = threading.Event()
    reasons: list[str] = []
    supervisor = RaterAppSupervisor([], dict(os.environ), on_give_up=lambda why: (reasons.append(why), gave_up.set()),
                                    max_restarts=2, announce=lines.append)
    supervisor.command = [sys.executable, "-c", "import sys; sys.exit(3)"]  # an app that dies at once
    supervisor.start()
    try:
        assert gave_up.wait(30), lines
        assert len(lines) == 2 and all("the rater app stopped (exit code 3); restarting it" in line for line in lines)
        assert reasons == [supervisor.failure] and "stopped 3 times (last exit code 3)" in reasons[0]
        assert not supervisor.running()
    finally:
        supervisor.stop()


@pytest.mark.slow
def test_train_with_the_rater_app_as_teacher_serves_the_run_and_stops_the_app_with_it(tmp_path: Path) -> None:
    """``train(TrainConfig(teacher=RaterApp(port=...)))`` from Python: the app answers on its port
    while the run trains, a rater's answers through the store teach it, and the app is gone
    (processes, port) when ``train`` returns; config.json records a human run."""
    import json

    import torch
    from prefloop.apps.launch import app_url, wait_until_ready
    from prefloop.apps.teacher import RaterApp

    from prefloop.training.config import TrainConfig
    from prefloop.training.loop import train

    torch.set_num_threads(1)
    port = free_port()
    run_dir = tmp_path / "run"
    app = RaterApp(port=port)
    stop = threading.Event()
    seen: dict[str, object] = {"app_processes": set(), "answered": 0}

    def rater() -> None:
        """A person: opens the page once it answers, then answers every pair the app would show."""
        try:
            wait_until_ready(app_url("127.0.0.1", port), timeout=120)
            assert app.supervisor is not None and app.supervisor.process is not None
            leader = app.supervisor.process.pid  # `prefloop rate`, with its Streamlit server below it
            seen["app_processes"] = descendants(leader) | {leader}
            with PreferenceStore(f"sqlite:///{run_dir / 'prefs.sqlite'}", "run") as store:
                while not stop.is_set():
                    pair = store.claim_next("ada")
                    if pair is None:
                        stop.wait(0.1)
                        continue
                    store.answer(pair.id, "ada", Choice.LEFT, 2.0)
                    seen["answered"] = int(seen["answered"]) + 1
        except Exception as exc:  # shown by the assertions below
            seen["error"] = exc

    person = threading.Thread(target=rater, daemon=True)
    person.start()
    try:
        result = train(TrainConfig(env_id="CartPole-v1", run_dir=run_dir, teacher=app, labels=6, steps=3000,
                                   when_behind="wait", eval_episodes=1, progress_bar=False))
    finally:
        stop.set()
        person.join(timeout=30)
        app.close()
    assert "error" not in seen, seen
    assert result.labels_used == seen["answered"] == 6
    app_processes = seen["app_processes"]
    assert app_processes, "the app answered on its port while the run trained"
    assert not [p for p in app_processes if alive(p)] and port_is_free(port), "the app stops with the run"
    assert json.loads((run_dir / "config.json").read_text())["teacher"] == "human"
