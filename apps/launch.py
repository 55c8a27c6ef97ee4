"""Starting the rater app as a ``streamlit run`` child process, and waiting until *it* answers.

The database URL and tokens travel to the child in environment variables (see
``prefloop.apps.access``), not on its command line, so other users of the machine cannot read
them with ``ps``.

Another server may answer on the same port (a forgotten app of an earlier run, anything else on
8501). So each app process gets a random identity, served as the static file
``/app/static/prefloop-app-id``, and :func:`wait_until_ready` returns only once the server on the
port answers with this process's identity: raters are never sent to another run's app.

Streamlit serves ``static/`` from beside the script it runs, so the app runs from a small script
in a private folder of its own (per user, run, address and port; see :func:`served_folder`). The
folder stays the same when the app is restarted, so open rater pages reconnect to the new process
as to the old one (a different script path would reset them, and with them answers not yet sent).
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from prefloop.apps.access import (
    ENV_ADMIN_TOKEN,
    ENV_DB_URL,
    ENV_TOKEN,
    check_exposure,
    check_timings,
    check_token_value,
)

from prefloop.training.rundir import write_atomic

RATER_APP = Path(__file__).with_name("rater_app.py")
APP_ID_FILE = "prefloop-app-id"  # served as /app/static/prefloop-app-id

# Streamlit serves ``static/`` beside the main script; this script only runs the real app.
_SHIM = """# Written by prefloop.apps.launch: the rater app, run from here so that static/ is its own.
import sys

from prefloop.apps.rater_app import main

main(sys.argv[1:])
"""


class AppStartError(RuntimeError):
    """The app process exited or did not answer in time; the message includes its output."""


class PortInUseError(AppStartError):
    """Something already listens on the app's port; the message names the port and ``--port``."""


class RaterAppProcess(subprocess.Popen):
    """The ``streamlit run`` process of one rater app, with the identity it serves (``app_id``)."""

    app_id: str
    served_dir: Path


def served_folder(db_url: str, run_name: str, host: str, port: int) -> Path:
    """The folder an app runs from: the same for the same run, address and port (so a restarted
    app is the same app to open pages), inside a folder only this user can write to.

    The name is a hash: the database URL may hold a password.
    """
    key = hashlib.sha256("\0".join((db_url, run_name, host, str(int(port)))).encode("utf-8", "surrogatepass"))
    base = Path(tempfile.gettempdir()) / f"prefloop-apps-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    base.mkdir(mode=0o700, exist_ok=True)
    info = base.lstat()
    # A folder planted by someone else in the shared temp dir would run their script: refuse it.
    if not stat.S_ISDIR(info.st_mode) or (hasattr(os, "getuid") and info.st_uid != os.getuid()) or info.st_mode & 0o022:
        raise AppStartError(f"{base} is not a private folder of this user; remove it and start again")
    folder = base / key.hexdigest()[:24]
    (folder / "static").mkdir(parents=True, exist_ok=True)
    return folder


def port_number(text: str) -> int:
    """``--port``'s type for ``prefloop run`` and ``prefloop rate``: an integer 1..65535, checked
    before anything is started or written.

    Raises:
        argparse.ArgumentTypeError: one line naming the allowed range.
    """
    import argparse

    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port between 1 and 65535, got {value} (e.g. --port 8501)")
    return value


def _make_hint(port: int) -> str:
    """How to pass another port when the user started us through ``make run``."""
    return f" (with make: make run PORT={port})" if os.environ.get("MAKELEVEL") else ""


def check_port_free(host: str, port: int, *, from_python: bool = False) -> None:
    """Refuse a port another process listens on, before anything is started or written.

    Raises:
        PortInUseError: one line naming the address, the port and ``--port`` (``from_python``:
            ``RaterApp(port=...)``, what a caller of the Python API passes instead).
    """
    try:
        infos = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise AppStartError(f"cannot listen on {host!r}: {exc.strerror}; pass {'host=' if from_python else '--host'} "
                            "with an address of this machine") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As the app's server does: a socket of a stopped app lingering in TIME_WAIT is no obstacle.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                free = suggest_free_port(host, int(port))
                fix = (f"a free port, e.g. RaterApp(port={free})" if from_python else
                       f"--port with a free port, e.g. --port {free}{_make_hint(free)}")
                raise PortInUseError(
                    f"port {int(port)} on {host} is already in use by another program (another rater app?); stop it, or pass {fix}"
                ) from None
            if exc.errno == errno.EACCES:
                raise PortInUseError(
                    f"no permission to listen on port {int(port)}; pass {'port=' if from_python else '--port'} with a port above 1023"
                ) from None
            raise AppStartError(f"cannot listen on {host}:{int(port)}: {exc.strerror}; pass another "
                                + ("host= or port=" if from_python else "--host or --port")) from None


def suggest_free_port(host: str, busy: int, tries: int = 20) -> int:
    """A port after ``busy`` that is free right now (for the error message), else ``busy + 1``."""
    for port in range(busy + 1, min(65536, busy + 1 + tries)):
        try:
            check_port_free(host, port)
        except AppStartError:
            continue
        return port
    return busy + 1


