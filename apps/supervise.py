"""Keeping a run's rater app (and its clip worker) alive beside the trainer of ``prefloop run``.

The app runs as ``prefloop rate`` in a child process: the trainer's process stays free for
training, and the clip worker renders in the child. The child gets a process group of its own, so
a Ctrl-C in the terminal reaches the trainer only, and stopping the group ends the child and its
Streamlit server together -- no orphan keeps the port. The child also watches the trainer's
process id and stops when the trainer is gone, even when it was killed outright.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

MAX_APP_RESTARTS = 3
WATCH_S = 0.5
STOP_TIMEOUT_S = 15.0
# After training, without a terminal to keep the app up: long enough for open rater pages (which
# look every few seconds) to show that the run is complete and its result.
RESULT_GRACE_S = 10.0


class RaterAppSupervisor:
    """Runs ``prefloop rate ARGS`` for one run and restarts it (a bounded number of times) when it
    dies; gives up with a message when it keeps dying.

    Args:
        rate_args: the arguments after ``prefloop rate`` (the run's store, host, port).
        env: the child's environment (tokens travel there, never on its command line).
        on_give_up: called from the watching thread with one line saying why, once the app died
            ``max_restarts + 1`` times (``prefloop run`` then stops the run).
        max_restarts: restarts before giving up.
        announce: where the lines about a dead app go (the trainer's terminal).
    """

    def __init__(
        self,
        rate_args: Sequence[str],
        env: Mapping[str, str],
        on_give_up: Callable[[str], None],
        *,
        max_restarts: int = MAX_APP_RESTARTS,
        announce: Callable[[str], None] | None = None,
    ) -> None:
        self.command = [sys.executable, "-m", "prefloop.cli", "rate", *rate_args, "--parent-pid", str(os.getpid())]
        self.env = dict(env)
        self.on_give_up = on_give_up
        self.max_restarts = max_restarts
        self.announce = announce or (lambda line: print(line, file=sys.stderr, flush=True))
        self.restarts = 0
        self.failure: str | None = None  # set when the supervisor gave up
        self.process: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        """Start the app and the thread that watches it."""
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="rater-app-watch", daemon=True)
        self._watcher.start()

    def _spawn(self) -> None:
        with self._lock:
            if not self._stopping.is_set():
                self.process = subprocess.Popen(self.command, env=self.env, stdin=subprocess.DEVNULL, start_new_session=True)

    def _watch(self) -> None:
        while not self._stopping.wait(WATCH_S):
            process = self.process
            if process is None or process.poll() is None:
                continue
            if self._stopping.is_set():
                return
            _end_group(process)  # whatever it left behind (its Streamlit server) goes with it
            if self.restarts >= self.max_restarts:
                self.failure = (
                    f"the rater app stopped {self.restarts + 1} times (last exit code {process.returncode}); "
                    "stopping the run -- see the lines above for why"
                )
                self.on_give_up(self.failure)
                return
            self.restarts += 1
            self.announce(
                f"prefloop: the rater app stopped (exit code {process.returncode}); restarting it "
                f"({self.restarts} of {self.max_restarts}) -- raters reload their page"
            )
            self._spawn()

    def running(self) -> bool:
        """True while the app's process is alive."""
        return self.process is not None and self.process.poll() is None

    def wait(self, timeout: float | None = None) -> None:
        """Block until the supervisor stops (``stop``, or it gave up), at most ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stopping.is_set() and self.failure is None:
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(min(WATCH_S, timeout or WATCH_S))

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the app, its worker and its Streamlit server (the whole process group) and wait
        until they are gone, SIGKILL after ``timeout`` seconds."""
        with self._lock:
            self._stopping.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=WATCH_S * 4)
        if self.process is not None:
            _end_group(self.process, timeout)


def _end_group(process: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to the process group led by ``process``, wait, then SIGKILL what is left."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + timeout
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    # The group outlives its leader if a member (Streamlit) is still shutting down.
    while time.monotonic() < deadline and _group_alive(process.pid):
        time.sleep(0.1)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if process.poll() is None:
        process.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
