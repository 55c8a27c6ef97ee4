"""Segments: saving them, loading them by id (decoded ones cached, since they never change), and
checking that ids name segments of this run. A segment's arrays are stored as bytes
(:mod:`prefloop.serialization`), one row per segment.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from prefloop.serialization import array_from_bytes, array_to_bytes
from prefloop.stacked_frames import obs_from_bytes, obs_to_bytes
from prefloop.store.base import StoreBase
from prefloop.store.checks import as_id, validate_segment
from prefloop.store.engine import IN_CHUNK, chunks
from prefloop.store.errors import StoreError
from prefloop.store.schema import segments_table
from prefloop.types import Segment

SEGMENT_CACHE_SIZE = 4096  # decoded segments kept per store instance (read-only, shared)


class SegmentsMixin(StoreBase):
    """Saving and loading this run's segments."""

    def add_segments(self, segments: Sequence[Segment]) -> list[int]:
        """Save new segments in one transaction; sets ``seg.id`` on each and returns the ids.

        Raises:
            StoreError: a segment is already saved (has an id) or is malformed (shapes, n_valid).
        """
        segments = list(segments)
        for index, seg in enumerate(segments):
            if seg.id is not None:
                raise StoreError(
                    f"segment {index} is already saved (id {seg.id}); do not add it twice "
                    "(add_pairs accepts saved segments directly)"
                )
            validate_segment(seg, f"segment {index}")
        rows = [self._segment_row(seg) for seg in segments]
        with self._write() as conn:
            ids = [self._insert_segment(conn, row) for row in rows]
        for seg, seg_id in zip(segments, ids):
            seg.id = seg_id
        return ids

    def get_segments(self, ids: Sequence[int]) -> list[Segment]:
        """Load segments by id, in the order of ``ids`` (repeats allowed).

        Raises:
            StoreError: some id is not a segment of this run.
        """
        wanted = [as_id(i, "segment id") for i in ids]
        with self._read() as conn:
            found = self._load_segments(conn, wanted)
        return [found[i] for i in wanted]

    def _segment_row(self, seg: Segment) -> dict[str, Any]:
        return {
            "run_id": self._run_id,
            "obs": obs_to_bytes(seg.obs),
            "actions": array_to_bytes(seg.actions),
            "true_rewards": array_to_bytes(seg.true_rewards),
            "episode_actions": array_to_bytes(seg.episode_actions),
            "n_valid": int(seg.n_valid),
            "terminated": bool(seg.terminated),
            "episode_seed": int(seg.episode_seed),
            "start_step": int(seg.start_step),
            "env_step": int(seg.env_step),
            "length": seg.length,
            "created_at": self._now(),
        }

    @staticmethod
    def _insert_segment(conn: Connection, row: dict[str, Any]) -> int:
        return int(conn.execute(insert(segments_table).values(**row)).inserted_primary_key[0])

    def _load_segments(self, conn: Connection, ids: Iterable[int]) -> dict[int, Segment]:
        # Segments never change once stored, so decoded ones are kept in a bounded per-process
        # cache: the trainer re-reads every labelled pair's segments at each reward update.
        unique = sorted(set(ids))
        cache = self._segment_cache
        with self._cache_lock:
            found: dict[int, Segment] = {i: cache[i] for i in unique if i in cache}
            for i in found:
                cache.move_to_end(i)
        for chunk in chunks([i for i in unique if i not in found], IN_CHUNK):
            rows = conn.execute(
                select(segments_table).where(
                    segments_table.c.run_id == self._run_id, segments_table.c.id.in_(chunk)
                )
            ).all()
            for row in rows:
                found[row.id] = segment_from_row(row)
        with self._cache_lock:
            cache.update((i, seg) for i, seg in found.items() if i not in cache)
            while len(cache) > SEGMENT_CACHE_SIZE:
                cache.popitem(last=False)
        missing = [i for i in unique if i not in found]
        if missing:
            raise StoreError(
                f"segment ids {missing[:10]} are not segments of run {self._run_name!r}; "
                "use ids returned by add_segments/add_pairs of this run"
            )
        return found

    def _check_segments_exist(self, conn: Connection, ids: set[int]) -> None:
        present: set[int] = set()
        for chunk in chunks(sorted(ids), IN_CHUNK):
            present.update(
                conn.scalars(
                    select(segments_table.c.id).where(
                        segments_table.c.run_id == self._run_id, segments_table.c.id.in_(chunk)
                    )
                )
            )
        missing = sorted(ids - present)
        if missing:
            raise StoreError(
                f"segments {missing[:10]} have ids but are not saved in run {self._run_name!r}; "
                "were they saved by another store or run? Set seg.id = None to save them here"
            )


def segment_from_row(row: Any) -> Segment:
    return Segment(
        obs=obs_from_bytes(row.obs),
        actions=array_from_bytes(row.actions),
        true_rewards=array_from_bytes(row.true_rewards),
        n_valid=int(row.n_valid),
        terminated=bool(row.terminated),
        episode_seed=int(row.episode_seed),
        start_step=int(row.start_step),
        episode_actions=array_from_bytes(row.episode_actions),
        env_step=int(row.env_step),
        id=int(row.id),
    )
