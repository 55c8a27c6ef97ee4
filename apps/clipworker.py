"""The clip worker: renders and encodes the clips of queued pairs, ahead of the raters.

Rendering replays a segment's episode (``SegmentRenderer``, one env reused for every clip) and
encoding takes about 0.15 s per
clip, far too slow for a rater's request. So a worker -- a thread beside the rater app, or its own
process -- keeps asking the store for segments of waiting pairs that have no clip yet, oldest pair
first, and stores their clips there; the app only ever reads finished clips.

A segment that cannot be rendered (the replay diverged, the env cannot render) is logged and
recorded as failed in the store, so the worker moves on and the app never shows its pairs.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

from prefloop.envs.clips import CLIP_MIME, encode_clip
from prefloop.envs.factory import EnvSetupError, EnvSpec, make_env
from prefloop.envs.render import ReplayMismatchError, SegmentRenderer

from prefloop.store import PreferenceStore

log = logging.getLogger("prefloop.clips")

DEFAULT_FPS = 30.0


class ClipWorkerError(RuntimeError):
    """The worker cannot start: the run's env or frame rate is unknown; the message says why."""


@dataclass
class ClipStats:
    """What a worker has done so far."""

    rendered: int = 0
    failed: int = 0
    render_s: float = 0.0
    encode_s: float = 0.0


