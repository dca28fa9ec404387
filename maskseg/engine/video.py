"""Video in, video out: every frame through the Segmenter and the tracker, written as it goes.

`segment_video` decodes a clip (PyAV), segments every `frame_stride`-th frame with
`Segmenter.predict` (the only forward pass), gives objects track ids, and streams three files:
an H.264 MP4 overlay (source rate ÷ stride, source audio), COCO JSON (each frame an image,
`track_id` per object) and a CSV with `frame` and `time` columns. Nothing grows with the clip's
length but the per-track summary and the count-per-class series. Cancelling keeps what is done.
"""

from __future__ import annotations

import csv
import ctypes
import functools
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import av

from maskseg.engine.export import CSV_COLUMNS, coco_document, safe_folder_name
from maskseg.engine.prediction import Prediction
from maskseg.engine.render import RenderOptions, render_overlay
from maskseg.engine.segmenter import Segmenter
from maskseg.engine.tracker import IouTracker, track_prediction
from maskseg.engine.video_io import ClipInfo, DecodeCounts, Mp4Writer, decoded_frames, describe_seconds, open_clip
from maskseg.errors import UsageError, VideoLoadError

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".avi", ".gif", ".mkv", ".m4v")
VIDEO_CSV_COLUMNS = ["frame", "time", *CSV_COLUMNS]
DEFAULT_VIDEO_MAX_PIXELS = 3840 * 2160  # 4K UHD per frame
# Each frame frees what the last one allocated, but glibc keeps the freed pages: without handing them
# back, resident memory crept up ~7 MB per 100 frames at 720p; with it, flat (benchmarks/bench_video.py).
TRIM_EVERY_FRAMES = 10


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where there is no glibc (macOS, Windows, musl)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Give memory that was freed back to the system (a no-op without glibc)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@dataclass(frozen=True)
class VideoSettings:
    """The Segment tab's controls plus which frames: every `frame_stride`-th, the first `max_seconds`."""

    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    classes: tuple[str, ...] = ()
    max_detections: int = 100
    render: RenderOptions = RenderOptions()
    frame_stride: int = 1
    max_seconds: float | None = None  # segment only the start of the clip
    duration_limit: float | None = None  # refuse clips that would need more than this (a server's limit)
    max_pixels: int = DEFAULT_VIDEO_MAX_PIXELS


@dataclass(frozen=True)
class VideoProgress:
    """Frames segmented so far, of how many (None while unknown), and the time left at this pace."""

    done: int
    total: int | None
    elapsed: float

    @property
    def seconds_left(self) -> float | None:
        if not self.total or not self.done:
            return None
        return self.elapsed / self.done * max(self.total - self.done, 0)

    def describe(self) -> str:
        """'Frame 12 of 60 · 41 s left'."""
        text = f"Frame {self.done} of {self.total}" if self.total else f"Frame {self.done}"
        left = self.seconds_left
        return f"{text} · {describe_seconds(left)} left" if left is not None else text


@dataclass
class TrackSummary:
    """One track over the clip: class, first and last appearance, frames seen, best score."""

    id: int
    class_name: str
    first_frame: int
    first_time: float
    last_frame: int
    last_time: float
    frames: int = 1
    best_score: float = 0.0


TRACK_COLUMNS = ["#", "class", "first frame", "first s", "last frame", "last s", "frames", "best score"]


