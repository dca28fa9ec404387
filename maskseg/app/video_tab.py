"""The Video tab and `/video`: a clip in; an overlay MP4 with tracked colours, COCO JSON, CSV,
a table of tracks and a count-per-class plot out, with progress and Cancel."""

from __future__ import annotations

import gradio as gr

from maskseg.app.components import NETWORK, pass_upload_path_through, user_error
from maskseg.app.config import AppConfig
from maskseg.app.model_menu import make_segmenter, model_choices
from maskseg.app.video_handlers import VideoControls, cancel_clip, run_clip
from maskseg.engine.video import TRACK_COLUMNS
from maskseg.errors import MaskSegError

VIDEO_HELP = (
    "MP4, WebM, MOV, AVI or animated GIF. Each object keeps one id and colour from frame to frame; the "
    "video comes back as H.264 MP4 with the clip's sound, plus COCO JSON (each frame an image) and a CSV "
    "with `frame` and `time` columns. Cancel keeps the frames already done."
)


def _controls(config: AppConfig, class_names: list[str]) -> list:
    """Threshold, then the Segment tab's advanced controls, then frame stride and maximum duration."""
    threshold = gr.Slider(0.0, 1.0, value=config.score_threshold, step=0.01, label="Score threshold",
                          elem_id="video-threshold")
    with gr.Accordion("Advanced", open=False, elem_id="video-advanced"):
        mask_threshold = gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="Mask threshold", elem_id="video-mask-threshold")
        classes = gr.Dropdown(choices=class_names, value=[], multiselect=True, label="Only these classes (empty = all)",
                              elem_id="video-classes")
        max_objects = gr.Slider(1, 100, value=100, step=1, label="Maximum objects per frame", elem_id="video-max-objects")
        opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Mask opacity", elem_id="video-opacity")
        with gr.Row():
            layers = [gr.Checkbox(True, label=name.title(), elem_id=f"video-show-{name}")
                      for name in ("masks", "contours", "boxes", "labels")]
    with gr.Row():
        stride = gr.Slider(1, 30, value=1, step=1, label="Segment every Nth frame", elem_id="video-stride",
                           info="2 halves the time; the video plays at the source rate ÷ N.")
        max_seconds = gr.Number(value=0, label="Maximum duration (s, 0 = whole clip)", minimum=0,
                                elem_id="video-max-seconds",
                                info=f"This server segments at most {config.video_max_seconds:g} s per clip.")
    return [threshold, mask_threshold, classes, max_objects, opacity, *layers, stride, max_seconds]


def build_video_tab(config: AppConfig, default_model: str, class_names: list[str]) -> gr.Dropdown:
    """Lay out the Video tab inside the caller's gr.Tab and wire it; returns its model list."""
    gr.Markdown(VIDEO_HELP)
    with gr.Row():
        with gr.Column(scale=1):
            clip_in = gr.Video(label="Clip", sources=["upload"], elem_id="video-input")
            pass_upload_path_through(clip_in)
            model_dd = gr.Dropdown(choices=model_choices(config), value=default_model, label="Model", elem_id="video-model")
            controls = _controls(config, class_names)
            with gr.Row():
                run_btn = gr.Button("Segment video", variant="primary", elem_id="video-run")
                cancel_btn = gr.Button("Cancel", variant="stop", elem_id="video-cancel")
            status = gr.Textbox(label="Status", interactive=False, lines=2, elem_id="video-status")
        with gr.Column(scale=1):
            clip_out = gr.Video(label="Objects, tracked (H.264 MP4)", interactive=False, elem_id="video-output",
                                buttons=["download"])
            with gr.Row():
                json_out = gr.File(label="COCO JSON (each frame an image)", interactive=False, elem_id="video-json")
                csv_out = gr.File(label="CSV (frame, time, object)", interactive=False, elem_id="video-csv")
            counts = gr.LinePlot(x="time", y="objects", color="class", label="Objects per class over time",
                                 x_title="time (s)", y_title="objects", elem_id="video-counts")
    tracks = gr.Dataframe(headers=TRACK_COLUMNS, interactive=False, label="Tracked objects (# colour = video colour)",
                          elem_id="video-tracks")

    def segment_video(clip, model, score_threshold, mask_threshold, classes, max_objects, opacity, show_masks,
                      show_contours, show_boxes, show_labels, frame_stride, max_seconds,
                      progress=gr.Progress(), request: gr.Request = None):
        """Segment and track a clip: overlay video, COCO JSON, CSV, tracks, counts over time, status."""
        values = VideoControls(score_threshold, mask_threshold, classes, max_objects, opacity, show_masks,
                               show_contours, show_boxes, show_labels, frame_stride, max_seconds)
        return run_clip(config, clip, model, values, progress, request)

    def change_model(model):
        try:
            names = make_segmenter(model, config).class_names
        except MaskSegError as exc:
            raise user_error(exc) from exc
        return gr.Dropdown(choices=names, value=[])

    run_btn.click(
        segment_video, [clip_in, model_dd, *controls], [clip_out, json_out, csv_out, tracks, counts, status],
        api_name="video", concurrency_id=NETWORK, concurrency_limit=1,
    )
    cancel_btn.click(cancel_clip, None, [status], api_visibility="private", queue=False)
    model_dd.input(change_model, [model_dd], [controls[2]], api_visibility="private", concurrency_id=NETWORK)
    return model_dd
