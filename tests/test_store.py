"""The preference store on real databases: round trips, leases, labels, refusal, concurrency.

Every store test runs twice, on a SQLite file and on a real PostgreSQL server (``store_url`` in
conftest.py gives a fresh database on each backend).
"""

from __future__ import annotations

import io
import multiprocessing
import queue
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from prefloop.serialization import array_from_bytes, array_to_bytes
from prefloop.store import (
    LeaseError,
    NoSuchRunError,
    NoSuchStoreError,
    NotAPreferenceStoreError,
    PreferenceStore,
    StoreError,
    sqlite_url,
)
from prefloop.types import Choice, Segment, SegmentPair

L = 6


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def make_segment(
    rng: np.random.Generator,
    *,
    discrete: bool = True,
    n_valid: int = L,
    start_step: int = 4,
    env_step: int = 0,
) -> Segment:
    terminated = n_valid < L
    obs = rng.normal(size=(L, 3)).astype(np.float32)
    if discrete:
        actions = rng.integers(0, 2, size=L).astype(np.int64)
        episode_actions = rng.integers(0, 2, size=start_step + n_valid).astype(np.int64)
    else:
        actions = rng.uniform(-1, 1, size=(L, 2)).astype(np.float32)
        episode_actions = rng.uniform(-1, 1, size=(start_step + n_valid, 2)).astype(np.float32)
    rewards = rng.normal(size=L).astype(np.float32)
    obs[n_valid:] = 0.0
    actions[n_valid:] = 0
    rewards[n_valid:] = 0.0
    return Segment(
        obs=obs,
        actions=actions,
        true_rewards=rewards,
        n_valid=n_valid,
        terminated=terminated,
        episode_seed=int(rng.integers(0, 2**31)),
        start_step=start_step,
        episode_actions=episode_actions,
        env_step=env_step,
    )


def make_pairs(n: int, seed: int = 0) -> list[SegmentPair]:
    rng = np.random.default_rng(seed)
    return [
        SegmentPair(make_segment(rng), make_segment(rng), score=float(i)) for i in range(n)
    ]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(store_url: str, clock: FakeClock):
    with PreferenceStore(store_url, "run-a", clock=clock) as opened:
        yield opened


