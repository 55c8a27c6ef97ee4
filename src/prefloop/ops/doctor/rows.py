"""``prefloop doctor``'s checks of one run's rows, and the repairs that lose nothing.

Found: labels on pairs that do not exist, pairs whose segments are missing, segments whose arrays
do not load, pairs whose status disagrees with their live labels (or that hold more live labels
than they asked for), leases that expired but are still held. Repaired (``repair=True``): a pair's
status is recomputed from its labels and an expired lease is released, each a compare-and-set
``UPDATE`` that changes nothing if the pair changed since it was read. Labels and segments are
never changed or deleted.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.engine import Connection, Engine

from prefloop.ops.doctor.report import ERROR, INFO, DoctorReport, listed_ids
from prefloop.serialization import array_from_bytes
from prefloop.stacked_frames import obs_from_bytes
from prefloop.store import ANSWERED, CLAIMED, PENDING, WITHDRAWN, labels_table, pairs_table, segments_table

_SEGMENT_CHUNK = 200


@contextmanager
def _write(engine: Engine) -> Iterator[Connection]:
    with engine.begin() as conn:
        yield conn


def labels_on_unknown_pairs(engine: Engine, report: DoctorReport) -> None:
    report.checks.append("labels_on_unknown_pairs")
    lab, p = labels_table, pairs_table
    with engine.connect() as conn:
        ids = list(conn.scalars(
            select(lab.c.id).outerjoin(p, p.c.id == lab.c.pair_id).where(p.c.id.is_(None)).order_by(lab.c.id)
        ))
    if ids:
        report.add(ERROR, "labels_on_unknown_pairs", f"{len(ids)} labels point at pairs that do not exist (label ids {listed_ids(ids)})",
                   "restore the pairs table from a backup; the labels themselves are kept and never deleted")


def pairs_missing_segments(engine: Engine, run_id: int, name: str, report: DoctorReport) -> None:
    report.checks.append("pair_segments")
    p, s = pairs_table, segments_table
    found: list[int] = []
    with engine.connect() as conn:
        for side in (p.c.left_segment_id, p.c.right_segment_id):
            seg = s.alias()
            found += conn.scalars(
                select(p.c.id)
                .outerjoin(seg, and_(seg.c.id == side, seg.c.run_id == p.c.run_id))
                .where(p.c.run_id == run_id, seg.c.id.is_(None))
            ).all()
    ids = sorted(set(found))
    if ids:
        report.add(ERROR, "pair_segments", f"run {name!r}: {len(ids)} pairs use segments that are missing (pair ids {listed_ids(ids)})",
                   "restore the segments from a backup; until then reward-model training fails on these pairs")


def broken_segments(engine: Engine, run_id: int, name: str, report: DoctorReport) -> None:
    report.checks.append("segment_arrays")
    s = segments_table
    broken: list[tuple[int, str]] = []
    last = -1
    with engine.connect() as conn:
        while True:
            rows = conn.execute(
                select(s).where(s.c.run_id == run_id, s.c.id > last).order_by(s.c.id).limit(_SEGMENT_CHUNK)
            ).all()
            if not rows:
                break
            for row in rows:
                problem = _segment_problem(row)
                if problem:
                    broken.append((int(row.id), problem))
            last = int(rows[-1].id)
    if broken:
        detail = "; ".join(f"segment {i}: {why}" for i, why in broken[:3])
        report.add(ERROR, "segment_arrays",
                   f"run {name!r}: {len(broken)} segments do not load ({detail})",
                   "restore them from a backup; they are kept as they are (doctor never deletes data), "
                   "and training fails on pairs that use them")


def _segment_problem(row: Any) -> str | None:
    arrays = {}
    for column in ("obs", "actions", "true_rewards", "episode_actions"):
        try:
            decode = obs_from_bytes if column == "obs" else array_from_bytes
            arrays[column] = decode(row._mapping[column])
        except Exception as exc:  # any decoding failure is the finding itself
            return f"{column} does not decode ({type(exc).__name__}: {exc})"
    length = int(row.length)
    if arrays["true_rewards"].shape != (length,):
        return f"true_rewards has shape {arrays['true_rewards'].shape}, expected ({length},)"
    for column in ("obs", "actions"):
        if arrays[column].ndim < 1 or arrays[column].shape[0] != length:
            return f"{column} has shape {arrays[column].shape}, expected first dimension {length}"
    if not 1 <= int(row.n_valid) <= length:
        return f"n_valid {row.n_valid} outside 1..{length}"
    if arrays["episode_actions"].ndim < 1 or arrays["episode_actions"].shape[0] != int(row.start_step) + int(row.n_valid):
        return f"episode_actions has {arrays['episode_actions'].shape[:1]} steps, expected start_step + n_valid"
    return None


def _live_count(pair_id_column: Any) -> Any:
    lab = labels_table
    return (
        select(func.count())
        .select_from(lab)
        .where(lab.c.pair_id == pair_id_column, lab.c.retracted_at.is_(None))
        .scalar_subquery()
    )


def pair_status(engine: Engine, run_id: int, name: str, repair: bool, report: DoctorReport) -> None:
    report.checks.append("pair_status")
    p = pairs_table
    live = _live_count(p.c.id)
    with engine.connect() as conn:
        rows = conn.execute(
            select(p.c.id, p.c.status, p.c.claimed_by, p.c.lease_expires_at, p.c.labels_per_pair, live.label("live"))
            .where(p.c.run_id == run_id)
            .order_by(p.c.id)
        ).all()
    over = [r.id for r in rows if r.live > r.labels_per_pair]
    if over:
        report.add(ERROR, "pair_status",
                   f"run {name!r}: {len(over)} pairs have more live labels than they asked for (pair ids {listed_ids(over)})",
                   "inspect them; retract the label given in error (undo), none is deleted automatically")
    wrong: list[tuple[Any, str]] = []
    for r in rows:
        if r.live >= r.labels_per_pair:
            if r.status != ANSWERED:
                wrong.append((r, f"pair {r.id} is {r.status!r} with {r.live}/{r.labels_per_pair} live labels (should be answered)"))
        elif r.status == ANSWERED:
            wrong.append((r, f"pair {r.id} is 'answered' with only {r.live}/{r.labels_per_pair} live labels"))
        elif r.status == CLAIMED and (r.claimed_by is None or r.lease_expires_at is None):
            wrong.append((r, f"pair {r.id} is 'claimed' by nobody"))
        elif r.status in (PENDING, WITHDRAWN) and (r.claimed_by is not None or r.lease_expires_at is not None):
            wrong.append((r, f"pair {r.id} is {r.status} but still names a lease holder"))
    fixed = 0
    if repair:
        for r, _ in wrong:
            fixed += _repair_status(engine, r)
    if wrong:
        detail = "; ".join(why for _, why in wrong[:3])
        report.add(ERROR, "pair_status",
                   f"run {name!r}: {len(wrong)} pairs have a status their labels disagree with ({detail})",
                   f"run `{report.repair_command}` to recompute the status from the labels",
                   repaired=repair and fixed == len(wrong))


def _repair_status(engine: Engine, row: Any) -> int:
    """Recompute one pair's status, only if nothing about it changed since it was read."""
    p = pairs_table
    # A withdrawn pair stays withdrawn (its run no longer wants labels) unless its labels are complete.
    target = ANSWERED if row.live >= row.labels_per_pair else WITHDRAWN if row.status == WITHDRAWN else PENDING
    unchanged = [p.c.id == row.id, p.c.status == row.status, _live_count(p.c.id) == row.live]
    unchanged.append(p.c.claimed_by.is_(None) if row.claimed_by is None else p.c.claimed_by == row.claimed_by)
    with _write(engine) as conn:
        result = conn.execute(update(p).where(*unchanged).values(status=target, claimed_by=None, lease_expires_at=None))
    return int(result.rowcount == 1)


