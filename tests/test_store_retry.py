"""``claim_next`` runs again when PostgreSQL aborts it as a deadlock victim or a serialization
failure, and only then; on both backends with a real store."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError
from test_store import make_pairs

from prefloop.store import queue as store_queue  # claim_next's module: its retry pause
from prefloop.store import CLAIM_ATTEMPTS, PreferenceStore, is_retryable_conflict


class PgError(Exception):
    """What psycopg raises: the SQLSTATE in ``sqlstate`` (psycopg 3) or ``pgcode`` (psycopg2)."""

    def __init__(self, message: str, sqlstate: str | None = None, pgcode: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.pgcode = pgcode


def pg_failure(**code: str) -> OperationalError:
    return OperationalError("UPDATE pairs SET status=...", {}, PgError("aborted", **code))


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(store_queue.time, "sleep", slept.append)
    return slept


@pytest.mark.parametrize("code", [{"sqlstate": "40P01"}, {"pgcode": "40P01"}, {"sqlstate": "40001"}])
def test_a_deadlock_victim_claims_again_and_gets_the_pair(
    store_url: str, monkeypatch: pytest.MonkeyPatch, no_sleep: list[float], code: dict
) -> None:
    with PreferenceStore(store_url, "run") as store:
        first, _ = store.add_pairs(make_pairs(2))
        real = PreferenceStore._claim_next_once
        calls: list[tuple] = []

        def deadlocked_once(self, *args):
            calls.append(args)
            if len(calls) == 1:
                raise pg_failure(**code)
            return real(self, *args)

        monkeypatch.setattr(PreferenceStore, "_claim_next_once", deadlocked_once)
        pair = store.claim_next("ada", 60.0)
        assert pair is not None and pair.id == first
        assert len(calls) == 2 and len(no_sleep) == 1 and 0 < no_sleep[0] < 0.1
        assert store.counts()["claimed"] == 1  # one lease, not two


def test_other_errors_and_endless_conflicts_are_raised(
    store_url: str, monkeypatch: pytest.MonkeyPatch, no_sleep: list[float]
) -> None:
    with PreferenceStore(store_url, "run") as store:
        store.add_pairs(make_pairs(1))
        failures = iter([pg_failure(sqlstate="57014")])  # query_canceled: not a conflict

        def fail(self, *args):
            raise next(failures)

        monkeypatch.setattr(PreferenceStore, "_claim_next_once", fail)
        with pytest.raises(OperationalError):
            store.claim_next("ada")
        assert no_sleep == []

        attempts: list[int] = []

        def always_deadlocked(self, *args):
            attempts.append(1)
            raise pg_failure(sqlstate="40P01")

        monkeypatch.setattr(PreferenceStore, "_claim_next_once", always_deadlocked)
        with pytest.raises(OperationalError):
            store.claim_next("ada")
        assert len(attempts) == CLAIM_ATTEMPTS and len(no_sleep) == CLAIM_ATTEMPTS - 1
        monkeypatch.undo()
        assert store.claim_next("ada") is not None and store.counts()["claimed"] == 1


def test_which_errors_are_conflicts() -> None:
    assert is_retryable_conflict(pg_failure(sqlstate="40P01"))
    assert is_retryable_conflict(pg_failure(pgcode="40001"))
    assert not is_retryable_conflict(pg_failure(sqlstate="23505"))  # unique violation
    assert not is_retryable_conflict(OperationalError("BEGIN", {}, Exception("database is locked")))
