"""People in the rater app as a run's teacher: :class:`RaterApp`, a
:class:`~prefloop.teachers.base.StoreTeacher`.

``train(TrainConfig(env_id="CartPole-v1", labels=20, teacher=RaterApp(port=8501)))`` trains on the
answers of whoever opens http://127.0.0.1:8501/ -- what ``prefloop run`` does. The app (``prefloop
rate`` and its clip worker) runs in a child process watched by a
:class:`~prefloop.apps.supervise.RaterAppSupervisor`, started once the run's store exists and
stopped with the run. config.json records the run's teacher as ``"human"``, as it always did for
``prefloop run``, so ``prefloop run --resume`` and every reader of runs see a human run.
"""

from __future__ import annotations

import _thread
import operator
import os
import threading

from prefloop.apps.access import ENV_ADMIN_TOKEN, ENV_TOKEN, AppConfigError, check_exposure, check_token_value
from prefloop.apps.launch import check_port_free
from prefloop.apps.supervise import RaterAppSupervisor
from prefloop.credentials import ENV_DB_PASSWORD, url_password, url_without_password
from prefloop.teachers.simulated import HUMAN_TEACHER

__all__ = ["RaterApp", "RaterAppStoppedError"]


class RaterAppStoppedError(RuntimeError):
    """The rater app kept dying and its supervisor gave up; the message says how often and why."""


def _port_number(port: object) -> int:
    """``port`` as an int in 1..65535, else :class:`AppConfigError` (``-1`` would otherwise be
    reported as a bad host, and 70000 only once the app failed to start, three times)."""
    try:
        value = operator.index(port)  # an int (or numpy integer); not a float, a string or a bool
    except TypeError:
        value = None
    if value is None or isinstance(port, bool) or not 1 <= value <= 65535:
        raise AppConfigError(f"port must be a port number between 1 and 65535, got {port!r}: e.g. RaterApp(port=8501)")
    return value


class RaterApp:
    """The rater app, serving the run's pairs to people on ``host:port`` while the run trains.

    Args:
        host, port: where the app listens (anything but loopback needs both tokens).
        token: the access token raters must present (None: ``$PREFLOOP_RATER_TOKEN``, if set).
        admin_token: the token for the dashboard and the preferences download, different from
            ``token`` (None: ``$PREFLOOP_ADMIN_TOKEN``, if set).
        keep_up_after_run: the run's end (:meth:`stop`) leaves the app running, so that open pages
            show the result; the owner ends it with :meth:`close` (``prefloop run`` does, after its
            grace period or Ctrl-C). False: the app stops with the run.

    The settings are checked at once (:class:`prefloop.apps.access.AppConfigError`: a bad token or
    port number, a non-loopback host without both tokens; and
    :class:`prefloop.apps.launch.AppStartError` for a port another program holds), before any
    run starts. Tokens and a database password reach the app through its environment, never its
    command line (``ps`` shows those) nor config.json (which records ``"human"``).

    When the app dies for good (restarted ``MAX_APP_RESTARTS`` times), :attr:`failure` says why
    and the run is stopped: a trainer in the main thread is interrupted as by Ctrl-C, since it
    may be training the policy rather than waiting, and ``train`` raises
    :class:`RaterAppStoppedError` with the reason (not a bare ``KeyboardInterrupt``); one in another
    thread gets it from :meth:`check_alive` when it next waits for labels.
    """

    recorded_as = HUMAN_TEACHER

    def __init__(self, host: str = "127.0.0.1", port: int = 8501, token: str | None = None,
                 admin_token: str | None = None, *, keep_up_after_run: bool = False, _cli: bool = False) -> None:
        token = token if token is not None else os.environ.get(ENV_TOKEN)
        admin_token = admin_token if admin_token is not None else os.environ.get(ENV_ADMIN_TOKEN)
        # Refusals name what the caller passed: this class's arguments, or `prefloop run`'s options (_cli).
        token_name, admin_name = ("--token", "--admin-token") if _cli else ("token", "admin_token")
        check_token_value(token, token_name)
        check_token_value(admin_token, admin_name)
        check_exposure(host, token, admin_token, token_flag=token_name, admin_flag=admin_name)
        port = _port_number(port)
        check_port_free(host, port, from_python=not _cli)
        self.host, self.port, self.keep_up_after_run = host, port, keep_up_after_run
        self._token, self._admin_token = token, admin_token  # private: never in a repr or a file
        self.supervisor: RaterAppSupervisor | None = None
        self._interrupt_main = False

    def __repr__(self) -> str:
        return f"RaterApp(host={self.host!r}, port={self.port})"

    def start(self, store_url: str, run_name: str) -> None:
        """Start the app on the run's store (``prefloop rate`` in a child process, restarted when it
        dies); returns at once. The app prints its URL itself once it answers."""
        env = dict(os.environ)
        # Secrets travel in the environment, not on the command line, where `ps` shows them.
        if url_password(store_url):
            env[ENV_DB_PASSWORD] = url_password(store_url) or ""
        if self._token:
            env[ENV_TOKEN] = self._token
        if self._admin_token:
            env[ENV_ADMIN_TOKEN] = self._admin_token
        # Only the main thread can be interrupted (and only it gets Ctrl-C): elsewhere check_alive tells.
        self._interrupt_main = threading.current_thread() is threading.main_thread()
        self.supervisor = RaterAppSupervisor(
            ["--db-url", url_without_password(store_url), "--run-name", run_name, "--host", self.host, "--port", str(self.port)],
            env, on_give_up=self._gave_up,
        )
        self.supervisor.start()

    @property
    def started(self) -> bool:
        """Whether :meth:`start` was called (the app may have stopped since)."""
        return self.supervisor is not None

    def _gave_up(self, why: str) -> None:
        if self._interrupt_main:
            _thread.interrupt_main()

    def stop(self) -> None:
        """The run ended: stop the app, unless ``keep_up_after_run`` (then :meth:`close` does)."""
        if not self.keep_up_after_run:
            self.close()

    def close(self) -> None:
        """Stop the app, its clip worker and its web server, and wait until they are gone; idempotent."""
        if self.supervisor is not None:
            self.supervisor.stop()

    def check_alive(self) -> None:
        """Raise :class:`RaterAppStoppedError` once the supervisor gave up on the app."""
        if self.failure is not None:
            raise RaterAppStoppedError(self.failure)

    @property
    def failure(self) -> str | None:
        """Why the app was given up on (one line), or None."""
        return self.supervisor.failure if self.supervisor is not None else None

    def running(self) -> bool:
        """Whether the app's process is alive now."""
        return self.supervisor is not None and self.supervisor.running()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the app is closed or given up on, at most ``timeout`` seconds (None: no limit)."""
        if self.supervisor is not None:
            self.supervisor.wait(timeout)