def raw_sql(url: str, statement: str, **params) -> list[tuple]:
    """Run one SQL statement outside the store (as another program would) and commit it."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


def assert_same_segment(got: Segment, want: Segment) -> None:
    for name in ("obs", "actions", "true_rewards", "episode_actions"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype, name
        assert a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert (got.n_valid, got.terminated, got.episode_seed, got.start_step, got.env_step) == (
        want.n_valid,
        want.terminated,
        want.episode_seed,
        want.start_step,
        want.env_step,
    )
    assert got.id == want.id


def test_segments_round_trip_with_exact_arrays_dtypes_and_ids(store: PreferenceStore) -> None:
    rng = np.random.default_rng(1)
    discrete = make_segment(rng, env_step=123)
    box_terminated = make_segment(rng, discrete=False, n_valid=3, start_step=0)

    ids = store.add_segments([discrete, box_terminated])

    assert ids == [discrete.id, box_terminated.id]
    assert len(set(ids)) == 2
    loaded = store.get_segments([ids[1], ids[0], ids[1]])
    assert_same_segment(loaded[0], box_terminated)
    assert_same_segment(loaded[1], discrete)
    assert_same_segment(loaded[2], box_terminated)
    assert loaded[1].actions.dtype == np.int64
    assert loaded[0].actions.dtype == np.float32 and loaded[0].actions.shape == (L, 2)
    assert loaded[0].terminated and loaded[0].n_valid == 3
    np.testing.assert_array_equal(loaded[0].valid_mask, [1, 1, 1, 0, 0, 0])

    with pytest.raises(StoreError, match="already saved"):
        store.add_segments([discrete])
    with pytest.raises(StoreError, match="not segments of run"):
        store.get_segments([ids[0], 999])


def test_malformed_segment_is_refused_before_anything_is_written(store: PreferenceStore) -> None:
    rng = np.random.default_rng(2)
    good = make_segment(rng)
    bad = make_segment(rng)
    bad.episode_actions = bad.episode_actions[:-1]
    with pytest.raises(StoreError, match="episode_actions"):
        store.add_segments([good, bad])
    cut = make_segment(rng)
    cut.n_valid = 3  # shorter than L without termination
    with pytest.raises(StoreError, match="terminated"):
        store.add_pairs([SegmentPair(good, cut)])
    assert store.counts()["segments"] == 0
    assert good.id is None


def test_add_pairs_claim_answer_and_counts(store: PreferenceStore) -> None:
    pairs = make_pairs(3)
    shared = pairs[0].left
    pairs.append(SegmentPair(shared, pairs[1].right, score=9.0))  # reuses two segments

    pair_ids = store.add_pairs(pairs)

    assert pair_ids == [p.id for p in pairs] and pair_ids == sorted(pair_ids)
    assert store.counts() == {
        "segments": 6,
        "pairs": 4,
        "pending": 4,
        "claimed": 0,
        "answered": 0,
        "withdrawn": 0,
        "labels": 0,
        "cant_tell": 0,
    }
    claimed = store.claim_next("alice")
    assert claimed is not None and claimed.id == pair_ids[0]  # oldest first
    assert_same_segment(claimed.left, pairs[0].left)
    assert_same_segment(claimed.right, pairs[0].right)
    assert store.counts()["claimed"] == 1

    label = store.answer(claimed.id, "alice", Choice.RIGHT, response_time_s=2.5)

    assert (label.pair_id, label.rater_id, label.choice, label.response_time_s) == (
        claimed.id,
        "alice",
        Choice.RIGHT,
        2.5,
    )
    assert label.id is not None
    counts = store.counts()
    assert (counts["pending"], counts["claimed"], counts["answered"], counts["labels"]) == (
        3,
        0,
        1,
        1,
    )
    assert [lab.id for lab in store.labels()] == [label.id]
    assert store.claim_next("alice").id == pair_ids[1]


def test_two_raters_never_get_the_same_pair(store: PreferenceStore) -> None:
    pair_ids = store.add_pairs(make_pairs(7))
    got: dict[str, list[int]] = {"alice": [], "bob": []}
    while True:
        held = {rater: store.claim_next(rater) for rater in got}
        if all(pair is None for pair in held.values()):
            break
        for rater, pair in held.items():
            if pair is not None:
                assert store.claim_next(rater).id == pair.id  # a refreshed tab: same pair
                got[rater].append(pair.id)
        for rater, pair in held.items():
            if pair is not None:
                store.answer(pair.id, rater, Choice.LEFT, 1.0)
    assert not set(got["alice"]) & set(got["bob"])
    assert sorted(got["alice"] + got["bob"]) == pair_ids
    assert len(got["alice"]) == 4 and len(got["bob"]) == 3


def test_held_pairs_are_not_handed_to_another_rater(store: PreferenceStore) -> None:
    a, b = store.add_pairs(make_pairs(2))
    assert store.claim_next("alice").id == a
    assert store.claim_next("bob").id == b
    assert store.claim_next("carol") is None


def test_a_pair_locked_by_another_transaction_is_waited_for_not_reported_missing(
    store: PreferenceStore, store_url: str
) -> None:
    """None from claim_next means "nothing left", even while another transaction (a rater
    answering, an admin script) holds the last pair's row: the claim waits for it instead."""
    (pair_id,) = store.add_pairs(make_pairs(1))
    engine = create_engine(store_url)
    results: queue.Queue = queue.Queue()
    try:
        with engine.connect() as conn:
            if store_url.startswith("sqlite"):
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # SQLite locks the whole file
            else:
                conn.begin()
                conn.execute(text("SELECT id FROM pairs FOR UPDATE"))
            waiter = threading.Thread(target=lambda: results.put(store.claim_next("alice")))
            waiter.start()
            waiter.join(timeout=0.5)  # give it the chance to (wrongly) answer None while locked
            conn.rollback()
        waiter.join(timeout=60)
    finally:
        engine.dispose()
    claimed = results.get(timeout=1)
    assert claimed is not None and claimed.id == pair_id


