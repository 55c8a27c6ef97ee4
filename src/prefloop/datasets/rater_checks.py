"""Rater checks in a dataset: read from a run for export, checked on loading, written on import.

A check (:mod:`prefloop.store.rater_checks`) is a pair asked of a rater only to measure them: a
gold pair, or one of their own earlier pairs shown swapped. Checks are not labels and never train
the reward model, but they are the evidence behind each rater's reliability estimate, so a copy of
a run carries every one of them: answered ones, and open ones (served, not answered; ``choice``
null), whose answer was never given or was undone. The checks file is ``checks.jsonl`` (or
``checks.parquet``); an export from before checks existed has none and loads with no checks.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, inspect, select
from sqlalchemy.engine import Connection

from prefloop.datasets.format import (
    CHECKS_JSONL,
    PAIRS_JSONL,
    DatasetCheck,
    DatasetError,
    DatasetPair,
)
from prefloop.datasets.records import Fields
from prefloop.store import rater_checks_table
from prefloop.store.schema import CHECK_KINDS
from prefloop.types import Choice
from prefloop.untrusted import excerpt


def read_check_rows(conn: Connection, run_id: int) -> list[Any]:
    """The run's check rows by id ([] for a store from before checks, opened read-only)."""
    g = rater_checks_table
    if not inspect(conn).has_table(g.name):
        return []
    return list(conn.execute(select(g).where(g.c.run_id == run_id).order_by(g.c.id)).all())


def check_lines(rows: list[Any]) -> list[dict[str, Any]]:
    """The records of ``checks.jsonl`` from the store's rows (plain JSON values)."""

    def seconds(value: float | None) -> float | None:
        return None if value is None else float(value)

    return [
        {
            "id": int(row.id),
            "pair_id": int(row.pair_id),
            "rater_id": row.rater_id,
            "kind": row.kind,
            "swapped": bool(row.swapped),
            "expected": row.expected,
            "choice": row.choice,
            "response_time_s": seconds(row.response_time_s),
            "served_at": float(row.served_at),
            "answered_at": seconds(row.answered_at),
        }
        for row in rows
    ]


def checks_from_records(
    lines: list[tuple[int, dict[str, Any]]],
    pairs: list[DatasetPair],
    file: str = CHECKS_JSONL,
    pairs_file: str = PAIRS_JSONL,
    unit: str = "line",
) -> list[DatasetCheck]:
    """Checked rater checks, by id, from ``(line or row number, object)`` records of ``file``:
    every check on a pair of ``pairs_file``, a kind the store knows, rater ids the store accepts,
    a gold check only on a gold pair and expecting its answer, an answer (choice, response time
    and time answered) given in full or not at all, and at most one check per pair, rater and
    kind (as the store allows)."""
    by_id = {p.id: p for p in pairs}
    checks: list[DatasetCheck] = []
    seen: set[int] = set()
    asked: set[tuple[int, str, str]] = set()
    for number, obj in lines:
        f = Fields(file, number, obj, unit)
        check_id = f.unique_id(seen, "check")
        pair_id = f.pair_id(by_id, pairs_file, "; a check is asked on one of the run's pairs")
        rater_id = f.rater_id("rater_id")
        kind = obj.get("kind")
        if kind not in CHECK_KINDS:
            raise f.error("kind", f"is {excerpt(kind)}; it must be one of {list(CHECK_KINDS)}")
        expected = f.choice("expected")
        if expected is Choice.CANT_TELL:
            raise f.error("expected", "is 'cant_tell'; an expected answer is left, right or equal")
        gold = by_id[pair_id].gold_choice
        if kind == "gold" and gold is None:
            raise f.error("kind", f"is 'gold' but pair {pair_id} of {pairs_file} has no gold_choice")
        if kind == "gold" and expected is not gold:
            raise f.error("expected", f"is {expected.value!r} but pair {pair_id}'s gold_choice is {gold.value!r}")  # type: ignore[union-attr]
        if (pair_id, rater_id, kind) in asked:
            raise f.error(
                "rater_id",
                f"{excerpt(rater_id)} has two {kind} checks on pair {pair_id}; a rater is checked at "
                "most once per pair and kind",
            )
        asked.add((pair_id, rater_id, kind))
        choice = f.choice("choice", optional=True)
        response_time = f.float("response_time_s", optional=True)
        if response_time is not None and response_time < 0:
            raise f.error("response_time_s", f"must be >= 0, got {response_time}")
        answered_at = f.time("answered_at", optional=True)
        if choice is None and (response_time is not None or answered_at is not None):
            raise f.error("choice", "is null (not answered) but response_time_s or answered_at is set; an answer is whole or absent")
        if choice is not None and (response_time is None or answered_at is None):
            raise f.error("choice", "is an answer but response_time_s or answered_at is null; an answer is whole or absent")
        checks.append(
            DatasetCheck(
                id=check_id,
                pair_id=pair_id,
                rater_id=rater_id,
                kind=kind,
                swapped=f.bool("swapped"),
                expected=expected,  # type: ignore[arg-type]
                choice=choice,
                response_time_s=response_time,
                served_at=f.time("served_at"),  # type: ignore[arg-type]
                answered_at=answered_at,
            )
        )
    return sorted(checks, key=lambda c: c.id)


def write_checks(conn: Connection, run_id: int, checks: list[DatasetCheck], pair_ids: dict[int, int]) -> dict[int, int]:
    """Insert a dataset's checks into run ``run_id`` (``pair_ids``: dataset pair id -> the
    run's), in id order so the order answered stays as it was; returns dataset id -> new id."""
    ids: dict[int, int] = {}
    for check in checks:
        if check.pair_id not in pair_ids:  # checked on loading; never a check on another run's pair
            raise DatasetError(f"check {check.id} refers to pair {check.pair_id}, which this import did not write")
        result = conn.execute(
            insert(rater_checks_table).values(
                run_id=run_id,
                pair_id=pair_ids[check.pair_id],
                rater_id=check.rater_id,
                kind=check.kind,
                swapped=check.swapped,
                expected=check.expected.value,
                served_at=check.served_at,
                choice=None if check.choice is None else check.choice.value,
                response_time_s=check.response_time_s,
                answered_at=check.answered_at,
            )
        )
        ids[check.id] = int(result.inserted_primary_key[0])  # type: ignore[index]
    return ids
