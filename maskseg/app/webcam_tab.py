"""The Webcam tab: the browser's camera streamed through a model, one frame at a time.

Frames that arrive while the last one is still being segmented are dropped, not queued, so what
is drawn is always the newest frame; the threshold, opacity and layers are read on every frame,
so they act live. Objects keep their ids (and colours) from frame to frame, as in the Video tab.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import gradio as gr
import numpy as np

from maskseg.app.components import user_error
from maskseg.app.config import AppConfig
from maskseg.app.model_menu import is_zoo_or_demo, make_segmenter, model_choices
from maskseg.engine.render import RenderOptions, render_overlay
from maskseg.engine.tracker import IouTracker, track_prediction
from maskseg.engine.video import loaded_model_costs
from maskseg.errors import MaskSegError

WEBCAM = "webcam"  # its own queue: live frames never wait behind a video or a batch
STREAM_EVERY_S = 0.1  # the browser offers a frame this often; busy sessions drop it
STREAM_MINUTES = 5  # each press of the camera button streams for at most this long
# Cameras may send 1920×1440 and more: the browser is asked for 1280×720, and larger frames are
# scaled down to this long side (INTER_AREA) before the model, which would shrink them anyway.
LIVE_MAX_SIDE = 1280
CAMERA = {"video": {"width": {"ideal": 1280}, "height": {"ideal": 720}}}


@dataclass
class LiveState:
    """One browser session's stream: its tracker, pace and how many frames it dropped."""

    tracker: IouTracker = field(default_factory=lambda: IouTracker(max_missed=5))
    busy: threading.Lock = field(default_factory=threading.Lock)
    last_done: float | None = None
    fps: float | None = None
    frames: int = 0
    dropped: int = 0

    def finished(self, now: float) -> None:
        """A frame was drawn: frames per second as a moving average of the gaps between frames."""
        if self.last_done is not None:
            rate = 1.0 / max(now - self.last_done, 1e-6)
            self.fps = rate if self.fps is None else 0.7 * self.fps + 0.3 * rate
        self.last_done = now
        self.frames += 1


def live_status(state: LiveState, model_title: str, frame_s: float, network_s: float, objects: int) -> str:
    """'4.2 frames/s · 230 ms a frame (180 ms network) · 3 objects · 12 dropped · Shapes demo'."""
    rate = f"{state.fps:.1f} frames/s" if state.fps is not None else "first frame"
    return (f"{rate} · {frame_s * 1000:.0f} ms a frame ({network_s * 1000:.0f} ms network) · {objects} "
            f"object{'s' if objects != 1 else ''} · {state.dropped} frame{'s' if state.dropped != 1 else ''} dropped · "
            f"{model_title}")


def segment_live(config: AppConfig, frame, model: str, threshold, opacity, masks, contours, boxes, labels,
                 state: LiveState | None):
    """Segment the newest camera frame, or drop it when this session is still busy with the last."""
    state = state if isinstance(state, LiveState) else LiveState()
    if frame is None:
        return gr.skip(), gr.skip(), state
    if not state.busy.acquire(blocking=False):
        state.dropped += 1
        return gr.skip(), gr.skip(), state
    started = time.perf_counter()
    try:
        segmenter = make_segmenter(model, config)
        view = segmenter.predict_one(live_size(frame), score_threshold=float(threshold if threshold is not None else 0.5))
        tracked = track_prediction(state.tracker, view)
        options = RenderOptions(opacity=float(opacity if opacity is not None else 0.5), masks=bool(masks),
                                contours=bool(contours), boxes=bool(boxes), labels=bool(labels))
        overlay = render_overlay(tracked, options)
        now = time.perf_counter()
        state.finished(now)
        text = live_status(state, view.model_title, now - started, view.inference_seconds, len(tracked.instances))
        return overlay, text, state
    except MaskSegError as exc:  # in the status line: an error toast per frame would bury the page
        return gr.skip(), user_error(exc).message, state
    finally:
        state.busy.release()


def live_size(frame: np.ndarray) -> np.ndarray:
    """The frame with its long side at most LIVE_MAX_SIDE."""
    scale = LIVE_MAX_SIDE / max(frame.shape[:2])
    if scale >= 1.0:
        return frame
    size = (max(1, round(frame.shape[1] * scale)), max(1, round(frame.shape[0] * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def fastest_model(config: AppConfig, current: str | None = None) -> str | None:
    """The menu's model with the least compute among those this process has loaded; `current` when
    none of the loaded ones is in the menu (a person can always pick another)."""
    costs = loaded_model_costs()
    ranked = []
    for _label, value in model_choices(config):
        key = value if is_zoo_or_demo(value) else str(Path(value).resolve())
        if key in costs:
            ranked.append((costs[key], value))
    return min(ranked)[1] if ranked else current


def build_webcam_tab(config: AppConfig, default_model: str) -> gr.Dropdown:
    """Lay out the Webcam tab inside the caller's gr.Tab and wire the stream; returns its model list
    (the caller points it at the fastest loaded model whenever the tab is opened)."""
    gr.Markdown(
        "Press the camera button to stream: each frame goes through the model and comes back painted. "
        "Frames that arrive while one is being segmented are dropped, so the picture stays current; "
        "the threshold and layers apply to the next frame."
    )
    with gr.Row():
        with gr.Column(scale=1):
            camera = gr.Image(label="Camera", sources=["webcam"], streaming=True, type="numpy", elem_id="webcam-input",
                              webcam_options=gr.WebcamOptions(constraints=CAMERA))
            model_dd = gr.Dropdown(choices=model_choices(config), value=fastest_model(config, default_model),
                                   info="The fastest model loaded on this server, when you open this tab.",
                                   label="Model", elem_id="webcam-model")
            threshold = gr.Slider(0.0, 1.0, value=config.score_threshold, step=0.01, label="Score threshold",
                                  elem_id="webcam-threshold")
            opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Mask opacity", elem_id="webcam-opacity")
            with gr.Row():
                layers = [gr.Checkbox(True, label=name.title(), elem_id=f"webcam-show-{name}")
                          for name in ("masks", "contours", "boxes", "labels")]
        with gr.Column(scale=1):
            live = gr.Image(label="Objects, live", type="numpy", format="jpeg", interactive=False, elem_id="webcam-output")
            status = gr.Textbox(label="Speed", interactive=False, elem_id="webcam-status")
    state = gr.State(None)
    camera.stream(
        lambda *values: segment_live(config, *values), [camera, model_dd, threshold, opacity, *layers, state],
        [live, status, state], stream_every=STREAM_EVERY_S, time_limit=STREAM_MINUTES * 60,
        concurrency_id=WEBCAM, concurrency_limit=2, api_visibility="private", show_progress="hidden",
    )
    return model_dd


def pick_fastest(config: AppConfig):
    """For the tab's select event: the model list again, on the fastest model loaded now."""
    def pick(current):
        return gr.Dropdown(choices=model_choices(config), value=fastest_model(config, current))

    return pick
