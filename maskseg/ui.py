"""The Gradio web app: Segment, Batch, Train and About tabs, wired to maskseg.ui_core (no model code)."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import platform  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from maskseg import __version__  # noqa: E402
from maskseg.errors import MaskSegError  # noqa: E402
from maskseg.export import unique_stems, write_batch_zip, write_bundle_zip  # noqa: E402
from maskseg.images import load_image  # noqa: E402
from maskseg.prediction import TABLE_COLUMNS  # noqa: E402
from maskseg.render import color_hex, render_overlay  # noqa: E402
from maskseg.ui_core import (  # noqa: E402
    clamp_to_floor,
    BATCH_COLUMNS,
    NETWORK_RUNS,
    AppConfig,
    Controls,
    SessionResult,
    batch_rows,
    batch_status,
    collect_batch_images,
    fresh_output_path,
    make_segmenter,
    model_choices,
    progress_adapter,
    render_view,
    run_network,
    startup_model,
)

try:  # ZeroGPU on Hugging Face Spaces: the function that runs the network asks for a GPU.
    import spaces  # type: ignore

    gpu = spaces.GPU
except ImportError:  # everywhere else this is a no-op

    def gpu(fn):
        return fn


NETWORK = "network"  # one network run at a time per process (the model is shared)
RENDER = "render"  # re-filtering and drawing are cheap and may run beside a network run

CSS = """
#status textarea {font-weight: 600}
.maskseg-legend {line-height: 1.9}
"""


def pass_upload_path_through(component: gr.Image) -> gr.Image:
    """Make a gr.Image hand the uploaded file's path on untouched.

    Gradio's own preprocessing opens the file with PIL and fails with a bare error on a non-image;
    passing the path on lets maskseg.images.load_image give its one clear sentence instead.
    (An instance patch, not a subclass: a subclass makes Gradio write a .pyi file next to this one.)
    """
    original = component.preprocess

    def preprocess(payload):
        if payload is not None and getattr(payload, "path", None):
            return str(payload.path)
        return original(payload)

    component.preprocess = preprocess  # type: ignore[method-assign]
    return component


def _user_error(exc: MaskSegError) -> gr.Error:
    return gr.Error(str(exc), print_exception=False)


@gpu
def _predict_one(model_value: str, config: AppConfig, image: Any, controls: Controls):
    """The only call in the UI that runs the network for one image (GPU-decorated on ZeroGPU)."""
    return run_network(make_segmenter(model_value, config), image, controls)


@gpu
def _predict_many(model_value: str, config: AppConfig, images: list, progress_callback):
    segmenter = make_segmenter(model_value, config)
    NETWORK_RUNS.add(len(images))
    return segmenter.predict(images, score_threshold=config.score_threshold, progress=progress_callback)


def _controls(threshold, mask_threshold, classes, max_detections, opacity, masks, contours, boxes, labels) -> Controls:
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


def table_frame(rows: list[list], columns: list[str] = TABLE_COLUMNS):
    """A DataFrame whose '#' cells carry their object's overlay colour, so rows match objects."""
    frame = pd.DataFrame(rows, columns=columns)
    if frame.empty:
        return frame
    id_col = columns.index("#")

    def paint(row):
        styles = [""] * len(row)
        styles[id_col] = f"background-color: {color_hex(int(row.iloc[id_col]))}; font-weight: bold"
        return styles

    formats = {"score": "{:.3f}", "x1": "{:.1f}", "y1": "{:.1f}", "x2": "{:.1f}", "y2": "{:.1f}", "area_pct": "{:.2f}"}
    return frame.style.apply(paint, axis=1).format({k: v for k, v in formats.items() if k in frame.columns})


