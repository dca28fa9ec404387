"""The app's Train tab: make a synthetic set, train the tiny model for N minutes, watch it learn, evaluate it."""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from maskseg.engine.checkpoint import Checkpoint, save_checkpoint
from maskseg.errors import MaskSegError
from maskseg.engine.models import forget_model
from maskseg.training.synth import SynthOptions, generate_dataset
from maskseg.training.train import TrainConfig, TrainEvent, TrainResult, train

CHECKPOINTS_DIR = Path(__file__).resolve().parents[2] / "checkpoints"
DEFAULT_MINUTES = 5.0
DEFAULT_TRAIN_IMAGES = 400
DEFAULT_VAL_IMAGES = 40
DEFAULT_BATCH_SIZE = 4
DEFAULT_LR = 2e-3
START_CHOICES = {
    "Random weights (from scratch)": "scratch",
    "The demo model's backbone (transfer learning)": "demo-backbone",
}
DEFAULT_START = "demo-backbone"  # from scratch, 5 CPU minutes reach only about AP50 0.25 (benchmarks/results/shapes-demo.md)
UPDATE_EVERY_S = 3.0  # how often the page gets a new loss curve and status line
PREVIEW_EVERY_S = 20.0  # how often the preview re-runs the model being trained
LOSS_SERIES = {"loss": "total", "loss_classifier": "classifier", "loss_mask": "mask", "loss_objectness": "objectness"}

_RUN_LOCK = threading.Lock()  # one training run per process: it already uses every core


@dataclass
class LiveRun:
    """State shared between the training thread and the page's update loop."""

    stop: threading.Event = field(default_factory=threading.Event)
    rows: list[dict[str, Any]] = field(default_factory=list)
    last_event: TrainEvent | None = None
    val_metrics: dict[str, float] = field(default_factory=dict)
    want_snapshot: bool = True
    snapshot: Checkpoint | None = None
    result: TrainResult | None = None
    error: BaseException | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_event(self, event: TrainEvent) -> None:
        """Training-thread callback: record losses, hand over weights when the page asks."""
        with self.lock:
            self.last_event = event
            if event.kind == "step" and (event.step % 5 == 0 or event.step < 5):
                for key, series in LOSS_SERIES.items():
                    if key in event.losses:
                        self.rows.append({"step": event.step, "loss": round(event.losses[key], 4), "series": series})
            if event.kind == "val" and event.metrics:
                self.val_metrics = dict(event.metrics)
            if self.want_snapshot and event.snapshot is not None:
                self.snapshot = event.snapshot()  # taken between steps, so weights are consistent
                self.want_snapshot = False


_CURRENT: LiveRun | None = None


def _loss_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame({"step": [0], "loss": [0.0], "series": ["total"]})
    return pd.DataFrame(rows)


class PreviewModel:
    """A second copy of the network for drawing predictions while the first one trains."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "preview.pt"
        self.segmenter = None

    def update(self, snapshot: Checkpoint) -> None:
        """Load the latest weights (the first call saves a file so the engine can build the model)."""
        if self.segmenter is None:
            from maskseg.engine.segmenter import Segmenter

            save_checkpoint(snapshot, self.path)
            self.segmenter = Segmenter(checkpoint=self.path, device="cpu")
        else:
            loaded = self.segmenter.loaded
            with loaded.lock:
                loaded.network.load_state_dict(snapshot.state_dict)
                loaded.network.eval()

    def render(self, image_path: Path, score_threshold: float = 0.5) -> np.ndarray | None:
        """The overlay of the current weights' predictions on one image."""
        if self.segmenter is None:
            return None
        from maskseg.engine.render import RenderOptions, render_overlay

        prediction = self.segmenter.predict_one(str(image_path), score_threshold=score_threshold)
        return render_overlay(prediction, RenderOptions())

    def close(self) -> None:
        """Release the preview network from the engine's process-wide model cache."""
        if self.segmenter is not None:
            forget_model(self.path)
            self.segmenter = None


def _status(run: LiveRun, minutes: float, phase: str) -> str:
    event = run.last_event
    if event is None:
        return phase
    losses = event.losses
    parts = [
        phase,
        f"step {event.step}, {event.elapsed_s / 60:.1f} of {minutes:g} min",
        f"loss {losses.get('loss', 0):.3f} (classifier {losses.get('loss_classifier', 0):.3f}, mask {losses.get('loss_mask', 0):.3f})",
    ]
    if run.val_metrics:
        m = run.val_metrics
        parts.append(f"validation mask AP {m['mask_ap']:.3f}, AP50 {m['mask_ap50']:.3f}")
    return " · ".join(parts)