@dataclass
class VideoResult:
    """The written files and what the run found."""

    video_path: Path
    json_path: Path
    csv_path: Path
    clip: ClipInfo
    frames_done: int = 0
    frames_planned: int | None = None
    skipped: int = 0
    objects: int = 0
    cancelled: bool = False
    note: str | None = None  # why fewer frames than planned (file ended early, limit reached)
    seconds: float = 0.0
    model_title: str = ""
    device_name: str = ""
    tracks: dict[int, TrackSummary] = field(default_factory=dict)
    counts: list[tuple[int, float, str, int]] = field(default_factory=list)  # frame, time, class, objects

    def track_rows(self) -> list[list]:
        """One row per track (TRACK_COLUMNS), in id order."""
        return [
            [t.id, t.class_name, t.first_frame, round(t.first_time, 3), t.last_frame, round(t.last_time, 3),
             t.frames, round(t.best_score, 4)]
            for t in sorted(self.tracks.values(), key=lambda t: t.id)
        ]

    def summary(self) -> str:
        """One or two sentences a person reads after the run."""
        rate = self.frames_done / self.seconds if self.seconds else 0.0
        text = (
            f"Segmented {self.frames_done} frame{'s' if self.frames_done != 1 else ''} of {self.clip.name}: "
            f"{len(self.tracks)} tracked object{'s' if len(self.tracks) != 1 else ''} ({self.objects} detections) in "
            f"{self.seconds:.1f} s ({rate:.2f} frames/s) with {self.model_title} on {self.device_name}."
        )
        if self.cancelled:
            text += f" Cancelled after frame {self.frames_done}: the video, JSON and CSV hold the frames done."
        if self.note:
            text += f" {self.note}"
        if self.skipped:
            text += f" {self.skipped} frame{'s' if self.skipped != 1 else ''} could not be decoded and {'were' if self.skipped != 1 else 'was'} skipped."
        return text


def output_paths(out_dir: str | Path, stem: str) -> tuple[Path, Path, Path]:
    """<stem>_maskseg.mp4, <stem>_objects.json and <stem>_objects.csv in out_dir."""
    out_dir = Path(out_dir)
    stem = safe_folder_name(stem)
    return out_dir / f"{stem}_maskseg.mp4", out_dir / f"{stem}_objects.json", out_dir / f"{stem}_objects.csv"


