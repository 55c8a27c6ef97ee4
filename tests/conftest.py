"""Shared fixtures.

- ``store_url``: a fresh, empty database per test on each backend -- a SQLite file, and a database
  on a throwaway PostgreSQL server on 127.0.0.1 started once per session (``local_postgres``).
- ``rated_store``: a store of real CartPole pairs with real encoded clips, for the rater app.
  Rendering a clip replays its episode (a fraction of a second each), so the clips are rendered
  once per session into a template database and each test gets its own copy of that file.
"""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import socket
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefloop.envs import EnvSpec, SegmentBuffer, VecSegmentRecorder
from streamlit.testing.v1.util import patch_config_options

from prefloop.types import Segment, SegmentPair


# A shell starts a background job (`make test &`, nohup, some CI runners) with SIGINT ignored, and
# child processes inherit that: Ctrl-C tests then hang on a `prefloop run` that cannot hear SIGINT,
# and `_thread.interrupt_main()` does nothing. Python's own Ctrl-C handler, as in a terminal,
# puts SIGINT back to its default for the children too.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def local_postgres() -> Iterator[object]:
    """A throwaway PostgreSQL server for the whole session (see ``prefloop.ops.local_postgres``)."""
    from prefloop.ops.local_postgres import (
        PostgresUnavailableError,
        start_local_postgres,
    )

    try:
        server = start_local_postgres()
    except PostgresUnavailableError as exc:
        pytest.fail(f"{exc}; `make test` installs it", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh, empty database: a SQLite file, or a new PostgreSQL database."""
    from prefloop.store import sqlite_url

    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "prefs.sqlite")
        return
    with postgres_database(request) as url:
        yield url


@contextmanager
def postgres_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a new database on the session's PostgreSQL server, dropped afterwards."""
    server = request.getfixturevalue("local_postgres")
    name = f"test_{uuid.uuid4().hex[:20]}"
    url = server.create_database(name)
    try:
        yield url
    finally:
        server.drop_database(name)


@contextmanager
def backend_database(request: pytest.FixtureRequest, backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a new, empty database on ``backend`` ("sqlite" or "postgresql") that lives as
    long as the ``with`` block: for module-scoped stores (one database per backend for a module
    costs less than one per case)."""
    from prefloop.store import sqlite_url

    if backend == "sqlite":
        yield sqlite_url(tmp_path_factory.mktemp("db") / "prefs.sqlite")
        return
    with postgres_database(request) as url:
        yield url


RATED_RUN = "rated-run"
RATED_GUIDELINE = "Which cart keeps the pole upright longer?"
RATED_SEGMENTS = 5  # C(5, 2) = 10 pairs from 5 rendered clips
RATED_SEGMENT_LENGTH = 25


def cartpole_segments(n: int, segment_length: int = RATED_SEGMENT_LENGTH, seed: int = 0) -> list[Segment]:
    """``n`` real segments of random CartPole play (replayable, so their clips can be rendered)."""
    from prefloop.training.loop import build_vec_env, collect_random

    buffer = SegmentBuffer(10_000)
    recorder = VecSegmentRecorder(build_vec_env(EnvSpec("CartPole-v1"), 2, seed=seed), buffer, segment_length, seed=seed)
    steps = 200
    while len(buffer) < n:
        collect_random(recorder, steps, seed)
        steps *= 2
    return buffer.recent(n)


@dataclass(frozen=True)
class RatedStore:
    """A copy of the template store: ``url`` and ``run_name`` to open it; ``pair_ids`` in order."""

    path: Path
    url: str
    run_name: str
    pair_ids: list[int]


@pytest.fixture(scope="session")
def rated_store_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    from prefloop.apps.clipworker import ClipWorker

    from prefloop.store import PreferenceStore, sqlite_url

    path = tmp_path_factory.mktemp("rated") / "prefs.sqlite"
    url = sqlite_url(path)
    segments = cartpole_segments(RATED_SEGMENTS)
    with PreferenceStore(url, RATED_RUN) as store:
        store.set_meta("env_spec", json.dumps(EnvSpec("CartPole-v1").to_json()))
        store.set_meta("render_fps", "50.0")
        store.set_meta("guideline", RATED_GUIDELINE)
        pair_ids = store.add_pairs([SegmentPair(a, b) for a, b in itertools.combinations(segments, 2)])
    with ClipWorker(url, RATED_RUN) as worker:
        while worker.render_pending(8):
            pass
        assert worker.stats.rendered == RATED_SEGMENTS and worker.stats.failed == 0
    return path, pair_ids


@pytest.fixture
def rated_store(rated_store_template: tuple[Path, list[int]], tmp_path: Path) -> RatedStore:
    """A fresh copy (per test) of a store with 10 pending CartPole pairs, all clips rendered."""
    from prefloop.store import sqlite_url

    template, pair_ids = rated_store_template
    target = tmp_path / "prefs.sqlite"
    for suffix in ("", "-wal", "-shm"):
        source = template.with_name(template.name + suffix)
        if source.exists():
            shutil.copyfile(source, target.with_name(target.name + suffix))
    return RatedStore(target, sqlite_url(target), RATED_RUN, list(pair_ids))


@contextmanager
def app_served_on_loopback() -> Iterator[None]:
    """Run Streamlit AppTests as if served on 127.0.0.1; afterwards put back the ``__main__``
    module, which the script runner replaces with the app script (multiprocessing's spawn in later
    tests would re-run that script in its children otherwise)."""
    main_module = sys.modules["__main__"]
    try:
        with patch_config_options({"server.address": "127.0.0.1"}):
            yield
    finally:
        sys.modules["__main__"] = main_module


def free_port() -> int:
    """A loopback port free right now: tests never take 8501, which another program may hold."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The test files that take longest (seconds per file on one of the two xdist workers, from
# `pytest --durations=0`, 2026-12-02), run first. `make test` gives each file to one worker
# (--dist loadfile) in collection order (--no-loadscope-reorder; xdist would otherwise start with
# the files that hold the most tests, which are quick ones): a long file started last keeps one
# worker busy while the other idles. The rest keep their alphabetical order.
LONGEST_FILES_FIRST = (
    "test_rater_identity_browser.py",  # 90 s
    "test_extending.py",  # 78 s
    "test_bench.py",  # 66 s
    "test_app_browser.py",  # 64 s
    "test_run_command.py",  # 61 s
    "test_run_safety.py",  # 51 s
    "test_hostile_input.py",  # 32 s
    "test_background_fit.py",  # 29 s
    "test_observation_norm.py",  # 27 s
    "test_dict_goal.py",  # 24 s
    "test_pixels.py",  # 23 s
    "test_resume.py",  # 22 s
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: within a file, as written
