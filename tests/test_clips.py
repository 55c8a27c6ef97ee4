"""Clips: encoding frames to WebM, keeping clips in the store, and the worker that renders them."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import RatedStore, cartpole_segments
from prefloop.apps.clipworker import (
    ClipWorker,
    ClipWorkerError,
    start_clip_worker_thread,
)
from prefloop.envs import EnvSpec
from prefloop.envs.clips import CLIP_MIME, ClipEncodingError, clip_size, encode_clip
from sqlalchemy import create_engine, text

from prefloop.store import PreferenceStore, StoreError, sqlite_url
from prefloop.types import SegmentPair


def decode(data: bytes) -> tuple[list[np.ndarray], float, str]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, float(stream.average_rate), stream.codec_context.name


def test_clip_is_webm_vp9_with_every_frame_at_the_frame_rate_and_downscaled() -> None:
    frames = np.zeros((30, 400, 600, 3), dtype=np.uint8)
    frames[:, 150:250, :, 0] = 255  # a red band; frame t also has a bright square at x = 10 t
    for t in range(30):
        frames[t, 20:60, 10 * t : 10 * t + 40] = 255

    data = encode_clip(frames, fps=50.0)

    assert data[:4] == b"\x1a\x45\xdf\xa3"  # EBML header: a Matroska/WebM file
    decoded, rate, codec = decode(data)
    assert codec == "vp9" and CLIP_MIME == "video/webm"
    assert len(decoded) == 30 and rate == pytest.approx(50.0)
    assert decoded[0].shape == (320, 480, 3) == (*clip_size(400, 600), 3)
    assert decoded[0][160, 240, 0] > 200 and decoded[0][160, 240, 1] < 60  # the red band survived
    # the square moved right, as in the source
    assert decoded[20][32, 8 * 20 + 16].min() > 200 and decoded[0][32, 8 * 20 + 16].max() < 60


def test_small_frames_keep_their_size_and_odd_sizes_become_even() -> None:
    frames = np.full((3, 101, 75, 3), 128, dtype=np.uint8)
    decoded, rate, _ = decode(encode_clip(frames, fps=12.5))
    assert decoded[0].shape[:2] == clip_size(101, 75) == (100, 76) and rate == pytest.approx(12.5)


@pytest.mark.parametrize(
    ("frames", "fps", "message"),
    [
        (np.zeros((5, 10, 10), np.uint8), 30, "shape"),
        (np.zeros((0, 10, 10, 3), np.uint8), 30, "T >= 1"),
        (np.zeros((5, 10, 10, 3), np.float32), 30, "uint8"),
        (np.zeros((5, 10, 10, 3), np.uint8), 0, "fps"),
        (np.zeros((5, 10, 10, 3), np.uint8), float("nan"), "fps"),
    ],
)
def test_bad_frames_or_fps_are_refused_by_name(frames: np.ndarray, fps: float, message: str) -> None:
    with pytest.raises(ClipEncodingError, match=message):
        encode_clip(frames, fps)


def test_store_keeps_clips_first_writer_wins_and_failures_hide_pairs(store_url: str) -> None:
    segs = cartpole_segments(3, segment_length=10)
    with PreferenceStore(store_url, "run") as store:
        first, second = store.add_pairs([SegmentPair(segs[0], segs[1]), SegmentPair(segs[1], segs[2])])
        ids = [s.id for s in segs]
        assert [s.id for s in store.segments_needing_clips(10)] == ids  # oldest pair's first
        assert store.pairs_missing_clips() == [first, second]

        assert store.put_clip(ids[0], b"clip-0", CLIP_MIME) is True
        assert store.put_clip(ids[0], b"other", CLIP_MIME) is False  # idempotent: first wins
        assert store.get_clip(ids[0]) == (b"clip-0", CLIP_MIME)
        assert store.get_clip(ids[1]) is None
        assert [s.id for s in store.segments_needing_clips(1)] == [ids[1]]

        store.put_clip(ids[1], b"clip-1", CLIP_MIME)
        assert store.pairs_missing_clips() == [second]
        assert store.put_clip_error(ids[2], "ReplayMismatchError: diverged") is True
        assert store.segments_needing_clips(10) == []  # a failed segment is not retried forever
        assert store.pairs_missing_clips() == [second]  # ... and its pair is never shown
        assert store.clip_errors() == {ids[2]: "ReplayMismatchError: diverged"}
        assert store.get_clip(ids[2]) is None
        assert store.put_clip(ids[2], b"fixed", CLIP_MIME) is True  # a real clip replaces a failure
        assert store.pairs_missing_clips() == [] and store.clip_errors() == {}
        assert store.get_clips(ids) == {ids[0]: (b"clip-0", CLIP_MIME), ids[1]: (b"clip-1", CLIP_MIME),
                                        ids[2]: (b"fixed", CLIP_MIME)}

        # answered pairs need no clips any more
        store.claim_next("alice")
        store.answer(first, "alice", "left", 1.0)
        with pytest.raises(StoreError, match="non-empty bytes"):
            store.put_clip(ids[0], b"", CLIP_MIME)
        with pytest.raises(StoreError, match="MIME"):
            store.put_clip(ids[0], b"x", "")
    with PreferenceStore(store_url, "another-run") as other:
        with pytest.raises(StoreError, match="not saved in run"):
            other.put_clip(ids[0], b"x", CLIP_MIME)
        assert other.get_clip(ids[0]) is None  # clips are per run like everything else


def test_a_store_made_before_the_clips_table_gets_it_on_open(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "old.sqlite")
    PreferenceStore(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE clips"))
    engine.dispose()
    with PreferenceStore(url) as store:
        (seg,) = cartpole_segments(1, segment_length=10)
        store.add_segments([seg])
        store.put_clip(seg.id, b"x", CLIP_MIME)
        assert store.get_clip(seg.id) == (b"x", CLIP_MIME)


def test_worker_renders_playable_clips_of_waiting_pairs_and_skips_broken_segments(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "prefs.sqlite")
    good, other, broken = cartpole_segments(3, segment_length=10, seed=1)
    broken.episode_seed += 1  # its replay diverges from the recording
    with PreferenceStore(url, "run") as store:
        store.set_meta("env_spec", json.dumps(EnvSpec("CartPole-v1").to_json()))
        store.set_meta("render_fps", "50.0")
        ok_pair, bad_pair = store.add_pairs([SegmentPair(good, other), SegmentPair(other, broken)])

    with ClipWorker(url, "run") as worker:
        assert worker.fps == 50.0 and worker.spec == EnvSpec("CartPole-v1")
        assert worker.render_pending(10) == 3
        assert worker.render_pending(10) == 0
        assert (worker.stats.rendered, worker.stats.failed) == (2, 1)

    with PreferenceStore(url, "run") as store:
        data, mime = store.get_clip(good.id)
        frames, rate, codec = decode(data)
        assert mime == CLIP_MIME and codec == "vp9" and rate == pytest.approx(50.0)
        assert len(frames) == good.length + 1  # every clip of a run has the same length
        assert frames[0].mean() > 100  # CartPole's white background, not a black frame
        assert "ReplayMismatchError" in store.clip_errors()[broken.id]
        assert store.pairs_missing_clips() == [bad_pair]
        assert ok_pair not in store.pairs_missing_clips()


def test_worker_needs_the_env_from_meta_or_arguments(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "prefs.sqlite")
    with pytest.raises(ClipWorkerError, match="no 'env_spec' yet"):
        ClipWorker(url, "run")
    with ClipWorker(url, "run", spec=EnvSpec("CartPole-v1")) as worker:
        assert worker.fps == 50.0  # CartPole's render_fps, when the meta has none


def test_worker_thread_renders_new_pairs_until_stopped(rated_store: RatedStore) -> None:
    with PreferenceStore(rated_store.url, rated_store.run_name) as store:
        (seg,) = cartpole_segments(1, seed=5)
        (pair,) = store.add_pairs([SegmentPair(seg, store.get_segments([1])[0])])
        assert store.pairs_missing_clips() == [pair]
        thread, stop = start_clip_worker_thread(rated_store.url, rated_store.run_name, poll_s=0.05)
        try:
            for _ in range(600):
                if not store.pairs_missing_clips():
                    break
                threading.Event().wait(0.05)
            assert store.pairs_missing_clips() == []
        finally:
            stop.set()
            thread.join(timeout=30)
        assert not thread.is_alive()


def _ended_band(frame: np.ndarray) -> float:
    """Share of the pixels of the upper part of a decoded frame that are the end marker's red."""
    upper = frame[: frame.shape[0] // 3].astype(int)
    red = (upper[..., 0] > 150) & (upper[..., 1] < 90) & (upper[..., 2] < 90)
    return float(red.mean())


def test_a_terminated_segments_clip_shows_that_the_episode_ended(tmp_path: Path) -> None:
    """Frames after the termination are the final state dimmed under an "EPISODE ENDED" band --
    not a frozen frame that looks like a stalled video; a segment that did not end has no band."""
    segments = cartpole_segments(40, segment_length=25, seed=2)
    ended = next(s for s in segments if s.terminated and s.n_valid <= s.length - 5)
    running = next(s for s in segments if not s.terminated)
    url = sqlite_url(tmp_path / "prefs.sqlite")
    with PreferenceStore(url, "run") as store:
        store.set_meta("env_spec", json.dumps(EnvSpec("CartPole-v1").to_json()))
        store.add_pairs([SegmentPair(ended, running)])
    with ClipWorker(url, "run") as worker:  # the clips raters get, decoded as a browser would
        while worker.render_pending(8):
            pass
        ended_frames, _, _ = decode(worker.store.get_clip(ended.id)[0])
        running_frames, _, _ = decode(worker.store.get_clip(running.id)[0])

    assert len(ended_frames) == len(running_frames) == ended.length + 1  # the pair still loops in sync
    last_real = ended.n_valid  # the frame after the last real step: the terminal state
    for t, frame in enumerate(ended_frames):
        assert (_ended_band(frame) > 0.2) == (t > last_real), f"frame {t} of {len(ended_frames)}"
    assert ended_frames[-1].mean() < 0.6 * ended_frames[last_real].mean()  # the final state, dimmed
    assert max(_ended_band(f) for f in running_frames) < 0.01
