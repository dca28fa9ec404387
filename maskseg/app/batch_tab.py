"""The Batch tab: many photos (or zips of photos) in; a gallery, one table and one zip out."""

from __future__ import annotations

import time

import gradio as gr
import pandas as pd

from maskseg.app.batch import BATCH_COLUMNS, batch_rows, batch_status, progress_adapter
from maskseg.app.components import NETWORK, gpu, user_error
from maskseg.app.config import AppConfig
from maskseg.app.model_menu import make_segmenter, model_choices
from maskseg.app.session import NETWORK_RUNS
from maskseg.app.tempfiles import TEMP_FILES
from maskseg.engine.export import unique_stems, write_batch_zip
from maskseg.engine.render import render_overlay
from maskseg.engine.sources import collect_batch_images
from maskseg.errors import MaskSegError


def batch_seconds(model_value: str, config: AppConfig, score_threshold: float, images: list, progress) -> int:
    """ZeroGPU's time slot for a batch: a start-up allowance plus a few seconds per photo."""
    return 20 + 3 * len(images)


@gpu(duration=batch_seconds)
def predict_photos(model_value: str, config: AppConfig, score_threshold: float, images: list, progress):
    """The only call in the Batch tab that runs the network (GPU-decorated on ZeroGPU, so it takes
    Gradio's own Progress, which crosses into the GPU worker, not a local callback, which cannot)."""
    segmenter = make_segmenter(model_value, config)
    NETWORK_RUNS.add(len(images))
    return segmenter.predict(images, score_threshold=score_threshold, progress=progress_adapter(progress))


def build_batch_tab(config: AppConfig, default_model: str) -> gr.Dropdown:
    """Lay out the Batch tab inside the caller's gr.Tab and wire it; returns its model list."""
    with gr.Row():
        with gr.Column(scale=1):
            file_input = gr.File(file_count="multiple", label="Images, or zips of images", elem_id="batch-files")
            model_input = gr.Dropdown(choices=model_choices(config), value=default_model, label="Model", elem_id="batch-model")
            threshold = gr.Slider(
                0.0, 1.0, value=config.score_threshold, step=0.01, label="Score threshold", elem_id="batch-threshold"
            )
            run_btn = gr.Button("Segment all", variant="primary", elem_id="batch-run")
            status = gr.Textbox(label="Status", interactive=False, lines=3, elem_id="batch-status")
            bundle = gr.File(label="Download: one bundle folder per image", elem_id="batch-zip")
        with gr.Column(scale=2):
            gallery = gr.Gallery(label="Overlays", columns=3, format="jpeg", elem_id="batch-gallery")
    table = gr.Dataframe(headers=BATCH_COLUMNS, interactive=False, label="All objects", elem_id="batch-table")

    def run_batch(files, model, score_threshold, progress=gr.Progress(), request: gr.Request = None):
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
        try:
            preds = predict_photos(model, config, float(score_threshold), collected.images, progress)
        except MaskSegError as exc:
            raise user_error(exc) from exc
        progress(1.0, desc="Writing the zip")
        names = unique_stems(preds)
        zip_path = write_batch_zip(preds, TEMP_FILES.new_path("maskseg_batch", request=request))
        gallery_items = [(render_overlay(p), f"{n}: {len(p.instances)} objects") for n, p in zip(names, preds)]
        frame = pd.DataFrame(batch_rows(preds, names), columns=BATCH_COLUMNS)
        return gallery_items, frame, str(zip_path), batch_status(preds, collected.skipped, time.perf_counter() - started)

    run_btn.click(
        run_batch, [file_input, model_input, threshold], [gallery, table, bundle, status],
        api_name="batch", concurrency_id=NETWORK, concurrency_limit=1,
    )
    return model_input