def run_training_session(
    minutes: float = DEFAULT_MINUTES,
    train_images: int = DEFAULT_TRAIN_IMAGES,
    val_images: int = DEFAULT_VAL_IMAGES,
    seed: int = 0,
    name: str = "",
    work_dir: str | Path | None = None,
    checkpoints_dir: str | Path = CHECKPOINTS_DIR,
    update_every_s: float = UPDATE_EVERY_S,
    preview_every_s: float = PREVIEW_EVERY_S,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = DEFAULT_LR,
    start: str = DEFAULT_START,
) -> Iterator[tuple[str, pd.DataFrame, np.ndarray | None, str, str | None]]:
    """Yields (status, loss frame, preview image, evaluation report, PR plot path) as training goes on."""
    global _CURRENT
    previews: list[PreviewModel] = []  # closed in `finally`, even when the page is left mid-run
    if minutes <= 0 or train_images < 4 or val_images < 1:
        raise MaskSegError("Train for more than 0 minutes on at least 4 training and 1 validation image.")
    if not _RUN_LOCK.acquire(blocking=False):
        raise MaskSegError("A training run is already going on this server; wait for it or stop it.")
    try:
        folder = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="maskseg-train-"))
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in (name or "").strip())[:40]
        stem = slug or f"shapes-tiny-{minutes:g}min-{stamp}"
        out = Path(checkpoints_dir) / f"{stem}.pt"
        yield "Generating synthetic shapes…", _loss_frame([]), None, "", None
        generate_dataset(folder / "train", SynthOptions(num_images=int(train_images), seed=int(seed)))
        # the validation seed differs from the training seed so the scores are honest
        generate_dataset(folder / "val", SynthOptions(num_images=int(val_images), seed=int(seed) + 100_000))
        preview_image = sorted((folder / "val" / "images").glob("*.png"))[0]
        config = TrainConfig(
            data=str(folder / "train"),
            val=str(folder / "val"),
            out=str(out),
            model="tiny",
            batch_size=batch_size,
            lr=lr,
            epochs=10_000,  # the time budget ends the run
            max_minutes=float(minutes),
            seed=int(seed),
            vertical_flip=True,
            half=True,
            run_dir=str(folder / "run"),
            title=f"Shapes, tiny, {minutes:g} min ({stamp})",
        )
        if start == "demo-backbone":
            from maskseg.engine.models import DEMO_CHECKPOINT

            if not DEMO_CHECKPOINT.is_file():
                raise MaskSegError(f"The demo model {DEMO_CHECKPOINT} is missing; start from random weights instead.")
            # like starting from ImageNet features: trunk and FPN come from the demo, every head is new
            config.init_from = str(DEMO_CHECKPOINT)
            config.init_prefixes = ("backbone.",)
        run = LiveRun()
        _CURRENT = run

        def work() -> None:
            try:
                run.result = train(config, callback=run.on_event, stop=run.stop, log=lambda _m: None, show_progress=False)
            except BaseException as exc:  # shown on the page; the server keeps running
                run.error = exc

        thread = threading.Thread(target=work, name="maskseg-train", daemon=True)
        thread.start()
        preview = PreviewModel(folder)
        previews.append(preview)
        preview_array: np.ndarray | None = None
        last_preview = time.monotonic()
        while thread.is_alive():
            thread.join(timeout=update_every_s)
            with run.lock:
                snapshot, run.snapshot = run.snapshot, None
                rows = list(run.rows)
            if snapshot is not None:
                preview.update(snapshot)
                preview_array = preview.render(preview_image)
                last_preview = time.monotonic()
            if time.monotonic() - last_preview > preview_every_s:
                run.want_snapshot = True
            yield _status(run, minutes, "Training"), _loss_frame(rows), preview_array, "", None
        if run.error is not None:
            if isinstance(run.error, MaskSegError):
                raise run.error
            raise MaskSegError(f"Training failed: {type(run.error).__name__}: {run.error}")
        yield _status(run, minutes, "Evaluating the best checkpoint"), _loss_frame(run.rows), preview_array, "", None
        report, plot = _evaluate(out, folder)
        forget_model(out)  # the name may be re-used: the app must load these weights, not a cached copy
        preview.update(_as_checkpoint(out))
        preview_array = preview.render(preview_image)
        done = (
            f"Done: saved {out.name}; pick “Checkpoint: {out.name}” in the Segment tab's model list."
            if not run.stop.is_set()
            else f"Stopped early: saved the best weights so far as {out.name}."
        )
        yield done, _loss_frame(run.rows), preview_array, report, plot
    finally:
        for preview in previews:
            preview.close()
        _CURRENT = None
        _RUN_LOCK.release()