def test_expired_lease_returns_pair_and_late_answer_is_rejected(
    store: PreferenceStore, clock: FakeClock
) -> None:
    (pair_id,) = store.add_pairs(make_pairs(1))
    assert store.claim_next("alice", lease_seconds=60).id == pair_id
    assert store.claim_next("bob") is None

    clock.now += 61
    taken = store.claim_next("bob")

    assert taken is not None and taken.id == pair_id
    with pytest.raises(LeaseError, match="leased to another rater"):
        store.answer(pair_id, "alice", Choice.LEFT, 3.0)
    store.answer(pair_id, "bob", Choice.RIGHT, 1.0)
    with pytest.raises(LeaseError, match="already completed"):
        store.answer(pair_id, "alice", Choice.LEFT, 3.0)
    assert [(lab.rater_id, lab.choice) for lab in store.labels()] == [("bob", Choice.RIGHT)]


def test_late_answer_is_accepted_while_nobody_else_claimed_the_pair(
    store: PreferenceStore, clock: FakeClock
) -> None:
    (pair_id,) = store.add_pairs(make_pairs(1))
    store.claim_next("alice", lease_seconds=10)
    clock.now += 3600
    label = store.answer(pair_id, "alice", Choice.EQUAL, 3600.0)
    assert label.choice is Choice.EQUAL
    assert store.counts()["answered"] == 1


def test_answering_a_pair_never_claimed_is_a_lease_error(store: PreferenceStore) -> None:
    (pair_id,) = store.add_pairs(make_pairs(1))
    with pytest.raises(LeaseError, match="claim_next"):
        store.answer(pair_id, "alice", Choice.LEFT, 1.0)
    with pytest.raises(StoreError, match="does not exist"):
        store.answer(pair_id + 100, "alice", Choice.LEFT, 1.0)


def test_double_submit_counts_once(store: PreferenceStore) -> None:
    (pair_id,) = store.add_pairs(make_pairs(1), labels_per_pair=2)
    store.claim_next("alice")
    first = store.answer(pair_id, "alice", Choice.LEFT, 1.0)
    second = store.answer(pair_id, "alice", Choice.RIGHT, 1.5)  # same form submitted again
    assert second == first
    assert len(store.labels(include_retracted=True)) == 1
    assert store.counts()["labels"] == 1
    assert store.counts()["pending"] == 1  # still needs a second, different rater


def test_release_gives_the_pair_back(store: PreferenceStore) -> None:
    first, second = store.add_pairs(make_pairs(2))
    assert store.claim_next("alice").id == first
    store.release(first, "alice")
    store.release(first, "alice")  # a second click changes nothing
    assert store.counts()["claimed"] == 0
    assert store.claim_next("alice", exclude=[first]).id == second  # "skip"
    assert store.claim_next("bob").id == first
    store.release(first, "alice")  # not alice's any more: a no-op
    with pytest.raises(LeaseError):
        store.answer(first, "alice", Choice.LEFT, 1.0)
    with pytest.raises(StoreError, match="does not exist"):
        store.release(12345, "alice")