def launch_rater_app(
    db_url: str,
    run_name: str,
    host: str = "127.0.0.1",
    port: int = 8501,
    token: str | None = None,
    admin_token: str | None = None,
    *,
    lease_seconds: float | None = None,
    idle_seconds: float | None = None,
    invite_only: bool = False,
    break_minutes: float | None = None,
    log_path: str | os.PathLike[str] | None = None,
) -> RaterAppProcess:
    """Start the rater app for one run; returns the ``streamlit run`` process (not waited for):
    pass it to :func:`wait_until_ready`, which checks that the app answering is this one.

    Args:
        db_url: the preference store's SQLAlchemy URL.
        run_name: the run whose pairs are rated.
        host: address to listen on. Anything but loopback (127.0.0.1, localhost, ::1) makes the
            app reachable from other machines and therefore needs ``token`` and ``admin_token``.
        port: TCP port.
        token: access token raters must present (``?token=...`` in the link or typed in).
        admin_token: token for the dashboard page and the preferences download (None: open to
            raters; loopback only).
        lease_seconds: how long a shown pair stays reserved for its rater without the open
            page's heartbeat (default 30).
        idle_seconds: a rater's session pauses (and gives its pairs back) after this long
            without an answer (default 120).
        invite_only: only raters with a personal link (``prefloop raters add``) may rate.
        break_minutes: remind raters to take a break after this many minutes (default 20; 0: never).
        log_path: file for the app's output (default: discarded).

    Raises:
        ValueError: a non-loopback ``host`` without both tokens (an ``AppConfigError``), a token
            shorter than 8 characters, or a bad port.
    """
    check_token_value(token, "token")
    check_token_value(admin_token, "admin_token")
    check_exposure(host, token, admin_token, token_flag="token", admin_flag="admin_token")
    check_timings(lease_seconds, idle_seconds, break_minutes)
    if not 0 < int(port) < 65536:
        raise ValueError(f"port must be between 1 and 65535, got {port}")
    served_dir = served_folder(db_url, run_name, host, port)
    app_id = secrets.token_hex(16)
    _write_if_changed(served_dir / "rater_app.py", _SHIM)
    _write_if_changed(served_dir / "static" / APP_ID_FILE, app_id)
    command = [
        sys.executable, "-m", "streamlit", "run", str(served_dir / "rater_app.py"),
        "--server.address", host,
        "--server.port", str(int(port)),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--client.toolbarMode", "minimal",
        "--client.showErrorDetails", "none",
        "--server.enableStaticServing", "true",
        "--",
        "--run-name", run_name,
    ]
    if lease_seconds is not None:
        command += ["--lease-seconds", str(lease_seconds)]
    if idle_seconds is not None:
        command += ["--idle-seconds", str(idle_seconds)]
    if invite_only:
        command += ["--invite-only"]
    if break_minutes is not None:
        command += ["--break-minutes", str(break_minutes)]
    env = {k: v for k, v in os.environ.items() if k not in (ENV_DB_URL, ENV_TOKEN, ENV_ADMIN_TOKEN)}
    env[ENV_DB_URL] = db_url
    if token:
        env[ENV_TOKEN] = token
    if admin_token:
        env[ENV_ADMIN_TOKEN] = admin_token
    output = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL
    try:
        process = RaterAppProcess(command, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
    finally:
        if log_path is not None:
            output.close()  # the child holds its own copy of the descriptor
    process.app_id, process.served_dir = app_id, served_dir
    return process


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` in one step (a running app may read it at any moment)."""
    if not (path.is_file() and path.read_text() == text):
        write_atomic(path, text)


def app_url(host: str, port: int) -> str:
    """The URL to open for an app listening on ``host:port`` (all-interfaces -> this machine's
    loopback, IPv6 in brackets)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{int(port)}/"


def wait_until_ready(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Block until the Streamlit server at ``url`` answers its health check -- and, for a process
    from :func:`launch_rater_app`, serves that process's identity (another server answering on
    the port does not count).

    Raises:
        AppStartError: ``process`` exited first, or ``timeout`` seconds passed (the message says
            when another server was answering instead).
    """
    base = url.rstrip("/")
    app_id = getattr(process, "app_id", None)
    deadline = time.monotonic() + timeout
    foreign = False
    while True:
        if process is not None and process.poll() is not None:
            raise AppStartError(
                f"the rater app exited with code {process.returncode} before it was ready"
                + (" (another server answers on its port)" if foreign else "")
                + "; run it by hand to see why: streamlit run " + str(RATER_APP)
            )
        healthy = _get(base + "/_stcore/health") is not None
        if healthy and app_id is None:
            return
        if healthy:
            if _get(f"{base}/app/static/{APP_ID_FILE}") == app_id:
                return
            foreign = True
        if time.monotonic() > deadline:
            if foreign:
                raise AppStartError(f"another server answers at {url}, not this run's rater app; pass --port with a free port")
            raise AppStartError(f"the rater app at {url} did not answer within {timeout:.0f} s")
        time.sleep(0.2)


def _get(url: str) -> str | None:
    """The body of a 200 answer to GET ``url`` (at most 1 KiB), else None."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return response.read(1024).decode("utf-8", "replace").strip()
    except (urllib.error.URLError, OSError, ValueError):
        pass
    return None