def _as_checkpoint(path: Path) -> Checkpoint:
    from maskseg.engine.checkpoint import load_checkpoint

    return load_checkpoint(path)


def _evaluate(checkpoint_path: Path, folder: Path) -> tuple[str, str]:
    """Score the saved checkpoint on the run's validation images; the report and the PR plot."""
    from maskseg.training.datasets import open_dataset
    from maskseg.training.evaluate import evaluate_network, format_report, plot_pr_curves
    from maskseg.engine.models import build_architecture

    ckpt = _as_checkpoint(checkpoint_path)
    network = build_architecture(ckpt.architecture, len(ckpt.class_names))
    network.load_state_dict(ckpt.state_dict)
    result = evaluate_network(network, open_dataset(folder / "val"), ckpt.class_names)
    plot = plot_pr_curves(result, folder / "pr.png")
    return "```\n" + format_report(result) + "\n```", str(plot)


def stop_current_run() -> str:
    """Ask the running training to stop after its current step (the best weights are kept)."""
    run = _CURRENT
    if run is None:
        return "No training run is going."
    run.stop.set()
    return "Stopping after this step…"


def build_train_tab(config) -> None:
    """The Train tab's components and events, inside the caller's `gr.Tab("Train")`; trained
    checkpoints go to `checkpoints_dir`, the folder the Segment tab lists."""
    import gradio as gr

    checkpoints_dir = config.checkpoints_dir

    gr.Markdown(
        "Train the small **tiny** Mask R-CNN on synthetic shapes, right here on this machine. "
        "Watch the loss fall and the preview improve; the result is saved under `checkpoints/` "
        "and appears in the Segment tab's model list. By default it starts from the offline demo "
        "model's backbone with new heads (transfer learning, the way real models start from COCO or "
        "ImageNet weights); from random weights it learns too, but 5 CPU minutes give only rough masks."
    )
    with gr.Row():
        with gr.Column(scale=1):
            minutes = gr.Slider(1, 30, value=DEFAULT_MINUTES, step=1, label="Minutes of training", elem_id="train-minutes")
            train_images = gr.Slider(40, 2000, value=DEFAULT_TRAIN_IMAGES, step=20, label="Synthetic training images", elem_id="train-images")
            val_images = gr.Slider(10, 200, value=DEFAULT_VAL_IMAGES, step=10, label="Validation images", elem_id="train-val-images")
            start_from = gr.Radio(
                list(START_CHOICES), value=next(k for k, v in START_CHOICES.items() if v == DEFAULT_START),
                label="Start from", elem_id="train-start-from",
            )
            seed = gr.Number(value=0, precision=0, label="Seed", elem_id="train-seed")
            name = gr.Textbox(label="Checkpoint name (optional)", placeholder="shapes-tiny-5min-<time>", elem_id="train-name")
            with gr.Row():
                start = gr.Button("Train", variant="primary", elem_id="train-start")
                stop = gr.Button("Stop", elem_id="train-stop")
            status = gr.Textbox(label="Status", interactive=False, lines=2, elem_id="train-status")
        with gr.Column(scale=2):
            curve = gr.LinePlot(
                _loss_frame([]), x="step", y="loss", color="series", title="Training loss (smoothed)", height=260, elem_id="train-loss"
            )
            preview = gr.Image(label="Predictions on a validation image", format="png", interactive=False, elem_id="train-preview")
    with gr.Row():
        report = gr.Markdown(elem_id="train-report")
        pr_plot = gr.Image(label="Precision–recall (IoU 0.5)", format="png", interactive=False, elem_id="train-pr")

    def run(minutes_value: float, train_value: float, val_value: float, start_value: str, seed_value: float, name_value: str):
        try:
            yield from run_training_session(
                float(minutes_value), int(train_value), int(val_value), int(seed_value or 0), name_value or "",
                start=START_CHOICES.get(start_value, "scratch"), checkpoints_dir=checkpoints_dir,
            )
        except MaskSegError as exc:
            raise gr.Error(str(exc)) from exc

    start.click(
        run,
        inputs=[minutes, train_images, val_images, start_from, seed, name],
        outputs=[status, curve, preview, report, pr_plot],
        api_name="train",
        concurrency_limit=1,
        concurrency_id="train",
    )
    stop.click(stop_current_run, outputs=status, api_name="train_stop", queue=False)