def expired_leases(engine: Engine, run_id: int, name: str, repair: bool, now: float, report: DoctorReport) -> None:
    report.checks.append("expired_leases")
    p = pairs_table
    expired = and_(p.c.run_id == run_id, p.c.status == CLAIMED, p.c.lease_expires_at <= now)
    with engine.connect() as conn:
        ids = list(conn.scalars(select(p.c.id).where(expired).order_by(p.c.id)))
    if not ids:
        return
    released = 0
    if repair:
        with _write(engine) as conn:
            released = conn.execute(
                update(p).where(expired, p.c.id.in_(ids)).values(status=PENDING, claimed_by=None, lease_expires_at=None)
            ).rowcount
    # Routine after a stopped app or a closed tab: the next claim takes expired leases over, so
    # this is information, not a problem (doctor still exits 0 for it).
    report.add(INFO, "expired_leases",
               f"run {name!r}: {len(ids)} pairs are still leased to raters whose lease expired (pair ids {listed_ids(ids)}); "
               "the next rater to ask for a pair takes them over",
               f"nothing needed; `{report.repair_command}` releases them now",
               repaired=repair and released == len(ids))


def usable_labels(engine: Engine, run_id: int) -> int:
    lab, p = labels_table, pairs_table
    with engine.connect() as conn:
        return int(conn.scalar(
            select(func.count(func.distinct(lab.c.pair_id)))
            .join(p, p.c.id == lab.c.pair_id)
            .where(p.c.run_id == run_id, lab.c.retracted_at.is_(None), lab.c.choice != "cant_tell")
        ) or 0)

