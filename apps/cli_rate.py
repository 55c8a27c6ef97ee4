"""``prefloop rate``: serve the rater app for a run, with a clip worker thread beside it."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from prefloop.apps.access import (
    ENV_ADMIN_TOKEN,
    ENV_TOKEN,
    AppConfigError,
    check_exposure,
    check_token_value,
)
from prefloop.apps.launch import AppStartError, app_url, launch_rater_app, wait_until_ready
from prefloop.config import ConfigError, read_store_settings
from prefloop.store import PreferenceStore, sqlite_url


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
    parser.add_argument("--run-name", default=None, help="run name in the store (default: the run folder's, or 'default')")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; anything but loopback needs --token and --admin-token")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--token", default=os.environ.get(ENV_TOKEN),
                        help=f"access token raters must present (?token=... in the link; default: ${ENV_TOKEN})")
    parser.add_argument("--admin-token", default=os.environ.get(ENV_ADMIN_TOKEN),
                        help=f"token for the dashboard and the preferences download (default: ${ENV_ADMIN_TOKEN}; "
                        "required off loopback, else open to raters)")
    parser.add_argument("--lease-seconds", type=float, default=None, help="how long a shown pair stays reserved (default 120)")
    parser.add_argument("--no-clip-worker", action="store_true", help="do not render clips here (another worker does)")
    parser.set_defaults(func=cmd_rate)
    return parser


def resolve_store(args: argparse.Namespace) -> tuple[str, str]:
    """``(db_url, run_name)`` from ``--run-dir`` or ``--db-url``/``--run-name``."""
    if args.run_dir is not None:
        run_dir = Path(args.run_dir)
        # A damaged config.json is an error, not a reason to guess: a wrong run name would put
        # raters on an empty run.
        saved_url, saved_name = read_store_settings(run_dir / "config.json")
        run_name = args.run_name or saved_name or "default"
        if saved_url:  # the run keeps its store elsewhere (e.g. PostgreSQL)
            return saved_url, run_name
        store_path = run_dir / "prefs.sqlite"
        if not store_path.is_file():
            raise RateCommandError(
                f"{run_dir} has no prefs.sqlite: is it a run folder? Start the run first "
                "(prefloop run ...) or pass --db-url"
            )
        return sqlite_url(store_path), run_name
    return args.db_url, args.run_name or "default"


def cmd_rate(args: argparse.Namespace) -> int:
    from prefloop.clipworker import start_clip_worker_thread

    db_url, run_name = resolve_store(args)
    try:
        check_token_value(args.token, "--token")
        check_token_value(args.admin_token, "--admin-token")
        check_exposure(args.host, args.token, args.admin_token)
    except AppConfigError as exc:
        raise RateCommandError(str(exc)) from None
    PreferenceStore(db_url, run_name).close()  # a bad URL or foreign file fails here, clearly

    worker = None
    if not args.no_clip_worker:
        # The trainer may not have published the env yet: the thread waits for it.
        worker = start_clip_worker_thread(db_url, run_name, wait_for_meta_s=24 * 3600.0)
    app = launch_rater_app(
        db_url, run_name, host=args.host, port=args.port, token=args.token,
        admin_token=args.admin_token, lease_seconds=args.lease_seconds,
    )
    # `prefloop run` stops us with SIGTERM: turn it into the same clean exit as Ctrl-C.
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        url = app_url(args.host, args.port)
        wait_until_ready(url, timeout=120, process=app)
        # Tokens are not printed: terminal output ends up in logs. Whoever set them adds them.
        print(f"rater app: {url}" + ("?token=<the rater token>" if args.token else ""), flush=True)
        if args.admin_token:
            print(f"dashboard: {url}dashboard?admin_token=<the admin token>", flush=True)
        print("Ctrl-C stops the app" + ("" if args.no_clip_worker else " and the clip worker"), flush=True)
        app.wait()
        return 0 if app.returncode in (0, -signal.SIGTERM) else 1
    except AppStartError as exc:
        print(f"prefloop: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(app)
        if worker is not None:
            thread, stop = worker
            stop.set()
            thread.join(timeout=10)


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