def test_undo_retracts_without_deleting_and_lets_the_rater_answer_again(
    store: PreferenceStore, store_url: str, clock: FakeClock
) -> None:
    first, second = store.add_pairs(make_pairs(2))
    store.claim_next("alice")
    wrong = store.answer(first, "alice", Choice.LEFT, 1.0)
    assert store.claim_next("alice").id == second  # moved on to the next pair
    clock.now += 5

    undone = store.undo_last("alice")

    assert undone is not None and undone.id == wrong.id and undone.choice is Choice.LEFT
    assert store.labels() == []
    assert [lab.id for lab in store.labels(include_retracted=True)] == [wrong.id]
    assert raw_sql(store_url, "SELECT retracted_at FROM labels") == [(clock.now,)]
    assert store.counts()["answered"] == 0
    assert store.claim_next("alice").id == first  # the undone pair comes back first

    fixed = store.answer(first, "alice", Choice.RIGHT, 2.0)

    assert fixed.id != wrong.id
    assert [(lab.id, lab.choice) for lab in store.labels()] == [(fixed.id, Choice.RIGHT)]
    assert len(store.labels(include_retracted=True)) == 2
    assert [lp.target for lp in store.labeled_pairs()] == [1.0]
    assert store.claim_next("alice").id == second  # still held
    assert store.undo_last("bob") is None


def test_the_database_itself_refuses_a_second_live_label(
    store: PreferenceStore, store_url: str
) -> None:
    (pair_id,) = store.add_pairs(make_pairs(1))
    store.claim_next("alice")
    store.answer(pair_id, "alice", Choice.LEFT, 1.0)
    insert = (
        "INSERT INTO labels (pair_id, rater_id, choice, response_time_s, created_at) "
        "VALUES (:pair, 'alice', 'right', 1.0, 0.0)"
    )
    with pytest.raises(IntegrityError):
        raw_sql(store_url, insert, pair=pair_id)
    raw_sql(store_url, "UPDATE labels SET retracted_at = 1.0")
    raw_sql(store_url, insert, pair=pair_id)  # allowed once the first is retracted
    assert len(store.labels(include_retracted=True)) == 2 and store.labels() != []


def test_labels_per_pair_two_needs_two_different_raters(store: PreferenceStore) -> None:
    (pair_id,) = store.add_pairs(make_pairs(1), labels_per_pair=2)
    store.claim_next("alice")
    store.answer(pair_id, "alice", Choice.LEFT, 1.0)
    assert store.counts()["pending"] == 1
    assert store.claim_next("alice") is None  # alice already labelled it

    assert store.claim_next("bob").id == pair_id
    store.answer(pair_id, "bob", Choice.LEFT, 1.0)

    assert store.counts()["answered"] == 1
    assert store.claim_next("carol") is None
    assert sorted(lab.rater_id for lab in store.labels()) == ["alice", "bob"]


def answer_next(store: PreferenceStore, rater: str, choice: Choice) -> int:
    pair = store.claim_next(rater)
    assert pair is not None
    store.answer(pair.id, rater, choice, 1.0)
    return pair.id


def test_labeled_pairs_targets_are_label_means_without_cant_tell(store: PreferenceStore) -> None:
    pairs = make_pairs(5)
    ids = store.add_pairs(pairs[:2], labels_per_pair=1, gold_choice=Choice.LEFT)
    ids += store.add_pairs(pairs[2:4], labels_per_pair=2, gold_choice="left")
    ids += store.add_pairs(pairs[4:], labels_per_pair=1)
    alice = [Choice.LEFT, Choice.EQUAL, Choice.LEFT, Choice.RIGHT, Choice.CANT_TELL]
    assert [answer_next(store, "alice", choice) for choice in alice] == ids  # oldest first
    assert answer_next(store, "bob", Choice.RIGHT) == ids[2]
    assert answer_next(store, "bob", Choice.CANT_TELL) == ids[3]
    assert store.claim_next("bob") is None

    labeled = store.labeled_pairs()

    assert [(lp.pair_id, lp.target, lp.extra["n_labels"]) for lp in labeled] == [
        (ids[0], 0.0, 1),  # left
        (ids[1], 0.5, 1),  # tie
        (ids[2], 0.5, 2),  # left + right: the mean
        (ids[3], 1.0, 1),  # right; cant_tell does not count
    ]  # ids[4] has only cant_tell
    assert all(lp.extra["gold_choice"] is Choice.LEFT for lp in labeled)
    assert_same_segment(labeled[2].left, pairs[2].left)
    assert_same_segment(labeled[2].right, pairs[2].right)
    counts = store.counts()
    assert (counts["labels"], counts["cant_tell"], counts["answered"]) == (7, 2, 5)


