"""``prefloop rate``: serve the rater app for a run, with a clip worker thread beside it."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from prefloop.apps.access import (
    ENV_ADMIN_TOKEN,
    ENV_TOKEN,
    AppConfigError,
    check_exposure,
    check_timings,
    check_token_value,
)
from prefloop.apps.launch import (
    AppStartError,
    app_url,
    check_port_free,
    launch_rater_app,
    port_number,
    wait_until_ready,
)

from prefloop.store import PreferenceStore, sqlite_url
from prefloop.training.config import ConfigError
from prefloop.training.rundir import store_of_run_folder

# A clip worker that dies is restarted this many times before the app stops with its reason.
MAX_WORKER_RESTARTS = 3
WATCH_S = 0.5
# Signals that stop the app and its worker cleanly (SIGINT raises KeyboardInterrupt already).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class RateCommandError(ConfigError):
    """Bad arguments to ``prefloop rate``; the message says what to pass instead (the CLI shows
    it as one line, as for every ConfigError)."""


def add_rate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``prefloop rate`` on the CLI's subparsers; its ``func`` returns an exit code."""
    parser = subparsers.add_parser(
        "rate",
        help="serve the rater app (compare clips in the browser) for a run",
        description="Serve the rater app for a run and render its clips. Open the printed URL in a browser.",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--run-dir", type=Path, help="the run folder (its prefs.sqlite and config.json)")
    where.add_argument("--db-url", help="SQLAlchemy URL of the preference store (with --run-name)")
    parser.add_argument("--run-name", default=None,
                        help="run name in the store (default: the run the folder holds; with --db-url: 'default')")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; anything but loopback needs --token and --admin-token")
    parser.add_argument("--port", type=port_number, default=8501, help="port to listen on, 1-65535 (default: 8501)")
    parser.add_argument("--token", default=os.environ.get(ENV_TOKEN),
                        help=f"access token raters must present (?token=... in the link; default: ${ENV_TOKEN})")
    parser.add_argument("--admin-token", default=os.environ.get(ENV_ADMIN_TOKEN),
                        help=f"token for the dashboard and the preferences download (default: ${ENV_ADMIN_TOKEN}; "
                        "required off loopback, else open to raters)")
    parser.add_argument("--lease-seconds", type=float, default=None,
                        help="how long a shown pair stays reserved after the rater's page stops its heartbeat (default 30)")
    parser.add_argument("--idle-seconds", type=float, default=None,
                        help="a rater with no answer for this long is paused and their pairs go to others (default 120)")
    parser.add_argument("--invite-only", action="store_true",
                        help="only raters with a personal link (`prefloop raters add NAME`) may rate")
    parser.add_argument("--break-minutes", type=float, default=None,
                        help="remind raters to take a break after this many minutes of rating (default 20; 0: never)")
    parser.add_argument("--no-clip-worker", action="store_true", help="do not render clips here (another worker does)")
    # `prefloop run` passes its process id: the app stops when that process is gone, even killed.
    parser.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    parser.set_defaults(func=cmd_rate)
    return parser


def resolve_store(args: argparse.Namespace) -> tuple[str, str]:
    """``(db_url, run_name)`` from ``--run-dir`` (the run that folder holds, as ``train``, ``run``
    and ``import`` name it) or ``--db-url``/``--run-name``."""
    if args.run_dir is not None:
        run_dir = Path(args.run_dir)
        # A damaged config.json is an error, not a reason to guess: a wrong run name would put
        # raters on an empty run.
        db_url, run_name = store_of_run_folder(run_dir, run_name=args.run_name)
        if db_url != sqlite_url(run_dir / "prefs.sqlite") or (run_dir / "prefs.sqlite").is_file():
            return db_url, run_name  # (a store elsewhere, e.g. PostgreSQL, is named in config.json)
        raise RateCommandError(
            f"{run_dir} has no prefs.sqlite: is it a run folder? Start the run first "
            "(prefloop run ...) or pass --db-url"
        )
    return args.db_url, args.run_name or "default"


def cmd_rate(args: argparse.Namespace) -> int:
    from prefloop.apps.clipworker import start_clip_worker_thread

    db_url, run_name = resolve_store(args)
    try:
        check_token_value(args.token, "--token")
        check_token_value(args.admin_token, "--admin-token")
        check_exposure(args.host, args.token, args.admin_token)
        check_timings(args.lease_seconds, args.idle_seconds, args.break_minutes)
        check_port_free(args.host, args.port)
    except (AppConfigError, AppStartError) as exc:
        raise RateCommandError(str(exc)) from None
    # A bad URL, a foreign file or a run the store does not hold fails here, in one line.
    PreferenceStore(db_url, run_name, create_run=False).close()

    def start_worker() -> tuple | None:
        # The trainer may not have published the env yet: the thread waits for it.
        return None if args.no_clip_worker else start_clip_worker_thread(db_url, run_name, wait_for_meta_s=24 * 3600.0)

    # `prefloop run`, a timeout or a closed terminal stop us: the same clean exit as Ctrl-C.
    previous = {signum: signal.signal(signum, _raise_keyboard_interrupt) for signum in STOP_SIGNALS}
    worker = app = None
    try:
        worker = start_worker()
        app = launch_rater_app(
            db_url, run_name, host=args.host, port=args.port, token=args.token,
            admin_token=args.admin_token, lease_seconds=args.lease_seconds,
            idle_seconds=args.idle_seconds, invite_only=args.invite_only, break_minutes=args.break_minutes,
        )
        url = app_url(args.host, args.port)
        wait_until_ready(url, timeout=120, process=app)
        # Tokens are not printed: terminal output ends up in logs. Whoever set them adds them.
        link = url + ("?token=<the rater token>" if args.token else "")
        print(f"rater app: {link}  (run {run_name!r}; open it in a browser and compare clips)", flush=True)
        if args.admin_token:
            print(f"dashboard: {url}dashboard?admin_token=<the admin token>", flush=True)
        print("Ctrl-C stops the app" + ("" if args.no_clip_worker else " and the clip worker"), flush=True)
        restarts = 0
        while True:
            if app.poll() is not None:
                if app.returncode in (0, -signal.SIGTERM):
                    return 0
                print(f"prefloop: error: the rater app stopped unexpectedly (exit code {app.returncode})", file=sys.stderr, flush=True)
                return 1
            if worker is not None and not worker[0].is_alive():
                reason = getattr(worker[0], "failure", None) or "it ended"
                if restarts >= MAX_WORKER_RESTARTS:
                    print(f"prefloop: error: the clip worker stopped {restarts + 1} times ({reason}); "
                          "stopping the app, which would show no new clips", file=sys.stderr, flush=True)
                    return 1
                restarts += 1
                print(f"prefloop: the clip worker stopped ({reason}); restarting it "
                      f"({restarts} of {MAX_WORKER_RESTARTS})", file=sys.stderr, flush=True)
                worker = start_worker()
            if args.parent_pid is not None and os.getppid() != args.parent_pid:
                return 0  # the trainer that started us is gone
            time.sleep(WATCH_S)
    except AppStartError as exc:
        print(f"prefloop: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        # A second signal (an impatient Ctrl-C) must not cut the clean-up short.
        previous.setdefault(signal.SIGINT, signal.getsignal(signal.SIGINT))
        for signum in previous:
            signal.signal(signum, signal.SIG_IGN)
        if app is not None:
            _stop(app)
        if worker is not None:
            thread, stop = worker
            stop.set()
            thread.join(timeout=10)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
