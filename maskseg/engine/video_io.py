"""Video containers through PyAV (FFmpeg's libraries in a pip wheel): clips in, H.264 MP4 out.

`open_clip` checks a clip and says in one sentence why it cannot be used; `decoded_frames` yields
its frames (and audio) with bad packets skipped and counted; `Mp4Writer` writes H.264 (yuv420p,
the profile every browser plays) with the source's audio re-encoded as AAC.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from maskseg.errors import VideoLoadError

# Formats FFmpeg reads that are single pictures, not clips.
STILL_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "pgm_pipe",
                 "ppm_pipe", "svg_pipe", "jpegxl_pipe", "heif")
DEFAULT_FPS = Fraction(25)
# H.264 at this quality looks like the overlay on screen; "veryfast" keeps encoding a small share
# of each frame's time next to the network (measured in benchmarks/bench_video.py).
X264_OPTIONS = {"crf": "20", "preset": "veryfast"}


@dataclass(frozen=True)
class ClipInfo:
    """What a clip is: frame size, rate, length (when the container says) and whether it has sound."""

    name: str
    width: int
    height: int
    fps: Fraction
    duration: float | None  # seconds
    frame_count: int | None  # what the container claims; None when it does not say
    codec: str
    has_audio: bool

    @property
    def expected_frames(self) -> int | None:
        """The container's frame count, else duration × rate."""
        if self.frame_count:
            return self.frame_count
        if self.duration:
            return max(1, round(self.duration * float(self.fps)))
        return None


def describe_seconds(seconds: float) -> str:
    """'42 s' or '3 min 5 s'."""
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def open_clip(path: str | Path, max_pixels: int) -> tuple[av.container.InputContainer, ClipInfo]:
    """The open container and its ClipInfo, or VideoLoadError with one sentence saying why not."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise VideoLoadError(f"{path} does not exist.")
    if path.stat().st_size == 0:
        raise VideoLoadError(f"{name} is empty (0 bytes), so it is not a video.")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise VideoLoadError(
            f"{name} could not be opened as a video: it is not a video file, or it is cut short or damaged "
            f"({_reason(exc)})."
        ) from None
    try:
        info = _clip_info(container, name, max_pixels)
    except Exception:
        container.close()
        raise
    return container, info


def _clip_info(container: av.container.InputContainer, name: str, max_pixels: int) -> ClipInfo:
    if container.format.name in STILL_FORMATS or not container.streams.video:
        what = "a still image" if container.format.name in STILL_FORMATS else "a file with no video in it"
        raise VideoLoadError(f"{name} is {what}, not a video; segment photos in the Segment tab or with `predict`.")
    stream = container.streams.video[0]
    context = stream.codec_context
    if context is None or not context.codec or not context.codec.is_decoder:
        codec = f"the {context.name} video codec" if context is not None and context.name else "a video codec FFmpeg does not know"
        raise VideoLoadError(f"{name} uses {codec}, which this server cannot decode; convert it to H.264 MP4 first.")
    width, height = int(context.width), int(context.height)
    if width <= 0 or height <= 0:
        raise VideoLoadError(f"{name} has no frame size, so its video cannot be decoded (is it damaged?).")
    if width * height > max_pixels:
        raise VideoLoadError(
            f"{name} is {width}×{height} ({width * height / 1e6:.1f} MP per frame), over this server's limit of "
            f"{max_pixels / 1e6:.1f} MP per frame; scale it down (for example to 1920×1080) first."
        )
    fps = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = Fraction(fps) if fps and 0 < float(fps) <= 240 else DEFAULT_FPS
    duration = None
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:
        duration = container.duration / av.time_base
    return ClipInfo(
        name=name, width=width, height=height, fps=fps, duration=duration,
        frame_count=int(stream.frames) or None, codec=context.name, has_audio=bool(container.streams.audio),
    )


def _reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).split(":")[-1].strip().rstrip(".") or type(exc).__name__


@dataclass
class DecodeCounts:
    """What decoding met on the way: packets that failed, and whether the file ended early."""

    skipped: int = 0
    ended_early: str | None = None  # why the rest of the file could not be read


def decoded_frames(
    container: av.container.InputContainer, counts: DecodeCounts
) -> Iterator[av.VideoFrame | av.AudioFrame]:
    """Every video frame (and audio frame, if there is audio) in file order.

    A packet that fails to decode is skipped and counted; a container that cannot be read further
    ends the iteration with the reason in `counts.ended_early`, keeping everything before it.
    """
    video = container.streams.video[0]
    video.thread_type = "AUTO"
    streams = [video, *container.streams.audio[:1]]
    packets = container.demux(*streams)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError as exc:
            counts.ended_early = _reason(exc)
            return
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            if packet.stream is video:
                counts.skipped += 1
            continue
        yield from frames


class Mp4Writer:
    """H.264 MP4 at a fixed rate, RGB frames in; the source's audio as AAC when given."""

    def __init__(self, path: str | Path, width: int, height: int, fps: Fraction,
                 audio: av.audio.stream.AudioStream | None = None) -> None:
        self.path = Path(path)
        self.width, self.height = width + width % 2, height + height % 2  # yuv420p needs even sides
        self.container = av.open(str(self.path), "w", format="mp4", options={"movflags": "+faststart"})
        self.video = self.container.add_stream("libx264", rate=fps, options=dict(X264_OPTIONS))
        self.video.width, self.video.height, self.video.pix_fmt = self.width, self.height, "yuv420p"
        self.frames = 0
        self.audio = self.resampler = None
        if audio is not None and audio.codec_context.sample_rate:
            rate = int(audio.codec_context.sample_rate)
            layout = "mono" if audio.codec_context.channels == 1 else "stereo"
            self.audio = self.container.add_stream("aac", rate=rate, layout=layout)
            self.resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate, frame_size=1024)
            self.audio_samples = 0

    def write(self, rgb: np.ndarray) -> None:
        """Append one RGB uint8 frame (odd sides are padded by repeating the last row/column)."""
        if rgb.shape[0] != self.height or rgb.shape[1] != self.width:
            rgb = np.pad(rgb, ((0, self.height - rgb.shape[0]), (0, self.width - rgb.shape[1]), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames
        self.frames += 1
        self.container.mux(self.video.encode(frame))

    def write_audio(self, frame: av.AudioFrame | None) -> None:
        """Append decoded source audio (None flushes the resampler's last samples)."""
        if self.audio is None:
            return
        frame_in = frame
        if frame_in is not None:
            frame_in.pts = None  # timing restarts at 0 like the video's
        for chunk in self.resampler.resample(frame_in):
            chunk.pts = self.audio_samples
            self.audio_samples += chunk.samples
            self.container.mux(self.audio.encode(chunk))

    def close(self) -> None:
        """Flush both encoders and finish the file (written even when no frame came)."""
        self.container.mux(self.video.encode(None))
        if self.audio is not None:
            self.write_audio(None)
            self.container.mux(self.audio.encode(None))
        self.container.close()