def test_reopening_the_store_keeps_everything(store_url: str, clock: FakeClock) -> None:
    url = store_url
    with PreferenceStore(url, "run-a", clock=clock) as store:
        first, second = store.add_pairs(make_pairs(2))
        store.claim_next("alice")
        store.answer(first, "alice", Choice.RIGHT, 1.0)
        held = store.claim_next("alice")
        store.set_meta("config", '{"env": "CartPole-v1"}')
        before = (store.counts(), store.labels(), store.labeled_pairs())

    with PreferenceStore(url, "run-a", clock=clock) as store:
        assert store.counts() == before[0]
        assert store.labels() == before[1]
        (labeled,) = store.labeled_pairs()
        assert (labeled.pair_id, labeled.target) == (first, 1.0)
        assert_same_segment(labeled.left, before[2][0].left)
        assert store.get_meta("config") == '{"env": "CartPole-v1"}'
        assert store.get_meta("missing") is None
        assert store.claim_next("alice").id == held.id == second

    with PreferenceStore(url, "run-b", clock=clock) as other_run:  # same file, separate run
        assert other_run.counts()["pairs"] == 0
        assert other_run.get_meta("config") is None


def test_other_schema_version_is_refused(store_url: str) -> None:
    PreferenceStore(store_url).close()
    raw_sql(store_url, "UPDATE prefloop_meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version"):
        PreferenceStore(store_url)