def check_settings(settings: VideoSettings, clip: ClipInfo) -> int | None:
    """The number of frames this run will segment (None when the clip does not say), or a sentence."""
    if settings.frame_stride < 1:
        raise UsageError(f"The frame stride must be at least 1, not {settings.frame_stride}.")
    if settings.max_seconds is not None and settings.max_seconds <= 0:
        raise UsageError(f"The maximum duration must be more than 0 seconds, not {settings.max_seconds}.")
    length = clip.duration
    if length is not None and settings.max_seconds is not None:
        length = min(length, settings.max_seconds)
    limit = settings.duration_limit
    if limit is not None and length is not None and length > limit + 1e-6:
        raise VideoLoadError(
            f"{clip.name} is {describe_seconds(clip.duration or length)} long and this server segments at most "
            f"{describe_seconds(limit)} of video; set a maximum duration of {limit:g} s or less to segment its start."
        )
    frames = clip.expected_frames
    if frames is not None and settings.max_seconds is not None:
        frames = min(frames, max(1, round(settings.max_seconds * float(clip.fps))))
    return None if frames is None else -(-frames // settings.frame_stride)


def segment_video(
    segmenter: Segmenter,
    source: str | Path,
    out_dir: str | Path,
    settings: VideoSettings = VideoSettings(),
    progress: Callable[[VideoProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    stem: str | None = None,
) -> VideoResult:
    """Segment a clip into an overlay MP4, COCO JSON and CSV in `out_dir`; see the module docstring.

    Bad clips raise VideoLoadError with one sentence. Frames that fail to decode are skipped and
    counted; a file that ends early or a stop request keeps every frame already segmented.
    """
    container, clip = open_clip(source, settings.max_pixels)
    with container:
        planned = check_settings(settings, clip)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        paths = output_paths(out_dir, stem or Path(source).stem)
        result = VideoResult(*paths, clip=clip, frames_planned=planned,
                             model_title=segmenter.loaded.title, device_name=segmenter.loaded.device_name)
        run = _VideoRun(segmenter, settings, clip, result)
        try:
            run.loop(container, progress, should_stop)
        finally:
            run.close()
    if result.frames_done == 0:
        for path in paths:
            path.unlink(missing_ok=True)
        reason = f" ({result.note})" if result.note else ""
        raise VideoLoadError(f"{clip.name} has no frames that could be decoded, so nothing was segmented{reason}.")
    return result


class _VideoRun:
    """One clip's loop: the writers it streams into and the tracker it advances."""

    def __init__(self, segmenter: Segmenter, settings: VideoSettings, clip: ClipInfo, result: VideoResult) -> None:
        self.segmenter, self.settings, self.clip, self.result = segmenter, settings, clip, result
        self.tracker = IouTracker()
        self.writer: Mp4Writer | None = None
        self.fps = clip.fps / settings.frame_stride
        self.csv_file = open(result.csv_path, "w", newline="")
        self.csv = csv.writer(self.csv_file, lineterminator="\n")
        self.csv.writerow(VIDEO_CSV_COLUMNS)
        self.coco = CocoStream(result.json_path, clip)
        self.start_time: float | None = None

    def loop(self, container, progress, should_stop) -> None:
        result, settings = self.result, self.settings
        audio = container.streams.audio[0] if container.streams.audio else None
        self.writer = Mp4Writer(result.video_path, self.clip.width, self.clip.height, self.fps, audio)
        counts = DecodeCounts()
        started = time.perf_counter()
        index = -1
        for frame in decoded_frames(container, counts):
            at = self._seconds(frame)
            if settings.max_seconds is not None and at >= settings.max_seconds - 1e-9:
                if isinstance(frame, av.VideoFrame):
                    break
                continue
            if isinstance(frame, av.AudioFrame):
                self.writer.write_audio(frame)
                continue
            index += 1
            if index % settings.frame_stride:
                continue
            if should_stop is not None and should_stop():
                result.cancelled = True
                break
            self.segment_frame(frame, index, at)
            if result.frames_done % TRIM_EVERY_FRAMES == 0:
                release_freed_memory()
            result.seconds = time.perf_counter() - started
            if progress is not None:
                progress(VideoProgress(result.frames_done, result.frames_planned, result.seconds))
        result.skipped = counts.skipped
        result.seconds = time.perf_counter() - started
        if not result.cancelled:
            result.note = self._shortfall(index + 1, counts.ended_early)

    def _shortfall(self, frames_read: int, ended_early: str | None) -> str | None:
        """Why fewer frames than the clip has were segmented (besides a cancel), if they were."""
        limit, duration = self.settings.max_seconds, self.clip.duration
        if ended_early:
            return f"The file could not be read past frame {frames_read} ({ended_early}); the frames before it are kept."
        planned = self.result.frames_planned
        if planned and self.result.frames_done + self.result.skipped < planned * 0.98 - 1:
            return (f"The file ended after frame {frames_read} of the {self.clip.expected_frames} it announces "
                    "(it may be cut short); the frames before are kept.")
        if limit is not None and duration is not None and duration > limit:
            return f"Only the first {describe_seconds(limit)} of {describe_seconds(duration)} were segmented (maximum duration)."
        return None

    def _seconds(self, frame) -> float:
        """The frame's time from the start of the clip."""
        at = frame.time
        if at is None:
            return self.result.frames_done / float(self.clip.fps)
        if self.start_time is None and isinstance(frame, av.VideoFrame):
            self.start_time = at
        return max(0.0, at - (self.start_time or 0.0))

    def segment_frame(self, frame: av.VideoFrame, index: int, at: float) -> None:
        """Segment one frame, track it, and append it to the video, the CSV and the JSON."""
        settings, result = self.settings, self.result
        rgb = frame.to_ndarray(format="rgb24", width=self.clip.width, height=self.clip.height)
        view = self.segmenter.predict(
            [rgb], score_threshold=settings.score_threshold, mask_threshold=settings.mask_threshold,
            classes=list(settings.classes) or None, max_detections=settings.max_detections, batch_size=1,
        )[0]
        view.image_name = frame_name(result.clip.name, index)
        tracked = track_prediction(self.tracker, view)
        self.writer.write(render_overlay(tracked, settings.render))
        self.csv.writerows([index, round(at, 4), *row] for row in tracked.table_rows())
        self.coco.add(tracked, index, at)
        self._remember(tracked, index, at)

    def _remember(self, tracked: Prediction, index: int, at: float) -> None:
        result = self.result
        result.frames_done += 1
        result.objects += len(tracked.instances)
        per_class: dict[str, int] = {}
        for inst in tracked.instances:
            per_class[inst.class_name] = per_class.get(inst.class_name, 0) + 1
            track = result.tracks.get(inst.id)
            if track is None:
                result.tracks[inst.id] = TrackSummary(inst.id, inst.class_name, index, at, index, at, 1, inst.score)
            else:
                track.last_frame, track.last_time = index, at
                track.frames += 1
                track.best_score = max(track.best_score, inst.score)
        for name in sorted(set(per_class) | {t.class_name for t in result.tracks.values()}):
            result.counts.append((index, round(at, 4), name, per_class.get(name, 0)))

    def close(self) -> None:
        """Finish every file, whatever stopped the loop."""
        if self.writer is not None:
            self.writer.close()
        self.csv_file.close()
        self.coco.close(self.segmenter, self.result)


def frame_name(clip_name: str, index: int) -> str:
    """The JSON's file_name for a frame: <clip stem>_frame000123."""
    return f"{Path(clip_name).stem}_frame{index:06d}"


class CocoStream:
    """COCO JSON written frame by frame: annotations go to a side file, images are a few numbers each."""

    def __init__(self, path: Path, clip: ClipInfo) -> None:
        self.path = path
        self.clip = clip
        handle, side = tempfile.mkstemp(prefix=".annotations-", suffix=".jsonl", dir=path.parent)
        self.side = Path(side)
        self.annotations = os.fdopen(handle, "w")
        self.images: list[dict] = []
        self.info: dict | None = None
        self.next_id = 1

    def add(self, tracked: Prediction, index: int, at: float) -> None:
        document = coco_document(tracked)
        self.info = self.info or document
        image_id = index + 1
        self.images.append({"id": image_id, "file_name": tracked.image_name, "width": tracked.width,
                            "height": tracked.height, "frame": index, "time": round(at, 4)})
        for annotation in document["annotations"]:
            annotation.update(id=self.next_id, image_id=image_id, track_id=annotation["id"])
            self.next_id += 1
            self.annotations.write(json.dumps(annotation) + "\n")

    def close(self, segmenter: Segmenter, result: VideoResult) -> None:
        self.annotations.close()
        names = segmenter.loaded.class_names
        categories = [{"id": i, "name": n} for i, n in enumerate(names) if i > 0 and n not in ("N/A", "__background__")]
        info = dict((self.info or {}).get("info", {}), description="maskseg video prediction", video=self.clip.name,
                    fps=float(self.clip.fps), frames=len(self.images), model=result.model_title)
        with open(self.path, "w") as out:
            out.write('{"info": ' + json.dumps(info) + ', "images": ' + json.dumps(self.images))
            out.write(', "categories": ' + json.dumps(categories) + ', "annotations": [')
            with open(self.side) as side:
                for number, line in enumerate(side):
                    out.write(("," if number else "") + "\n" + line.rstrip("\n"))
            out.write("\n]}\n")
        self.side.unlink(missing_ok=True)


def loaded_model_costs() -> dict[str, float]:
    """Every model in this process's cache → a compute cost to rank them by (lower is faster).

    torchvision's GFLOPs for the zoo architectures (v1 134, v2 334), millions of parameters for
    the others (the MobileNet demo: a few), so a live stream can pick the fastest model in memory.
    """
    from maskseg.engine import models

    costs: dict[str, float] = {}
    for model in models.loaded_models():
        entry = models.ZOO.get(model.architecture)
        cost = entry.gflops if entry is not None else sum(model.stage_parameters.values()) / 1e6
        costs[model.key] = min(cost, costs.get(model.key, cost))
    return costs


def video_inputs(paths: Iterable[Path]) -> list[Path]:
    """Files named directly plus video files inside named folders (sorted)."""
    found: list[Path] = []
    for path in paths:
        if Path(path).is_dir():
            found.extend(sorted(p for p in Path(path).iterdir() if p.suffix.lower() in VIDEO_SUFFIXES))
        else:
            found.append(Path(path))
    return found