class ClipWorker:
    """Renders the missing clips of one run's waiting pairs into its store.

    Args:
        store_url: the store's database URL (the worker opens its own connection pool).
        run_name: the run whose pairs need clips.
        spec: the run's env; None reads ``env_spec`` from the run's meta (written by the trainer).
        fps: playback frame rate; None reads ``render_fps`` from the run's meta, else the env's
            ``metadata["render_fps"]``, else 30.

    Raises:
        ClipWorkerError: ``spec`` is None and the run's meta has no usable ``env_spec`` yet
            (start the worker after the trainer has published the run, or pass ``spec``).
    """

    def __init__(
        self,
        store_url: str,
        run_name: str,
        spec: EnvSpec | None = None,
        fps: float | None = None,
    ) -> None:
        self.store = PreferenceStore(store_url, run_name)
        try:
            self.spec = spec if spec is not None else _spec_from_meta(self.store)
            self.fps = float(fps) if fps is not None else _fps_from_meta(self.store, self.spec)
        except BaseException:
            self.store.close()
            raise
        if not self.fps > 0:
            self.store.close()
            raise ClipWorkerError(f"fps must be a positive frame rate, got {fps!r}")
        self.stats = ClipStats()
        # Made on first use, in the thread that renders: MuJoCo's GL context belongs to a thread.
        self._renderer: SegmentRenderer | None = None

    def close(self) -> None:
        """Close the renderer's env and the store's connections (call from the rendering thread)."""
        self._close_renderer()
        self.store.close()

    def _close_renderer(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> ClipWorker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def render_pending(self, limit: int = 8) -> int:
        """Render and store clips for up to ``limit`` segments that need one.

        Returns:
            How many segments were handled (stored clips plus recorded failures); 0 when none
            needed a clip.
        """
        done = 0
        for segment in self.store.segments_needing_clips(limit):
            assert segment.id is not None
            try:
                started = time.perf_counter()
                if self._renderer is None:
                    self._renderer = SegmentRenderer(self.spec)
                frames = self._renderer.render(segment)
                rendered = time.perf_counter()
                data = encode_clip(frames, self.fps)
                self.stats.render_s += rendered - started
                self.stats.encode_s += time.perf_counter() - rendered
            except Exception as exc:  # one bad segment must not stop the clips of all others
                if not isinstance(exc, ReplayMismatchError):
                    self._close_renderer()  # start the next clip from a fresh env
                message = f"{type(exc).__name__}: {exc}"
                log.warning("cannot render the clip of segment %d: %s", segment.id, message)
                self.store.put_clip_error(segment.id, message)
                self.stats.failed += 1
            else:
                self.store.put_clip(segment.id, data, CLIP_MIME)
                self.stats.rendered += 1
            done += 1
        return done

    def run(self, stop: threading.Event, poll_s: float = 0.5, batch: int = 8) -> None:
        """Render clips until ``stop`` is set, sleeping ``poll_s`` whenever none are needed.

        Database errors (e.g. a PostgreSQL restart) are logged and retried after a pause rather
        than ending the worker.
        """
        backoff = poll_s
        while not stop.is_set():
            try:
                done = self.render_pending(batch)
                backoff = poll_s
            except Exception as exc:
                log.warning("clip worker: %s: %s; retrying in %.0f s", type(exc).__name__, exc, backoff)
                done = 0
                backoff = min(30.0, max(backoff * 2, 1.0))
                stop.wait(backoff)
                continue
            if done == 0:
                stop.wait(poll_s)


def start_clip_worker_thread(
    store_url: str,
    run_name: str,
    spec: EnvSpec | None = None,
    fps: float | None = None,
    *,
    poll_s: float = 0.5,
    wait_for_meta_s: float = 0.0,
) -> tuple[threading.Thread, threading.Event]:
    """Start a daemon thread running a :class:`ClipWorker`; set the returned event to stop it.

    Args:
        wait_for_meta_s: when the run's meta has no ``env_spec`` yet (the trainer has not started),
            keep checking for up to this many seconds inside the thread instead of failing. With 0
            the worker is built here and a missing ``env_spec`` raises :class:`ClipWorkerError` now.

    Returns:
        ``(thread, stop_event)``; ``thread.join()`` after ``stop_event.set()`` waits for the
        current clip to finish (at most a fraction of a second). A thread that ends before
        ``stop_event`` is set has failed; ``thread.failure`` says why.
    """
    stop = threading.Event()
    worker = None if wait_for_meta_s > 0 else ClipWorker(store_url, run_name, spec, fps)

    def main() -> None:
        nonlocal worker
        deadline = time.monotonic() + wait_for_meta_s
        try:
            while worker is None and not stop.is_set():
                try:
                    worker = ClipWorker(store_url, run_name, spec, fps)
                except ClipWorkerError:
                    if time.monotonic() > deadline:
                        raise
                    stop.wait(1.0)
            if worker is None:
                return
            try:
                worker.run(stop, poll_s)
            finally:
                worker.close()
        except Exception as exc:  # kept for whoever watches the thread (``prefloop rate`` restarts it)
            thread.failure = f"{type(exc).__name__}: {exc}"
            log.error("clip worker stopped: %s", thread.failure)

    thread = threading.Thread(target=main, name=f"clip-worker-{run_name}", daemon=True)
    thread.failure = None  # type: ignore[attr-defined]  # why the thread ended early, if it did
    thread.start()
    return thread, stop


def _spec_from_meta(store: PreferenceStore) -> EnvSpec:
    raw = store.get_meta("env_spec")
    if not raw:
        raise ClipWorkerError(
            f"run {store.run_name!r} in {store.url} has no 'env_spec' yet: the trainer writes it "
            "when the run starts. Start the trainer first, or pass spec=EnvSpec(...)."
        )
    try:
        return EnvSpec.from_json(json.loads(raw))
    except (ValueError, KeyError, TypeError) as exc:
        raise ClipWorkerError(
            f"run {store.run_name!r} has an unreadable 'env_spec' meta value {raw[:200]!r} ({exc})"
        ) from exc


def _fps_from_meta(store: PreferenceStore, spec: EnvSpec) -> float:
    raw = store.get_meta("render_fps")
    if raw:
        try:
            value = float(raw)
            if value > 0:
                return value
        except ValueError:
            pass
        log.warning("ignoring unreadable render_fps %r in the run's meta", raw)
    try:
        env = make_env(spec)
    except EnvSetupError as exc:
        raise ClipWorkerError(f"cannot build the run's env to read its frame rate: {exc}") from exc
    try:
        return float(env.metadata.get("render_fps") or DEFAULT_FPS)
    finally:
        env.close()


__all__ = ["ClipStats", "ClipWorker", "ClipWorkerError", "start_clip_worker_thread"]