def test_a_database_of_another_application_is_refused_and_left_alone(store_url: str) -> None:
    raw_sql(store_url, "CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    raw_sql(store_url, "INSERT INTO invoices (id, total) VALUES (1, 9.5)")
    with pytest.raises(NotAPreferenceStoreError, match="another application"):
        PreferenceStore(store_url)
    assert raw_sql(store_url, "SELECT id, total FROM invoices") == [(1, 9.5)]
    engine = create_engine(store_url)
    try:
        assert inspect(engine).get_table_names() == ["invoices"]  # nothing of prefloop's added
    finally:
        engine.dispose()


def _write_garbage(path: Path) -> None:
    path.write_bytes(b"this is a results table, not a database\n" * 100)


def _write_foreign_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        raw.execute("INSERT INTO invoices (total) VALUES (9.5)")
    raw.close()


def _write_corrupt_sqlite(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 20)


@pytest.mark.parametrize("make_file", [_write_garbage, _write_foreign_sqlite, _write_corrupt_sqlite])
def test_files_that_are_not_a_store_are_refused_and_left_untouched(
    tmp_path: Path, make_file
) -> None:
    path = tmp_path / "not-a-store.sqlite"
    make_file(path)
    before = path.read_bytes()

    with pytest.raises(NotAPreferenceStoreError, match="untouched"):
        PreferenceStore(sqlite_url(path))

    assert path.read_bytes() == before


def test_bad_arguments_raise_store_errors_naming_the_problem(
    store: PreferenceStore, tmp_path: Path
) -> None:
    (pair_id,) = store.add_pairs(make_pairs(1))
    store.claim_next("alice")
    with pytest.raises(StoreError, match="rater_id"):
        store.answer(pair_id, "", Choice.LEFT, 1.0)
    with pytest.raises(StoreError, match="at most 200"):
        store.claim_next("x" * 201)
    with pytest.raises(StoreError, match="response_time_s"):
        store.answer(pair_id, "alice", Choice.LEFT, float("nan"))
    with pytest.raises(StoreError, match="response_time_s"):
        store.answer(pair_id, "alice", Choice.LEFT, -1.0)
    with pytest.raises(StoreError, match="choice"):
        store.answer(pair_id, "alice", "maybe", 1.0)
    with pytest.raises(StoreError, match="labels_per_pair"):
        store.add_pairs(make_pairs(1, seed=3), labels_per_pair=0)
    with pytest.raises(StoreError, match="folder"):
        PreferenceStore(sqlite_url(tmp_path / "missing-run-folder" / "prefs.sqlite"))
    assert store.counts()["labels"] == 0
    assert store.answer(pair_id, "alice", "left", 0.0).choice is Choice.LEFT


# --- many processes on one database -----------------------------------------------------------


def _rater_process(url: str, run_name: str, rater: str, barrier, results) -> None:
    """Claim and answer until the queue is empty; submit every third answer twice."""
    store = PreferenceStore(url, run_name)
    answered: list[tuple[int, int]] = []
    barrier.wait(timeout=60)
    while (pair := store.claim_next(rater)) is not None:
        label = store.answer(pair.id, rater, Choice.LEFT, 0.1)
        if len(answered) % 3 == 0:
            assert store.answer(pair.id, rater, Choice.RIGHT, 0.1) == label
        answered.append((pair.id, label.id))
    store.close()
    results.put((rater, answered))


def check_four_processes_answer_every_pair_exactly_once(url: str, run_name: str) -> None:
    n_pairs = 60
    with PreferenceStore(url, run_name) as store:
        pair_ids = store.add_pairs(make_pairs(n_pairs))

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    workers = [
        ctx.Process(target=_rater_process, args=(url, run_name, f"rater-{i}", barrier, results))
        for i in range(4)
    ]
    for worker in workers:
        worker.start()
    reported: dict[str, list[tuple[int, int]]] = {}
    try:
        while len(reported) < len(workers):
            try:
                rater, answered = results.get(timeout=1)
                reported[rater] = answered
            except queue.Empty:
                crashed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
                assert not crashed, f"a rater process failed (exit codes {crashed}), see stderr"
        for worker in workers:
            worker.join(timeout=60)
            assert worker.exitcode == 0
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()

    returned = [item for answered in reported.values() for item in answered]
    with PreferenceStore(url, run_name) as store:
        stored = store.labels(include_retracted=True)
        counts = store.counts()
    assert sorted(pair for pair, _ in returned) == pair_ids  # each pair answered exactly once
    assert sorted(label_id for _, label_id in returned) == sorted(lab.id for lab in stored)
    assert len({lab.pair_id for lab in stored}) == len(stored) == n_pairs
    assert counts["answered"] == n_pairs and counts["labels"] == n_pairs
    for rater, answered in reported.items():
        assert {lab.pair_id for lab in stored if lab.rater_id == rater} == {p for p, _ in answered}


def test_four_processes_answer_every_pair_exactly_once(store_url: str) -> None:
    check_four_processes_answer_every_pair_exactly_once(store_url, "run-a")


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.int64).reshape(3, 4),
        np.linspace(0, 1, 10, dtype=np.float32).reshape(5, 2)[:, ::-1],  # not contiguous
        np.array([1.5, -2.0], dtype=">f8"),  # big-endian
        np.zeros((0, 3), dtype=np.float32),
        np.array(True),
    ],
)
def test_array_bytes_round_trip_is_exact(array: np.ndarray) -> None:
    back = array_from_bytes(array_to_bytes(array))
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_arrays_needing_pickle_are_refused() -> None:
    with pytest.raises(ValueError, match="pickle"):
        array_to_bytes(np.array([{"a": 1}], dtype=object))
    pickled = io.BytesIO()
    np.save(pickled, np.array([None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickle-free"):
        array_from_bytes(pickled.getvalue())


def test_a_second_store_on_the_same_file_in_one_process_loses_no_committed_write(tmp_path) -> None:
    """The trainer and its simulated rater (or the app's sessions) open one SQLite file twice in
    a process while another process opens and closes it: every committed write stays visible.
    (Reading the file's header with a plain open() dropped the process's SQLite locks; the other
    process's close then deleted the WAL still being written to.)"""
    import subprocess
    import sys

    from prefloop.store import PreferenceStore, sqlite_url

    url = sqlite_url(tmp_path / "prefs.sqlite")
    first = PreferenceStore(url, "run")
    first.set_meta("n", "1")
    second = PreferenceStore(url, "run")  # the same file, again, in this process
    subprocess.run([sys.executable, "-c", f"from prefloop.store import PreferenceStore; PreferenceStore({url!r}, 'run').close()"],
                   check=True)
    first.set_meta("n", "2")
    fresh = subprocess.run(
        [sys.executable, "-c", f"from prefloop.store import PreferenceStore; print(PreferenceStore({url!r}, 'run').get_meta('n'))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    second.close()
    first.close()
    assert fresh == "2"


def test_the_split_store_keeps_its_public_face() -> None:
    """The store is a package of one module per concern; code written against the one-module store
    keeps working: the same names import from ``prefloop.store`` and the class keeps its methods."""
    import prefloop.store as store_package

    names = {
        "ANSWERED", "APP_MARKER", "CLAIMED", "CLAIM_ATTEMPTS", "MAX_CLIP_ERROR_CHARS", "MAX_META_KEY_CHARS",
        "MAX_MIME_CHARS", "MAX_RATER_ID_CHARS", "META_TABLE", "PENDING", "SCHEMA_VERSION", "SQLITE_BUSY_TIMEOUT_S",
        "WITHDRAWN", "LeaseError", "NoSuchRunError", "NoSuchStoreError", "NotAPreferenceStoreError",
        "PreferenceStore", "StoreBusyError", "StoreError", "StoreReadOnlyError", "check_store_url", "clips_table",
        "is_retryable_conflict", "label_flags_table", "labels_table", "meta_table", "metadata",
        "open_sqlite_read_only", "pairs_table", "raters_table", "read_only_error", "run_meta_table", "runs_table",
        "segments_table", "sqlite_url", "store_open_error", "store_problem_kind", "wait_limit_args",
        # private, but imported by prefloop.datasets
        "_check_rater", "_segment_from_row", "_validate_segment",
    }
    assert not sorted(n for n in names if not hasattr(store_package, n))
    methods = {
        "add_pairs", "add_rater", "add_segments", "answer", "claim_next", "clip_errors", "close",
        "count_labels_since", "counts", "flag_label", "get_clip", "get_clips", "get_meta", "get_pair",
        "get_segments", "gold_pairs", "label_flags", "labeled_pairs", "labels", "pairs_missing_clips", "put_clip",
        "put_clip_error", "rater", "rater_ids", "raters", "read_transaction", "release", "run_id", "run_name",
        "segments_needing_clips", "set_meta", "set_onboarded", "undo_last", "url", "withdraw_unanswered",
        "write_transaction",
    }
    assert methods <= set(dir(PreferenceStore))
    assert PreferenceStore.__module__ == "prefloop.store"


def _run_names(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return sorted(row[0] for row in conn.execute(text("SELECT name FROM runs")))
    finally:
        engine.dispose()


def test_create_run_false_refuses_a_run_the_store_lacks_and_creates_nothing(store_url: str) -> None:
    # What serves or reads a run (rate, raters, the clip worker) must never make an empty one
    # out of a misspelt --run-name: people would rate a run no trainer reads.
    PreferenceStore(store_url, "human1").close()
    with pytest.raises(NoSuchRunError, match=r"no run 'nop' in .*; it holds: 'human1'\. Check --run-name"):
        PreferenceStore(store_url, "nop", create_run=False)
    assert _run_names(store_url) == ["human1"]
    with PreferenceStore(store_url, "human1", create_run=False) as store:  # an existing run: read and written
        store.set_meta("k", "v")
        assert store.get_meta("k") == "v"


def test_create_run_false_creates_no_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "prefs.sqlite"
    with pytest.raises(NoSuchStoreError):
        PreferenceStore(sqlite_url(path), "nop", create_run=False)
    assert not path.exists()