def about_markdown(model_value: str, config: AppConfig) -> str:
    """The About tab: the method in plain words, then the loaded model, device and versions."""
    try:
        loaded = make_segmenter(model_value, config).loaded
        info = loaded.info
        ap = (
            f"COCO val2017 box AP **{info['box_ap']:.1f}**, mask AP **{info['mask_ap']:.1f}**"
            if info.get("box_ap") is not None and info.get("mask_ap") is not None
            else "no COCO AP (not a COCO model)"
        )
        params = f"{info.get('num_params', 0) / 1e6:.1f} M parameters" if info.get("num_params") else ""
        size = f"{info.get('file_size_mb', 0):.1f} MB of weights" if info.get("file_size_mb") else ""
        model_lines = (
            f"- **{loaded.title}**: {ap}; {', '.join(x for x in (params, size) if x)}\n"
            f"- Classes: {len(loaded.real_class_names)}\n- Device: **{loaded.device_name}**"
        )
    except MaskSegError as exc:
        model_lines = f"- No model loaded: {exc}"
    versions = []
    for package in ("torch", "torchvision", "gradio", "numpy", "opencv-python-headless"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    return ABOUT_TEXT + f"""
## This app right now
{model_lines}
- maskseg {__version__}, Python {platform.python_version()}, {", ".join(versions)}
"""


ABOUT_TEXT = """
# How Mask R-CNN finds objects

Mask R-CNN answers three questions for every object in a photo: *what is it*, *where is it*
(a box) and *which pixels belong to it* (a mask). It does this in stages:

1. **Backbone and FPN.** A ResNet-50 network turns the photo into feature maps: grids of numbers
   that describe edges, textures and parts. The *Feature Pyramid Network* combines them at several
   scales, so small and large objects are both described well.
2. **Region proposals.** The *Region Proposal Network* slides over the feature maps and suggests
   about a thousand boxes that might contain *something*, without yet saying what.
3. **RoIAlign.** Each proposed box is cut out of the feature maps and resampled to a small fixed
   grid (7×7 for boxes, 14×14 for masks), with careful interpolation so the cut-out lines up
   with the real pixels.
4. **Box and class head.** A small network looks at each cut-out and says which class it is
   (person, dog, car, ... or background) with a confidence *score*, and nudges the box to fit.
5. **Mask head.** Another small network paints a 28×28 mask inside each kept box: the
   probability that each spot belongs to the object.
6. **Post-processing.** Overlapping boxes of the same class are merged (*non-maximum
   suppression*), boxes below the **score threshold** are dropped, and each 28×28 mask is resized
   to its box in the full photo and cut at the **mask threshold** to give the final pixels.

The sliders in the Segment tab act on step 6 only: that is why moving them is instant, while a
new photo or model runs all six steps again.
"""


def build_app(config: AppConfig | None = None) -> gr.Blocks:
    """The whole app as gr.Blocks; the launch model is loaded here so the first request is fast."""
    config = config or AppConfig()
    default_model, notice, model_ready = startup_model(config)
    if notice:
        print(f"maskseg: {notice}", flush=True)
    default_classes = make_segmenter(default_model, config).class_names if model_ready else []

    examples = sorted(str(p) for p in Path(config.examples_dir).glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))

    with gr.Blocks(title="maskseg: Mask R-CNN instance segmentation", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(
            "# maskseg\nInstance segmentation with Mask R-CNN: every object painted over your photo, "
            "a table with one row per object, and a download with every mask."
        )
        gr.Markdown(f"⚠️ {notice}" if notice else "", visible=bool(notice), elem_id="notice")
        session = gr.State(None)

        with gr.Tabs():
            # ------------------------------------------------------------ Segment
            with gr.Tab("Segment", id="segment") as segment_tab:
                with gr.Row():
                    with gr.Column(scale=1):
                        image_in = gr.Image(
                            label="Photo",
                            type="filepath",
                            image_mode=None,
                            sources=["upload", "webcam", "clipboard"],
                            elem_id="input-image",
                        )
                        pass_upload_path_through(image_in)
                        with gr.Row():
                            model_dd = gr.Dropdown(
                                choices=model_choices(config), value=default_model, label="Model",
                                elem_id="model", scale=5,
                            )
                            refresh_btn = gr.Button("↻", elem_id="refresh-models", scale=0, min_width=48)
                        threshold = gr.Slider(
                            0.0, 1.0, value=config.score_threshold, step=0.01, label="Score threshold",
                            info="Objects scoring below this are hidden (instant: no re-run).",
                            elem_id="threshold",
                        )
                        with gr.Accordion("Advanced", open=False, elem_id="advanced"):
                            mask_threshold = gr.Slider(
                                0.05, 0.95, value=0.5, step=0.05, label="Mask threshold", elem_id="mask-threshold"
                            )
                            classes = gr.Dropdown(
                                choices=default_classes, value=[], multiselect=True,
                                label="Only these classes (empty = all)", elem_id="classes",
                            )
                            max_detections = gr.Slider(
                                1, 100, value=100, step=1, label="Maximum objects", elem_id="max-objects"
                            )
                            opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Mask opacity", elem_id="opacity")
                            with gr.Row():
                                show_masks = gr.Checkbox(True, label="Masks", elem_id="show-masks")
                                show_contours = gr.Checkbox(True, label="Contours", elem_id="show-contours")
                                show_boxes = gr.Checkbox(True, label="Boxes", elem_id="show-boxes")
                                show_labels = gr.Checkbox(True, label="Labels", elem_id="show-labels")
                        run_btn = gr.Button("Segment", variant="primary", elem_id="run")
                        if examples:
                            gr.Examples(examples=[[p] for p in examples], inputs=[image_in], label="Example photos")
                    with gr.Column(scale=1):
                        overlay_out = gr.Image(
                            label="Objects", type="numpy", format="jpeg", interactive=False, elem_id="overlay",
                            buttons=["download", "fullscreen"],
                        )
                        status = gr.Textbox(label="Status", interactive=False, elem_id="status", lines=1)
                        legend = gr.HTML(elem_id="legend")
                        zip_out = gr.File(label="Download: overlay, masks, label map, JSON, CSV", elem_id="bundle")
                table = gr.Dataframe(
                    headers=TABLE_COLUMNS, interactive=False, label="Objects (# colour = overlay colour)",
                    elem_id="objects", wrap=True,
                )

            # ------------------------------------------------------------ Batch
            with gr.Tab("Batch", id="batch") as batch_tab:
                with gr.Row():
                    with gr.Column(scale=1):
                        batch_files = gr.File(
                            file_count="multiple", label="Images, or zips of images", elem_id="batch-files"
                        )
                        batch_model = gr.Dropdown(
                            choices=model_choices(config), value=default_model, label="Model", elem_id="batch-model"
                        )
                        batch_threshold = gr.Slider(
                            0.0, 1.0, value=config.score_threshold, step=0.01, label="Score threshold",
                            elem_id="batch-threshold",
                        )
                        batch_btn = gr.Button("Segment all", variant="primary", elem_id="batch-run")
                        batch_status_box = gr.Textbox(label="Status", interactive=False, lines=3, elem_id="batch-status")
                        batch_zip = gr.File(label="Download: one bundle folder per image", elem_id="batch-zip")
                    with gr.Column(scale=2):
                        gallery = gr.Gallery(label="Overlays", columns=3, format="jpeg", elem_id="batch-gallery")
                batch_table = gr.Dataframe(headers=BATCH_COLUMNS, interactive=False, label="All objects", elem_id="batch-table")

            # ------------------------------------------------------------ Train
            with gr.Tab("Train", id="train"):
                try:
                    from maskseg.ui_train import build_train_tab
                except ImportError as exc:
                    gr.Markdown(f"Training from the browser is not available in this build ({exc}).")
                else:
                    build_train_tab(config.checkpoints_dir)

            # ------------------------------------------------------------ About
            with gr.Tab("About", id="about"):
                about = gr.Markdown(
                    about_markdown(default_model, config) if model_ready else ABOUT_TEXT + f"\n\n{notice}",
                    elem_id="about-text",
                )

        # ------------------------------------------------------------ handlers
        control_inputs = [
            threshold, mask_threshold, classes, max_detections, opacity,
            show_masks, show_contours, show_boxes, show_labels,
        ]
        view_outputs = [overlay_out, table, legend, status, session]

        def view_values(result: SessionResult, controls: Controls, live: bool = False):
            view = render_view(result.base, controls, preview=result.preview_base() if live else None)
            return view, (view.overlay, table_frame(view.rows), view.legend_html, view.status, result)

        def segment(
            image, model, score_threshold, mask_threshold, classes, max_objects, opacity,
            show_masks, show_contours, show_boxes, show_labels,
        ):
            """Segment one photo: overlay, table, legend, status, bundle zip."""
            if image is None:
                raise gr.Error("Upload a photo or pick an example first.", print_exception=False)
            controls = _controls(
                score_threshold, mask_threshold, classes, max_objects, opacity,
                show_masks, show_contours, show_boxes, show_labels,
            )
            try:
                loaded = load_image(image, name=Path(str(image)).name, max_pixels=config.max_pixels)
                result = SessionResult(model, _predict_one(model, config, loaded, controls))
                view, values = view_values(result, controls)
                result.preview_base()  # ready for the first slider move
                zip_path = write_bundle_zip(
                    view.prediction, fresh_output_path(f"{view.prediction.image_stem}_maskseg"),
                    controls.render_options,
                )
            except MaskSegError as exc:
                raise _user_error(exc) from exc
            return (*values[:4], str(zip_path), values[4])

        def rerender(result: SessionResult | None, *control_values):
            """A control moved: re-filter and redraw the cached prediction (re-run only below its floor)."""
            if result is None:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip(), None
            controls, note = clamp_to_floor(result.base, _controls(*control_values))
            try:
                overlay, rows, legend_value, status_value, session_value = view_values(result, controls, live=True)[1]
            except MaskSegError as exc:
                raise _user_error(exc) from exc
            if note:
                status_value = f"{status_value} · {note}"
            return overlay, rows, legend_value, status_value, session_value

        def bundle_for_view(result: SessionResult | None, *control_values):
            if result is None:
                return None
            controls, _note = clamp_to_floor(result.base, _controls(*control_values))
            try:
                pred = result.base.filter(**_filter_kwargs(controls))
                return str(write_bundle_zip(pred, fresh_output_path(f"{pred.image_stem}_maskseg"), controls.render_options))
            except MaskSegError as exc:
                raise _user_error(exc) from exc

        def change_model(model, result: SessionResult | None, *control_values):
            """A new model: load it, refresh class list and About, and re-run the current photo."""
            try:
                segmenter = make_segmenter(model, config)
            except MaskSegError as exc:
                raise _user_error(exc) from exc
            class_update = gr.Dropdown(choices=segmenter.class_names, value=[])
            about_text = about_markdown(model, config)
            if result is None:
                return class_update, about_text, gr.skip(), gr.skip(), gr.skip(), gr.skip(), None
            controls = _controls(*control_values)
            controls.classes = []
            try:
                base = _predict_one(model, config, result.base.image, controls)
                base.image_name = result.base.image_name
                new = SessionResult(model, base)
                return class_update, about_text, *view_values(new, controls)[1]
            except MaskSegError as exc:
                raise _user_error(exc) from exc

        def refresh_models(current):
            choices = model_choices(config)
            values = [value for _, value in choices]
            return gr.Dropdown(choices=choices, value=current if current in values else default_model)

        def run_batch(files, model, score_threshold, progress=gr.Progress()):
            """Segment several photos (or zips of photos); non-images are listed as skipped."""
            paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (files or [])]
            if not paths:
                raise gr.Error("Add some images (or a zip of images) first.", print_exception=False)
            started = time.perf_counter()
            progress(0, desc="Reading files")
            collected = collect_batch_images(paths, config.max_pixels)
            if not collected.images:
                reasons = "; ".join(reason for _, reason in collected.skipped)
                raise gr.Error(f"None of the files is an image that can be read: {reasons}", print_exception=False)
            local = AppConfig(**{**config.__dict__, "score_threshold": float(score_threshold)})
            try:
                preds = _predict_many(model, local, collected.images, progress_adapter(progress))
            except MaskSegError as exc:
                raise _user_error(exc) from exc
            progress(1.0, desc="Writing the zip")
            names = unique_stems(preds)
            zip_path = write_batch_zip(preds, fresh_output_path("maskseg_batch"))
            gallery_items = [(render_overlay(p), f"{n}: {len(p.instances)} objects") for n, p in zip(names, preds)]
            frame = pd.DataFrame(batch_rows(preds, names), columns=BATCH_COLUMNS)
            return gallery_items, frame, str(zip_path), batch_status(preds, collected.skipped, time.perf_counter() - started)

        run_btn.click(
            segment, [image_in, model_dd, *control_inputs],
            [overlay_out, table, legend, status, zip_out, session],
            api_name="segment", concurrency_id=NETWORK, concurrency_limit=1,
        )
        for control in control_inputs:
            control.input(
                rerender, [session, *control_inputs], view_outputs,
                api_visibility="private", trigger_mode="always_last", show_progress="hidden",
                concurrency_id=RENDER, concurrency_limit=4,
            ).then(
                bundle_for_view, [session, *control_inputs], [zip_out],
                api_visibility="private", trigger_mode="always_last", show_progress="hidden",
                concurrency_id=RENDER, concurrency_limit=4,
            )
        model_dd.input(
            change_model, [model_dd, session, *control_inputs], [classes, about, *view_outputs],
            api_visibility="private", concurrency_id=NETWORK, concurrency_limit=1,
        ).then(
            bundle_for_view, [session, *control_inputs], [zip_out], api_visibility="private",
            concurrency_id=RENDER, concurrency_limit=4,
        )
        refresh_btn.click(refresh_models, [model_dd], [model_dd], api_visibility="private", queue=False)
        segment_tab.select(refresh_models, [model_dd], [model_dd], api_visibility="private", queue=False)
        # The Train tab adds checkpoints while the server runs: both model lists pick them up.
        batch_tab.select(refresh_models, [batch_model], [batch_model], api_visibility="private", queue=False)
        batch_btn.click(
            run_batch, [batch_files, batch_model, batch_threshold],
            [gallery, batch_table, batch_zip, batch_status_box],
            api_name="batch", concurrency_id=NETWORK, concurrency_limit=1,
        )
    demo.maskseg_config = config  # type: ignore[attr-defined]
    demo.maskseg_default_model = default_model  # type: ignore[attr-defined]
    demo.maskseg_notice = notice  # type: ignore[attr-defined]
    return demo


def _filter_kwargs(controls: Controls) -> dict:
    return {
        "score_threshold": controls.score_threshold,
        "classes": list(controls.classes) or None,
        "max_detections": max(1, int(controls.max_detections)),
        "mask_threshold": controls.mask_threshold,
    }


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           queue_size: int = 16, **kwargs: Any):
    """Queue (one network run at a time, bounded waiting line) and serve."""
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    return demo.launch(
        server_name=host, server_port=port, share=share, css=CSS, max_file_size="100mb", **kwargs
    )
