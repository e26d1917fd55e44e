"""Video files in and out, with PyAV (FFmpeg).

`read_clip` cuts a clip by start time, frame count and target frame rate, resizes the short side
to `size` and centre-crops to a square: uint8 (T, size, size, 3), RGB. Frames are picked by
presentation time (for each target time, the last source frame shown at or before it), so a
24 fps source read at 8 fps takes every third frame and a 5 fps source read at 8 fps repeats
frames, as a player would show them. `write_mp4` and `write_gif` write uint8 (T, H, W, 3);
`Mp4Writer` writes an mp4 a few frames at a time (long videos, bounded memory).

Every failure to read raises `VideoError` naming the file.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
from PIL import Image

from loong_dist.errors import VideoError

VideoSource = str | os.PathLike | bytes | BinaryIO


@dataclass(frozen=True)
class VideoInfo:
    width: int
    """Frame width (pixels)."""
    height: int
    """Frame height (pixels)."""
    fps: float
    """Average frame rate of the video stream (frames/s)."""
    duration: float
    """Duration of the video stream (seconds); from the container when the stream has none."""
    num_frames: int
    """Frame count from the container, or duration x fps when the container does not say."""


def _name(source: VideoSource, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return "<in-memory video>"


def _open(source: VideoSource, name: str):
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise VideoError(f"{name}: no such file")
        if path.stat().st_size == 0:
            raise VideoError(f"{name}: file is empty (0 bytes)")
    elif isinstance(source, (bytes, bytearray)):
        if not source:
            raise VideoError(f"{name}: empty (0 bytes)")
        source = io.BytesIO(source)
    try:
        container = av.open(source, mode="r")
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoError(f"{name}: not a readable video ({_reason(e)})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{name}: has no video stream")
    return container


def _reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e).split(": '")[0].strip() or type(e).__name__


def probe_video(source: VideoSource, name: str | None = None) -> VideoInfo:
    """Size, frame rate, duration and frame count, from the container headers (no decoding)."""
    name = _name(source, name)
    with _open(source, name) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        frames = stream.frames or int(round(duration * fps))
        return VideoInfo(stream.codec_context.width, stream.codec_context.height, fps, duration, frames)


def _resize_crop(frame: av.VideoFrame, size: int | None) -> np.ndarray:
    """Short side -> size (area filter, in FFmpeg's swscale), then the centred size x size square."""
    if size is None:
        return frame.to_ndarray(format="rgb24")
    w, h = frame.width, frame.height
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    rgb = frame.reformat(width=new_w, height=new_h, format="rgb24", interpolation="AREA").to_ndarray()
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return rgb[top:top + size, left:left + size]


def read_clip(source: VideoSource, start: float = 0.0, num_frames: int = 17, fps: float | None = None,
              size: int | None = 128, name: str | None = None) -> np.ndarray:
    """Read `num_frames` frames from `start` seconds at `fps` (None: the video's own rate).

    Returns uint8 (T, size, size, 3) RGB, or (T, H, W, 3) at native size when `size` is None.
    Raises VideoError naming the file if it cannot be decoded, or holds fewer frames than asked
    (the message says how many it had).
    """
    name = _name(source, name)
    if num_frames < 1:
        raise VideoError(f"{name}: asked for {num_frames} frames")
    if start < 0:
        raise VideoError(f"{name}: negative start time {start}")
    with _open(source, name) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        native = float(stream.average_rate or stream.guessed_rate or 0) or None
        step = 1.0 / (fps or native or 25.0)
        # Target i is at start + i / fps; the frame shown then is the last one whose time is
        # <= the target (with a quarter-frame tolerance for timestamp rounding).
        targets = [start + i * step for i in range(num_frames)]
        tol = 1e-3 if native is None else 0.25 / native
        if start > 0 and stream.time_base is not None:
            try:
                container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
            except av.error.FFmpegError:
                container.seek(0)
        picked: list[av.VideoFrame] = []  # for each target time, the frame on screen then
        prev: av.VideoFrame | None = None
        seen = 0
        try:
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                seen += 1
                t = float(frame.time)
                while len(picked) < num_frames and t > targets[len(picked)] + tol:
                    # `prev` was on screen at this target; with no earlier frame (a start before the
                    # first frame's pts), the first frame stands in.
                    picked.append(prev if prev is not None else frame)
                if len(picked) >= num_frames:
                    break
                prev = frame
        except (av.error.FFmpegError, OSError) as e:
            if seen == 0:
                raise VideoError(f"{name}: cannot decode ({_reason(e)})") from None
            # A truncated or damaged tail: keep what decoded; the length check below decides.
        if prev is not None:  # end of stream: the last frame stays on screen for one frame period
            last_end = float(prev.time) + (1.0 / native if native else step)
            while len(picked) < num_frames and targets[len(picked)] < last_end - tol:
                picked.append(prev)
        # Convert each distinct frame once (repeats share the array).
        arrays: dict[int, np.ndarray] = {}
        for f in picked:
            if id(f) not in arrays:
                arrays[id(f)] = _resize_crop(f, size)
        out = [arrays[id(f)] for f in picked]
    if len(out) < num_frames:
        if seen == 0:
            raise VideoError(f"{name}: no frames could be decoded from {start:.2f} s")
        raise VideoError(
            f"{name}: too short: has {len(out)} frames from {start:.2f} s at {1.0 / step:g} fps, "
            f"asked for {num_frames}")
    return np.stack(out[:num_frames])


class Mp4Writer:
    """H.264 mp4 (yuv420p) written a few frames at a time, so a long video never has to be in
    memory whole; the file appears under its name only when closed without error.

        with Mp4Writer("out.mp4", fps=8) as mp4:
            for piece in pieces:          # uint8 (n, H, W, 3), the same H and W each time
                mp4.write(piece)

    Odd sizes are padded to even (the last row or column repeated)."""

    def __init__(self, path: str | os.PathLike, fps: float = 8.0, crf: int = 18):
        self.path = Path(path)
        self.fps, self.crf = fps, crf
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        self.container = self.stream = None
        self.shape: tuple[int, int] | None = None
        self.frames = 0

    def __enter__(self) -> Mp4Writer:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(self.tmp), mode="w", format="mp4")
        return self

    def write(self, frames: np.ndarray) -> None:
        """Append uint8 (n, H, W, 3) RGB frames (H, W as the first ones written)."""
        frames = _check_frames(frames, self.path)
        t, h, w, _ = frames.shape
        if self.stream is None:
            self.shape = (h, w)
            self.stream = self.container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
            self.stream.width, self.stream.height = w + w % 2, h + h % 2
            self.stream.pix_fmt = "yuv420p"
            self.stream.options = {"crf": str(self.crf), "preset": "medium"}
        elif (h, w) != self.shape:
            raise ValueError(f"{self.path}: frames of {h}x{w} after frames of {self.shape[0]}x{self.shape[1]}")
        if h % 2 or w % 2:
            frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        for img in frames:
            for packet in self.stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                self.container.mux(packet)
        self.frames += t

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and self.stream is None:
                raise ValueError(f"{self.path}: no frames written")
            if exc_type is None:
                for packet in self.stream.encode():
                    self.container.mux(packet)
            self.container.close()
            if exc_type is None:
                self.tmp.replace(self.path)
        finally:
            self.tmp.unlink(missing_ok=True)


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float = 8.0, crf: int = 18) -> Path:
    """Write uint8 (T, H, W, 3) RGB as H.264 mp4 (yuv420p; odd sizes are padded to even)."""
    frames = _check_frames(frames, path)
    with Mp4Writer(path, fps=fps, crf=crf) as mp4:
        mp4.write(frames)
    return mp4.path


def write_gif(path: str | os.PathLike, frames: np.ndarray, fps: float = 8.0) -> Path:
    """Write uint8 (T, H, W, 3) RGB as a looping GIF (one adaptive palette per frame)."""
    frames = _check_frames(frames, path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=max(20, round(1000 / fps)), loop=0, optimize=False)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _check_frames(frames: np.ndarray, path) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"{path}: frames must be (T, H, W, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"{path}: frames must be uint8, got {frames.dtype}")
    return np.ascontiguousarray(frames)


def frame_strip(frames: np.ndarray, n: int = 8) -> np.ndarray:
    """n frames evenly spaced over the clip, side by side: uint8 (H, n*W, 3)."""
    frames = _check_frames(frames, "frame strip")
    idx = np.linspace(0, len(frames) - 1, num=min(n, len(frames))).round().astype(int)
    return np.concatenate(list(frames[idx]), axis=1)
