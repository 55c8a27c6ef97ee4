"""Encoding rendered frames into the short video clips raters watch.

WebM with VP9 (realtime preset): every Chromium, Firefox and Edge decodes it, including Debian's
Chromium, which has no H.264 decoder by default. Frames are downscaled to at most
:data:`MAX_CLIP_HEIGHT` pixels high, which is plenty to judge behaviour and keeps a 1.5 s clip at
a few kilobytes, encoded in about 0.15 s of one core.

All clips of a run have the same number of frames (``render_segment`` pads terminated segments), so
two clips played side by side loop in sync.
"""

from __future__ import annotations

import io
import math
from fractions import Fraction

import av
import numpy as np

CLIP_MIME = "video/webm"
CLIP_CODEC = "libvpx-vp9"
MAX_CLIP_HEIGHT = 320
# Constant quality, no bitrate target: sharp edges on the flat backgrounds of control envs stay
# crisp and the clips stay small.
_VP9_OPTIONS = {
    "deadline": "realtime",
    "cpu-used": "8",
    "lag-in-frames": "0",
    "crf": "30",
    "b": "0",
    "row-mt": "0",
}


class ClipEncodingError(ValueError):
    """The frames or the frame rate cannot be encoded; the message says what is wrong."""


def clip_size(height: int, width: int, max_height: int = MAX_CLIP_HEIGHT) -> tuple[int, int]:
    """``(height, width)`` of the encoded clip: scaled to at most ``max_height`` keeping the aspect
    ratio, rounded to even numbers (4:2:0 chroma needs them)."""
    scale = min(1.0, max_height / height)
    return max(2, 2 * round(height * scale / 2)), max(2, 2 * round(width * scale / 2))


def encode_clip(frames: np.ndarray, fps: float, *, max_height: int = MAX_CLIP_HEIGHT) -> bytes:
    """Encode frames as a WebM/VP9 clip (MIME type :data:`CLIP_MIME`).

    Args:
        frames: ``(T, H, W, 3)`` uint8 RGB frames, ``T >= 1``.
        fps: frames per second of playback (the env's ``render_fps``), > 0.
        max_height: frames taller than this are downscaled to it.

    Returns:
        The WebM file's bytes; it plays for ``T / fps`` seconds.

    Raises:
        ClipEncodingError: wrong shape or dtype, or a frame rate that is not a positive number.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ClipEncodingError(
            f"frames must have shape (T, H, W, 3) with T >= 1 (RGB), got {frames.shape}"
        )
    if frames.dtype != np.uint8:
        raise ClipEncodingError(
            f"frames must be uint8 (0-255 RGB, as env.render() returns), got {frames.dtype}"
        )
    if frames.shape[1] < 2 or frames.shape[2] < 2:
        raise ClipEncodingError(f"frames must be at least 2x2 pixels, got {frames.shape[1:3]}")
    if isinstance(fps, bool) or not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ClipEncodingError(f"fps must be a positive number of frames per second, got {fps!r}")

    height, width = clip_size(frames.shape[1], frames.shape[2], max_height)
    out = io.BytesIO()
    # A rational time base keeps non-integer frame rates (e.g. 12.5 fps) exact.
    rate = _as_fraction(fps)
    with av.open(out, mode="w", format="webm") as container:
        stream = container.add_stream(CLIP_CODEC, rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = dict(_VP9_OPTIONS)
        stream.thread_count = 1  # the worker runs beside training on a shared machine
        for frame in np.ascontiguousarray(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(
                width=width, height=height, format="yuv420p"
            )
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def _as_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)
