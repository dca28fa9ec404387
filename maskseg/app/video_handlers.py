"""The Video tab's logic: one clip run per session with progress and a Cancel that keeps the work done."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from maskseg.app.components import ZERO_GPU, gpu, table_frame, user_error
from maskseg.app.config import AppConfig
from maskseg.app.model_menu import make_segmenter
from maskseg.app.session import NETWORK_RUNS
from maskseg.app.tempfiles import TEMP_FILES
from maskseg.engine.render import RenderOptions
from maskseg.engine.video import (DEFAULT_VIDEO_MAX_PIXELS, TRACK_COLUMNS, VideoProgress, VideoResult,
                                  VideoSettings, segment_video)
from maskseg.errors import MaskSegError

COUNT_COLUMNS = ["time", "class", "objects"]


class StopFlags:
    """One stop flag per browser session: Cancel sets it, the running clip checks it between frames."""

    def __init__(self) -> None:
        self._flags: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> threading.Event:
        """A fresh flag for a new run of this session."""
        with self._lock:
            flag = self._flags[session] = threading.Event()
        return flag

    def stop(self, session: str) -> bool:
        """Ask this session's run to stop; False when it has none."""
        with self._lock:
            flag = self._flags.get(session)
        if flag is None:
            return False
        flag.set()
        return True

    def finish(self, session: str, flag: threading.Event) -> None:
        with self._lock:
            if self._flags.get(session) is flag:
                del self._flags[session]


STOPS = StopFlags()


@dataclass(frozen=True)
class VideoControls:
    """The tab's control values (None from an API call that leaves them out)."""

    score_threshold: float | None = 0.5
    mask_threshold: float | None = 0.5
    classes: list | None = None
    max_objects: float | None = 100
    opacity: float | None = 0.5
    masks: bool | None = True
    contours: bool | None = True
    boxes: bool | None = True
    labels: bool | None = True
    frame_stride: float | None = 1
    max_seconds: float | None = None

    def settings(self, config: AppConfig) -> VideoSettings:
        def given(value, default):
            return default if value is None else value

        return VideoSettings(
            score_threshold=float(given(self.score_threshold, 0.5)), mask_threshold=float(given(self.mask_threshold, 0.5)),
            classes=tuple(self.classes or ()), max_detections=max(1, int(given(self.max_objects, 100))),
            render=RenderOptions(opacity=float(given(self.opacity, 0.5)), masks=bool(given(self.masks, True)),
                                 contours=bool(given(self.contours, True)), boxes=bool(given(self.boxes, True)),
                                 labels=bool(given(self.labels, True))),
            frame_stride=max(1, int(given(self.frame_stride, 1))),
            max_seconds=float(self.max_seconds) if self.max_seconds else None,
            duration_limit=config.video_max_seconds,
            max_pixels=min(config.max_pixels, DEFAULT_VIDEO_MAX_PIXELS),
        )


class ClipProgress:
    """The engine's progress callback drawn on Gradio's Progress: a class, not a closure, so that it
    pickles into ZeroGPU's worker along with the Progress it holds."""

    def __init__(self, progress) -> None:
        self.progress = progress

    def __call__(self, update: VideoProgress) -> None:
        if update.total:
            self.progress((update.done, update.total), desc=update.describe(), unit="frames")
        else:
            self.progress(None, desc=update.describe())


@gpu(duration=300)  # ZeroGPU cuts a longer clip at its time limit
def predict_clip(model_value: str, config: AppConfig, clip: str, out_dir: Path, settings: VideoSettings,
                 progress, should_stop) -> VideoResult:
    """The only call in the Video tab that runs the network (GPU-decorated on ZeroGPU)."""
    segmenter = make_segmenter(model_value, config)

    def counted(update: VideoProgress) -> None:
        NETWORK_RUNS.add(1)
        progress(update)

    return segment_video(segmenter, clip, out_dir, settings, progress=counted, should_stop=should_stop)


def counts_frame(result: VideoResult) -> pd.DataFrame:
    """Objects per class over time, for the line plot."""
    return pd.DataFrame([(at, name, count) for _frame, at, name, count in result.counts], columns=COUNT_COLUMNS)


def run_clip(config: AppConfig, clip, model: str, controls: VideoControls, progress, request) -> tuple:
    """Segment a clip: overlay video, JSON, CSV, track table, count plot and status."""
    path = clip if isinstance(clip, str) else getattr(clip, "path", None) or (clip or {}).get("video")
    if not path:
        raise gr.Error("Upload a video clip first.", print_exception=False)
    session = getattr(request, "session_hash", None) or "api"
    flag = STOPS.start(session)
    progress(0, desc="Reading the clip")

    out_dir = TEMP_FILES.new_path(Path(str(path)).stem + "_video", suffix="", request=request).parent
    try:
        result = predict_clip(model, config, str(path), out_dir, controls.settings(config), ClipProgress(progress),
                             None if ZERO_GPU else flag.is_set)  # a stop flag cannot reach ZeroGPU's worker
    except MaskSegError as exc:
        raise user_error(exc) from exc
    finally:
        STOPS.finish(session, flag)
    tracks = table_frame(result.track_rows(), TRACK_COLUMNS)
    if hasattr(tracks, "format"):  # a Styler (rows to colour): seconds and scores at a readable precision
        tracks = tracks.format({"first s": "{:.2f}", "last s": "{:.2f}", "best score": "{:.3f}"})
    return (str(result.video_path), str(result.json_path), str(result.csv_path), tracks, counts_frame(result),
            result.summary())


def cancel_clip(request: gr.Request = None) -> str:
    """Cancel pressed: the run stops after its current frame and keeps what it did."""
    session = getattr(request, "session_hash", None) or "api"
    if STOPS.stop(session):
        return "Stopping after the current frame; the frames done so far are kept…"
    return gr.skip()
