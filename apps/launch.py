"""Starting the rater app as a ``streamlit run`` child process, and waiting until it answers.

The database URL and tokens travel to the child in environment variables (see
``prefloop.apps.access``), not on its command line, so other users of the machine cannot read
them with ``ps``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from prefloop.apps.access import (
    ENV_ADMIN_TOKEN,
    ENV_DB_URL,
    ENV_TOKEN,
    check_exposure,
    check_token_value,
)

RATER_APP = Path(__file__).with_name("rater_app.py")


class AppStartError(RuntimeError):
    """The app process exited or did not answer in time; the message includes its output."""


def launch_rater_app(
    db_url: str,
    run_name: str,
    host: str = "127.0.0.1",
    port: int = 8501,
    token: str | None = None,
    admin_token: str | None = None,
    *,
    lease_seconds: float | None = None,
    log_path: str | os.PathLike[str] | None = None,
) -> subprocess.Popen:
    """Start the rater app for one run; returns the ``streamlit run`` process (not waited for).

    Args:
        db_url: the preference store's SQLAlchemy URL.
        run_name: the run whose pairs are rated.
        host: address to listen on. Anything but loopback (127.0.0.1, localhost, ::1) makes the
            app reachable from other machines and therefore needs ``token`` and ``admin_token``.
        port: TCP port.
        token: access token raters must present (``?token=...`` in the link or typed in).
        admin_token: token for the dashboard page and the preferences download (None: open to
            raters; loopback only).
        lease_seconds: how long a shown pair stays reserved for its rater (default 120).
        log_path: file for the app's output (default: discarded).

    Raises:
        ValueError: a non-loopback ``host`` without both tokens (an ``AppConfigError``), a token
            shorter than 8 characters, or a bad port.
    """
    check_token_value(token, "token")
    check_token_value(admin_token, "admin_token")
    check_exposure(host, token, admin_token, token_flag="token", admin_flag="admin_token")
    if not 0 < int(port) < 65536:
        raise ValueError(f"port must be between 1 and 65535, got {port}")
    command = [
        sys.executable, "-m", "streamlit", "run", str(RATER_APP),
        "--server.address", host,
        "--server.port", str(int(port)),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--client.toolbarMode", "minimal",
        "--client.showErrorDetails", "none",
        "--",
        "--run-name", run_name,
    ]
    if lease_seconds is not None:
        command += ["--lease-seconds", str(lease_seconds)]
    env = {k: v for k, v in os.environ.items() if k not in (ENV_DB_URL, ENV_TOKEN, ENV_ADMIN_TOKEN)}
    env[ENV_DB_URL] = db_url
    if token:
        env[ENV_TOKEN] = token
    if admin_token:
        env[ENV_ADMIN_TOKEN] = admin_token
    output = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
    finally:
        if log_path is not None:
            output.close()  # the child holds its own copy of the descriptor


def app_url(host: str, port: int) -> str:
    """The URL to open for an app listening on ``host:port`` (all-interfaces -> this machine's
    loopback, IPv6 in brackets)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{int(port)}/"


def wait_until_ready(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Block until the Streamlit server at ``url`` answers its health check.

    Raises:
        AppStartError: ``process`` exited first, or ``timeout`` seconds passed.
    """
    health = url.rstrip("/") + "/_stcore/health"
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise AppStartError(
                f"the rater app exited with code {process.returncode} before it was ready; "
                "run it by hand to see why: streamlit run " + str(RATER_APP)
            )
        try:
            with urllib.request.urlopen(health, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AppStartError(f"the rater app at {url} did not answer within {timeout:.0f} s")
        time.sleep(0.2)
