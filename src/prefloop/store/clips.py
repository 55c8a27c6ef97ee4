"""Clips: the encoded video of each segment that raters watch, stored in the database so every app
instance and clip worker sees the same ones (no file path ever comes from a request). A segment
whose replay failed gets a row with ``error`` set, so the worker does not retry it forever and
the app skips its pairs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import exists, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from prefloop.store.checks import as_id, as_int, check_mime
from prefloop.store.engine import IN_CHUNK, chunks
from prefloop.store.errors import StoreError
from prefloop.store.schema import (
    CLAIMED,
    MAX_CLIP_ERROR_CHARS,
    PENDING,
    clips_table,
    pairs_table,
    segments_table,
)
from prefloop.store.segments import SegmentsMixin
from prefloop.types import Segment


class ClipsMixin(SegmentsMixin):
    """Storing clips and render failures, and finding what still needs one."""

    def put_clip(self, segment_id: int, data: bytes, mime: str) -> bool:
        """Store the encoded clip of one segment of this run; the first clip stored wins.

        Args:
            segment_id: a segment of this run.
            data: the encoded video (non-empty bytes).
            mime: its MIME type, e.g. ``prefloop.envs.clips.CLIP_MIME``.

        Returns:
            True if this call stored it; False if the segment already had a clip (idempotent:
            several workers may render the same segment). A recorded render failure
            (:meth:`put_clip_error`) is replaced by a clip.

        Raises:
            StoreError: empty data, bad MIME type, or a segment that is not in this run.
        """
        segment_id = as_id(segment_id, "segment_id")
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
            raise StoreError(
                f"clip data for segment {segment_id} must be non-empty bytes, got "
                f"{type(data).__name__} of length {len(data) if hasattr(data, '__len__') else '?'}"
            )
        mime = check_mime(mime)
        return self._put_clip_row(segment_id, bytes(data), mime, None)

    def put_clip_error(self, segment_id: int, message: str) -> bool:
        """Record that the clip of a segment cannot be rendered (e.g. the replay diverged).

        The segment then no longer needs a clip (:meth:`segments_needing_clips`) and its pairs are
        listed by :meth:`pairs_missing_clips`, so raters are never shown them. Returns False (and
        changes nothing) when the segment already has a clip or a recorded failure.
        """
        segment_id = as_id(segment_id, "segment_id")
        if not isinstance(message, str) or not message.strip():
            raise StoreError("put_clip_error needs a non-empty message saying what went wrong")
        # The message is an exception's text: keep it storable on every backend.
        message = message[:MAX_CLIP_ERROR_CHARS].replace("\x00", "\ufffd")
        message = message.encode("utf-8", "replace").decode("utf-8")
        return self._put_clip_row(segment_id, b"", "", message)

    def _put_clip_row(self, segment_id: int, data: bytes, mime: str, error: str | None) -> bool:
        c = clips_table
        for attempt in range(2):
            try:
                with self._write() as conn:
                    self._check_segments_exist(conn, {segment_id})
                    existing = conn.execute(
                        select(c.c.error).where(c.c.segment_id == segment_id)
                    ).first()
                    row = {"mime": mime, "data": data, "error": error, "created_at": self._now()}
                    if existing is None:
                        conn.execute(insert(c).values(segment_id=segment_id, **row))
                        return True
                    if existing.error is not None and error is None:
                        changed = conn.execute(
                            update(c)
                            .where(c.c.segment_id == segment_id, c.c.error.is_not(None))
                            .values(**row)
                        )
                        return changed.rowcount == 1
                    return False
            except IntegrityError:
                # Another worker inserted the same segment's clip at the same moment (PostgreSQL);
                # the next attempt sees its row.
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def get_clip(self, segment_id: int) -> tuple[bytes, str] | None:
        """The clip of a segment of this run as ``(data, mime)``; None if it has none (yet) or
        its rendering failed."""
        segment_id = as_id(segment_id, "segment_id")
        return self.get_clips([segment_id]).get(segment_id)

    def get_clips(self, segment_ids: Iterable[int]) -> dict[int, tuple[bytes, str]]:
        """Clips of several segments of this run in one read: ``{segment_id: (data, mime)}``;
        segments without a usable clip are left out."""
        wanted = sorted({as_id(i, "segment id") for i in segment_ids})
        c, s = clips_table, segments_table
        found: dict[int, tuple[bytes, str]] = {}
        with self._read() as conn:
            for chunk in chunks(wanted, IN_CHUNK):
                rows = conn.execute(
                    select(c.c.segment_id, c.c.data, c.c.mime)
                    .join(s, s.c.id == c.c.segment_id)
                    .where(
                        s.c.run_id == self._run_id,
                        c.c.segment_id.in_(chunk),
                        c.c.error.is_(None),
                    )
                ).all()
                for row in rows:
                    found[int(row.segment_id)] = (bytes(row.data), row.mime)
        return found

    def _waiting_pairs_without_clips(self) -> Any:
        """SELECT of (pair id, left id, right id) of this run's pending or claimed pairs that lack
        a clip row (a clip or a recorded failure) on either side, oldest pair first."""
        p, c = pairs_table, clips_table

        def lacks_row(column: Any) -> Any:
            return ~exists().where(c.c.segment_id == column)

        return (
            select(p.c.id, p.c.left_segment_id, p.c.right_segment_id)
            .where(
                p.c.run_id == self._run_id,
                p.c.status.in_((PENDING, CLAIMED)),
                or_(lacks_row(p.c.left_segment_id), lacks_row(p.c.right_segment_id)),
            )
            .order_by(p.c.id)
        )

    def segments_needing_clips(self, limit: int = 16) -> list[Segment]:
        """Up to ``limit`` segments of this run's pending or claimed pairs that have neither a clip
        nor a recorded failure, those of the oldest pair first (raters get the oldest pairs first).
        """
        limit = as_int(limit, "limit")
        if limit < 1:
            raise StoreError(f"limit must be >= 1, got {limit}")
        c = clips_table
        with self._read() as conn:
            rows = conn.execute(self._waiting_pairs_without_clips().limit(limit)).all()
            ordered = list(
                dict.fromkeys(
                    seg_id for row in rows for seg_id in (row.left_segment_id, row.right_segment_id)
                )
            )
            have: set[int] = set()
            for chunk in chunks(ordered, IN_CHUNK):
                have.update(conn.scalars(select(c.c.segment_id).where(c.c.segment_id.in_(chunk))))
            wanted = [i for i in ordered if i not in have][:limit]
            segs = self._load_segments(conn, wanted)
        return [segs[i] for i in wanted]

    def pairs_missing_clips(self, *, failed_only: bool = False) -> list[int]:
        """Ids of this run's pending or claimed pairs that cannot be shown yet: a side has no
        clip (not rendered yet, or its rendering failed). Pass them to ``claim_next(exclude=...)``.
        With ``failed_only``, just the pairs that never can be shown (a side failed to render).
        """
        p, c = pairs_table, clips_table

        def lacks_clip(column: Any) -> Any:
            if failed_only:
                return exists().where(c.c.segment_id == column, c.c.error.is_not(None))
            return ~exists().where(c.c.segment_id == column, c.c.error.is_(None))

        with self._read() as conn:
            return [
                int(i)
                for i in conn.scalars(
                    select(p.c.id)
                    .where(
                        p.c.run_id == self._run_id,
                        p.c.status.in_((PENDING, CLAIMED)),
                        or_(lacks_clip(p.c.left_segment_id), lacks_clip(p.c.right_segment_id)),
                    )
                    .order_by(p.c.id)
                )
            ]

    def clip_errors(self) -> dict[int, str]:
        """Segments of this run whose clip could not be rendered: ``{segment_id: message}``."""
        c, s = clips_table, segments_table
        with self._read() as conn:
            rows = conn.execute(
                select(c.c.segment_id, c.c.error)
                .join(s, s.c.id == c.c.segment_id)
                .where(s.c.run_id == self._run_id, c.c.error.is_not(None))
                .order_by(c.c.segment_id)
            ).all()
        return {int(row.segment_id): row.error for row in rows}
