"""The whole web app: the tabs wired by one short builder, then queued and served."""

from __future__ import annotations

import os

# Before Gradio is imported: no usage analytics from a classroom laptop.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402

from maskseg.app.about_tab import about_markdown, build_about_tab  # noqa: E402
from maskseg.app.batch_tab import build_batch_tab  # noqa: E402
from maskseg.app.config import AppConfig  # noqa: E402
from maskseg.app.examples import ExampleSets  # noqa: E402
from maskseg.app.explorer_handlers import TRACES  # noqa: E402
from maskseg.app.explorer_tab import EXPLORER_CSS, build_explorer_tab  # noqa: E402
from maskseg.app.components import ZERO_GPU  # noqa: E402
from maskseg.app.model_menu import make_segmenter, preload_menu_models, startup_model  # noqa: E402
from maskseg.app.segment_tab import build_segment_tab  # noqa: E402
from maskseg.app.tempfiles import TEMP_FILES  # noqa: E402
from maskseg.app.video_tab import build_video_tab  # noqa: E402
from maskseg.app.webcam_tab import build_webcam_tab, pick_fastest  # noqa: E402

CSS = """
#status textarea {font-weight: 600}
.maskseg-legend {line-height: 1.9}
""" + EXPLORER_CSS

TITLE = (
    "# maskseg\nInstance segmentation with Mask R-CNN: every object painted over your photo, "
    "a table with one row per object, and a download with every mask."
)


def build_app(config: AppConfig | None = None) -> gr.Blocks:
    """The whole app as gr.Blocks; the launch model is loaded here so the first request is fast."""
    config = config or AppConfig()
    startup = startup_model(config)
    if ZERO_GPU:  # the decorated calls then only run inference on models already on the GPU
        preload_menu_models(config)
    if startup.operator_notice:
        print(f"maskseg: {startup.operator_notice}", flush=True)
    class_names = make_segmenter(startup.model, config).class_names if startup.ready else []
    examples = ExampleSets(config.examples_dir)

    with gr.Blocks(title="maskseg: Mask R-CNN instance segmentation") as demo:
        gr.Markdown(TITLE)
        notice = startup.visitor_notice
        gr.Markdown(f"ℹ️ {notice}" if notice else "", visible=bool(notice), elem_id="notice")
        with gr.Tabs():
            with gr.Tab("Segment", id="segment") as segment_tab:
                segment = build_segment_tab(config, startup.model, class_names, examples)
            with gr.Tab("Inside Mask R-CNN", id="explorer"):
                build_explorer_tab(config, startup.model, class_names, examples)
            with gr.Tab("Batch", id="batch") as batch_tab:
                batch_model = build_batch_tab(config, startup.model)
            with gr.Tab("Video", id="video") as video_tab:
                video_model = build_video_tab(config, startup.model, class_names)
            with gr.Tab("Webcam", id="webcam") as webcam_tab:
                webcam_model = build_webcam_tab(config, startup.model)
            if config.train_enabled:
                with gr.Tab("Train", id="train"):
                    from maskseg.app.train_tab import build_train_tab

                    build_train_tab(config)
            with gr.Tab("About", id="about"):
                about = build_about_tab(config, startup.model, startup.ready)

        segment.model.input(
            lambda model: about_markdown(model, config), [segment.model], [about],
            api_visibility="private", queue=False,
        )
        # The Train tab adds checkpoints while the server runs: both model lists pick them up.
        refresh = segment.handlers.refresh_models
        segment_tab.select(refresh, [segment.model], [segment.model], api_visibility="private", queue=False)
        batch_tab.select(refresh, [batch_model], [batch_model], api_visibility="private", queue=False)
        video_tab.select(refresh, [video_model], [video_model], api_visibility="private", queue=False)
        webcam_tab.select(pick_fastest(config), [webcam_model], [webcam_model], api_visibility="private", queue=False)
        demo.unload(_drop_session_files)
    # What Gradio keeps cached for good (example thumbnails, default values) must outlive pruning.
    TEMP_FILES.protect(lambda: {p for block in demo.blocks.values() for p in getattr(block, "keep_in_cache", ())})
    demo.maskseg_config = config  # type: ignore[attr-defined]
    demo.maskseg_default_model = startup.model  # type: ignore[attr-defined]
    demo.maskseg_notice = startup.operator_notice  # type: ignore[attr-defined]
    return demo


def _drop_session_files(request: gr.Request) -> None:
    """A browser tab closed: its downloads and its explorer trace go now rather than later."""
    session = getattr(request, "session_hash", None)
    TEMP_FILES.drop_session(session)
    TRACES.drop(session)


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           queue_size: int = 16, **kwargs: Any):
    """Queue (one network run at a time, bounded waiting line), keep temp files bounded, serve."""
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    TEMP_FILES.start_background_pruning()
    return demo.launch(
        server_name=host, server_port=port, share=share, css=CSS, max_file_size="100mb", **kwargs
    )
