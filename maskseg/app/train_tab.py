"""The app's Train tab (only with `--train on`): the form, the live loss curve and preview, the
evaluation. The run itself, its owner and the minutes cap are maskseg.training.session's."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from maskseg.app.components import user_error
from maskseg.app.config import AppConfig
from maskseg.errors import MaskSegError
from maskseg.training.session import (
    DEFAULT_MINUTES,
    DEFAULT_START,
    DEFAULT_TRAIN_IMAGES,
    DEFAULT_VAL_IMAGES,
    MAX_TRAIN_IMAGES,
    MAX_VAL_IMAGES,
    Update,
    run_training_session,
    stop_run,
)

START_CHOICES = {
    "Random weights (from scratch)": "scratch",
    "The demo model's backbone (transfer learning)": "demo-backbone",
}

INTRO = (
    "Train the small **tiny** Mask R-CNN on synthetic shapes, right here on this machine. "
    "Watch the loss fall and the preview improve; the result is saved under `checkpoints/` "
    "and appears in the Segment tab's model list. By default it starts from the offline demo "
    "model's backbone with new heads (transfer learning, the way real models start from COCO or "
    "ImageNet weights); from random weights it learns too, but 5 CPU minutes give only rough masks. "
    "One run at a time on this server; only the visitor who started it can stop it."
)
LIVE_HINT = (
    "**While it trains:** the smoothed loss of each part of the network (it should fall) and the "
    "model's predictions on one validation image, refreshed every 20 s. They appear after the first steps."
)


def _session(request: gr.Request | None) -> str | None:
    """The browser session behind a request (a run belongs to the session that started it)."""
    return getattr(request, "session_hash", None)


def _read_form(minutes: Any, train_images: Any, val_images: Any, start_from: Any, seed: Any, name: Any) -> dict[str, Any]:
    """The form's raw values (the event skips Gradio's preprocessing) as run_training_session's arguments."""
    try:
        numbers = {
            "minutes": float(minutes),
            "train_images": int(float(train_images)),
            "val_images": int(float(val_images)),
            "seed": int(float(seed or 0)),
        }
    except (TypeError, ValueError, OverflowError) as exc:
        raise MaskSegError("Minutes, image counts and seed must be numbers.") from exc
    start = START_CHOICES.get(str(start_from), str(start_from or DEFAULT_START))  # a label, or scratch / demo-backbone
    return {**numbers, "start": start, "name": str(name or "")}


def _read_plot(path: str | None) -> np.ndarray | None:
    """The PR plot as pixels: the page needs no access to the checkpoints folder's file."""
    if not path:
        return None
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _page_update(update: Update) -> tuple:
    """One session update as the page's five outputs; empty panels stay hidden (no made-up points)."""
    status, frame, preview, report, plot = update
    return (
        status,
        gr.update(value=frame, visible=frame is not None),
        gr.update(value=preview, visible=preview is not None),
        gr.update(value=report, visible=bool(report)),
        gr.update(value=_read_plot(plot), visible=plot is not None),
    )


def _minutes_slider(config: AppConfig) -> gr.Slider:
    """Minutes of training, capped at the server's --max-train-minutes (enforced again on the server)."""
    cap = float(config.max_train_minutes)
    return gr.Slider(
        min(1.0, cap), cap, value=min(DEFAULT_MINUTES, cap), step=1 if cap >= 2 else 0.1,
        label=f"Minutes of training (at most {cap:g} on this server)", elem_id="train-minutes",
    )


def _form(config: AppConfig) -> list[gr.components.Component]:
    """The run's settings, in the order the /train endpoint takes them."""
    minutes = _minutes_slider(config)
    train_images = gr.Slider(40, MAX_TRAIN_IMAGES, value=DEFAULT_TRAIN_IMAGES, step=20, label="Synthetic training images", elem_id="train-images")
    val_images = gr.Slider(10, MAX_VAL_IMAGES, value=DEFAULT_VAL_IMAGES, step=10, label="Validation images", elem_id="train-val-images")
    start_from = gr.Radio(
        list(START_CHOICES), value=next(k for k, v in START_CHOICES.items() if v == DEFAULT_START),
        label="Start from", elem_id="train-start-from",
    )
    seed = gr.Number(value=0, precision=0, label="Seed", elem_id="train-seed")
    name = gr.Textbox(label="Checkpoint name (optional)", placeholder="shapes-tiny-<minutes>min-<time>", elem_id="train-name")
    return [minutes, train_images, val_images, start_from, seed, name]


def build_train_tab(config: AppConfig) -> None:
    """The Train tab's components and events, inside the caller's `gr.Tab("Train")`; trained
    checkpoints go to `config.checkpoints_dir`, the folder the Segment tab lists."""
    gr.Markdown(INTRO)
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            form = _form(config)
            with gr.Row():
                start = gr.Button("Train", variant="primary", elem_id="train-start")
                stop = gr.Button("Stop", elem_id="train-stop")
            status = gr.Textbox(label="Status", interactive=False, lines=2, elem_id="train-status")
        with gr.Column(scale=2):
            gr.Markdown(LIVE_HINT, elem_id="train-live-hint")
            curve = gr.LinePlot(
                None, x="step", y="loss", color="series", title="Training loss (smoothed)", height=260,
                visible=False, elem_id="train-loss",
            )
            preview = gr.Image(label="Predictions on a validation image", format="png", interactive=False, visible=False, elem_id="train-preview")
    with gr.Row():  # shown when the evaluation is done
        report = gr.Markdown(visible=False, elem_id="train-report")
        pr_plot = gr.Image(label="Precision–recall (IoU 0.5)", format="png", interactive=False, visible=False, elem_id="train-pr")

    def run(minutes, train_images, val_images, start_from, seed, name, request: gr.Request):
        """/train: a run owned by this browser session, its updates as the page's outputs."""
        try:
            values = _read_form(minutes, train_images, val_images, start_from, seed, name)
            updates = run_training_session(
                **values, checkpoints_dir=Path(config.checkpoints_dir), owner=_session(request),
                max_minutes=config.max_train_minutes,
            )
            with contextlib.closing(updates):  # a page closed mid-run closes this: the run stops and cleans up
                for update in updates:
                    yield _page_update(update)
        except MaskSegError as exc:
            raise user_error(exc) from exc

    def stop_own_run(request: gr.Request) -> str:
        """/train_stop: stops the run only when this session started it."""
        return stop_run(_session(request))

    start.click(
        run, inputs=form, outputs=[status, curve, preview, report, pr_plot], api_name="train",
        concurrency_limit=1, concurrency_id="train",
        preprocess=False,  # raw values: the server's own checks give the one-sentence refusals (minutes cap included)
    )
    stop.click(stop_own_run, outputs=status, api_name="train_stop", queue=False)
