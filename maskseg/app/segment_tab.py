"""The Segment tab: one photo in; overlay, table, legend, cut-outs, and a download built on request."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from maskseg.app.components import NETWORK, RENDER, ZERO_GPU, gpu, pass_upload_path_through, table_frame, user_error
from maskseg.app.config import AppConfig
from maskseg.app.controls import Controls, clamp_to_floor
from maskseg.app.examples import ExampleSets
from maskseg.app.model_menu import make_segmenter, model_choices
from maskseg.app.session import SessionResult, run_network
from maskseg.app.tempfiles import TEMP_FILES
from maskseg.app.view import cutout_gallery, render_view
from maskseg.engine.export import write_bundle_zip
from maskseg.engine.images import load_image
from maskseg.engine.prediction import TABLE_COLUMNS
from maskseg.errors import MaskSegError


@gpu(duration=30)
def predict_photo(model_value: str, config: AppConfig, image: Any, controls: Controls):
    """The only call in the Segment tab that runs the network (GPU-decorated on ZeroGPU, where its
    answer leaves the GPU worker complete: every candidate's mask, no features)."""
    return run_network(make_segmenter(model_value, config), image, controls, detached=ZERO_GPU)


def controls_from(threshold, mask_threshold, classes, max_detections, opacity, masks, contours, boxes, labels) -> Controls:
    """The tab's control values (any of which may be None from an API call) as Controls."""
    return Controls(
        score_threshold=float(threshold if threshold is not None else 0.5),
        mask_threshold=float(mask_threshold if mask_threshold is not None else 0.5),
        classes=list(classes or []),
        max_detections=int(max_detections or 100),
        opacity=float(opacity if opacity is not None else 0.5),
        masks=bool(masks),
        contours=bool(contours),
        boxes=bool(boxes),
        labels=bool(labels),
    )


@dataclass
class SegmentTab:
    """The components other tabs and the top level wire to."""

    model: gr.Dropdown
    classes: gr.Dropdown
    session: gr.State
    handlers: "SegmentHandlers"


def _photo_column(config: AppConfig, default_model: str, class_names: list[str], examples: ExampleSets):
    """Left column: photo, model, threshold, advanced controls, Segment button, examples."""
    image_in = gr.Image(
        label="Photo", type="filepath", image_mode=None, sources=["upload", "webcam", "clipboard"],
        elem_id="input-image",
    )
    pass_upload_path_through(image_in)
    with gr.Row():
        model_dd = gr.Dropdown(
            choices=model_choices(config), value=default_model, label="Model", elem_id="model", scale=5,
            info="Changing it re-runs the current photo.",
        )
        refresh_btn = gr.Button("↻", elem_id="refresh-models", scale=0, min_width=48)
    threshold = gr.Slider(
        0.0, 1.0, value=config.score_threshold, step=0.01, label="Score threshold",
        info="Objects scoring below this are hidden (instant: no re-run).", elem_id="threshold",
    )
    with gr.Accordion("Advanced", open=False, elem_id="advanced"):
        mask_threshold = gr.Slider(
            0.05, 0.95, value=0.5, step=0.05, label="Mask threshold", elem_id="mask-threshold",
            info="How sure the mask head must be that a pixel belongs to the object.",
        )
        classes = gr.Dropdown(
            choices=class_names, value=[], multiselect=True, label="Only these classes (empty = all)",
            elem_id="classes",
        )
        max_detections = gr.Slider(1, 100, value=100, step=1, label="Maximum objects", elem_id="max-objects")
        opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Mask opacity", elem_id="opacity")
        with gr.Row():
            show_masks = gr.Checkbox(True, label="Masks", elem_id="show-masks")
            show_contours = gr.Checkbox(True, label="Contours", elem_id="show-contours")
            show_boxes = gr.Checkbox(True, label="Boxes", elem_id="show-boxes")
            show_labels = gr.Checkbox(True, label="Labels", elem_id="show-labels")
    run_btn = gr.Button("Segment", variant="primary", elem_id="run")
    example_columns = examples.build(image_in, class_names)
    controls = [threshold, mask_threshold, classes, max_detections, opacity, show_masks, show_contours, show_boxes, show_labels]
    return image_in, model_dd, refresh_btn, controls, run_btn, example_columns


def _result_column():
    """Right column: overlay, status, legend, download, cut-outs."""
    overlay_out = gr.Image(
        label="Objects", type="numpy", format="jpeg", interactive=False, elem_id="overlay",
        buttons=["download", "fullscreen"],
    )
    status = gr.Textbox(label="Status", interactive=False, elem_id="status", lines=1)
    legend = gr.HTML(elem_id="legend")
    download_btn = gr.Button("Prepare download (zip of what is on screen)", elem_id="download", size="md")
    zip_out = gr.File(
        label="Overlay, masks, cut-outs, label map, COCO JSON and CSV", elem_id="bundle", interactive=False,
        height=70,
    )
    cutouts = gr.Gallery(
        label="Cut-outs (transparent PNG, one per object)", columns=6, height=220, format="png",
        elem_id="cutouts", object_fit="contain",
    )
    return overlay_out, status, legend, download_btn, zip_out, cutouts


def build_segment_tab(config: AppConfig, default_model: str, class_names: list[str], examples: ExampleSets) -> SegmentTab:
    """Lay out the Segment tab inside the caller's gr.Tab and wire its events."""
    with gr.Row():
        with gr.Column(scale=1):
            image_in, model_dd, refresh_btn, controls, run_btn, example_columns = _photo_column(
                config, default_model, class_names, examples
            )
        with gr.Column(scale=1):
            overlay_out, status, legend, download_btn, zip_out, cutouts = _result_column()
    table = gr.Dataframe(
        headers=TABLE_COLUMNS, interactive=False, label="Objects (# colour = overlay colour)",
        elem_id="objects", wrap=True,
    )
    session = gr.State(None)
    api_segment = gr.Button(visible=False, elem_id="api-segment")  # /segment: the same run, plus its zip
    handlers = SegmentHandlers(config, default_model, examples)
    view_outputs = [overlay_out, table, legend, status, session]
    run_btn.click(
        handlers.run_for_page, [image_in, model_dd, *controls], [*view_outputs, zip_out, cutouts],
        api_visibility="private", concurrency_id=NETWORK, concurrency_limit=1,
    )
    api_segment.click(
        handlers.segment, [image_in, model_dd, *controls],
        [overlay_out, table, legend, status, zip_out, session],
        api_name="segment", concurrency_id=NETWORK, concurrency_limit=1,
    )
    for index, control in enumerate(controls):
        event = control.input(
            handlers.rerender, [session, *controls], [*view_outputs, zip_out],
            api_visibility="private", trigger_mode="always_last", show_progress="hidden",
            concurrency_id=RENDER, concurrency_limit=4,
        )
        if index < 4:  # what is shown changed (not only how it is drawn): the cut-outs follow the overlay
            event.then(handlers.cutouts, [session, *controls], [cutouts], api_visibility="private",
                       trigger_mode="always_last", show_progress="hidden", concurrency_id=RENDER)
    download_btn.click(handlers.download, [session, *controls], [zip_out], api_visibility="private",
                       concurrency_id=RENDER, concurrency_limit=4)
    model_dd.input(
        handlers.change_model, [model_dd, session, *controls],
        [controls[2], *view_outputs, zip_out, cutouts, *example_columns],
        api_visibility="private", concurrency_id=NETWORK, concurrency_limit=1,
    )
    refresh_btn.click(handlers.refresh_models, [model_dd], [model_dd], api_visibility="private", queue=False)
    return SegmentTab(model=model_dd, classes=controls[2], session=session, handlers=handlers)


class SegmentHandlers:
    """The Segment tab's event handlers, over one app configuration."""

    def __init__(self, config: AppConfig, default_model: str, examples: ExampleSets) -> None:
        self.config = config
        self.default_model = default_model
        self.examples = examples

    def _view(self, result: SessionResult, controls: Controls, live: bool = False) -> tuple:
        view = render_view(result.base, controls, preview=result.preview_base() if live else None)
        return view, (view.overlay, table_frame(view.rows), view.legend_html, view.status, result)

    def _run(self, image, model, control_values, request: gr.Request | None) -> tuple[SessionResult, Controls]:
        if image is None:
            raise gr.Error("Upload a photo or pick an example first.", print_exception=False)
        controls = controls_from(*control_values)
        try:
            loaded = load_image(image, name=Path(str(image)).name, max_pixels=self.config.max_pixels)
            result = SessionResult(model, predict_photo(model, self.config, loaded, controls))
        except MaskSegError as exc:
            raise user_error(exc) from exc
        return result, controls

    def run_for_page(self, image, model, *control_values, request: gr.Request = None):
        """Segment one photo: overlay, table, legend, status; the zip waits for Download."""
        result, controls = self._run(image, model, control_values, request)
        view, values = self._view(result, controls)
        result.preview_base()  # ready for the first slider move
        return (*values, None, cutout_gallery(result, controls))

    def segment(
        self, image, model, score_threshold, mask_threshold, classes, max_objects, opacity,
        show_masks, show_contours, show_boxes, show_labels, request: gr.Request = None,
    ):
        """Segment one photo: overlay, table, legend, status and the bundle zip (the /segment API)."""
        control_values = (
            score_threshold, mask_threshold, classes, max_objects, opacity,
            show_masks, show_contours, show_boxes, show_labels,
        )
        result, controls = self._run(image, model, control_values, request)
        view, values = self._view(result, controls)
        try:
            zip_path = write_bundle_zip(
                view.prediction, TEMP_FILES.new_path(f"{view.prediction.image_stem}_maskseg", request=request),
                controls.render_options,
            )
        except MaskSegError as exc:
            raise user_error(exc) from exc
        return (*values[:4], str(zip_path), values[4])

    def rerender(self, result: SessionResult | None, *control_values):
        """A control moved: re-filter and redraw the cached prediction; the old zip no longer applies."""
        if result is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), None, gr.skip()
        TEMP_FILES.maybe_prune()  # each move leaves an overlay in Gradio's cache
        controls, note = clamp_to_floor(result.base, controls_from(*control_values))
        try:
            overlay, rows, legend_value, status_value, session_value = self._view(result, controls, live=True)[1]
        except MaskSegError as exc:
            raise user_error(exc) from exc
        if note:
            status_value = f"{status_value} · {note}"
        return overlay, rows, legend_value, status_value, session_value, None

    def cutouts(self, result: SessionResult | None, *control_values):
        """The cut-out gallery for what the controls show."""
        if result is None:
            return gr.skip()
        controls, _note = clamp_to_floor(result.base, controls_from(*control_values))
        return cutout_gallery(result, controls)

    def download(self, result: SessionResult | None, *control_values, request: gr.Request = None):
        """Build the bundle zip of exactly what is on screen, now that someone asked for it."""
        if result is None:
            raise gr.Error("Segment a photo first; the download holds its objects.", print_exception=False)
        controls, _note = clamp_to_floor(result.base, controls_from(*control_values))
        try:
            pred = result.base.filter(
                score_threshold=controls.score_threshold, classes=list(controls.classes) or None,
                max_detections=max(1, int(controls.max_detections)), mask_threshold=controls.mask_threshold,
            )
            path = TEMP_FILES.new_path(f"{pred.image_stem}_maskseg", request=request)
            return str(write_bundle_zip(pred, path, controls.render_options))
        except MaskSegError as exc:
            raise user_error(exc) from exc

    def change_model(self, model, result: SessionResult | None, *control_values):
        """A new model: its classes and examples, and the current photo re-run with it."""
        try:
            segmenter = make_segmenter(model, self.config)
        except MaskSegError as exc:
            raise user_error(exc) from exc
        class_update = gr.Dropdown(choices=segmenter.class_names, value=[])
        example_updates = self.examples.updates_for(segmenter.class_names)
        if result is None:
            return (class_update, gr.skip(), gr.skip(), gr.skip(), gr.skip(), None, None, None, *example_updates)
        controls = controls_from(*control_values)
        controls.classes = []
        try:
            base = predict_photo(model, self.config, result.base.image, controls)
        except MaskSegError as exc:
            raise user_error(exc) from exc
        base.image_name = result.base.image_name
        new = SessionResult(model, base)
        return (class_update, *self._view(new, controls)[1], None, cutout_gallery(new, controls), *example_updates)

    def refresh_models(self, current):
        """The model list again: the Train tab may have saved a checkpoint since."""
        choices = model_choices(self.config)
        values = [value for _, value in choices]
        return gr.Dropdown(choices=choices, value=current if current in values else self.default_model)
