"""A timed training run on synthetic shapes with live events: what the Train tab runs.
One run per process, owned by the session that started it; its temporary data goes when it ends."""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from PIL import Image

from maskseg.engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from maskseg.engine.models import DEMO_CHECKPOINT, forget_model
from maskseg.errors import MaskSegError
from maskseg.training.synth import SynthOptions, generate_dataset
from maskseg.training.train import TrainConfig, TrainEvent, TrainResult, train

CHECKPOINTS_DIR = Path(__file__).resolve().parents[2] / "checkpoints"
DEFAULT_MINUTES = 5.0
DEFAULT_TRAIN_IMAGES = 400
DEFAULT_VAL_IMAGES = 40
MAX_TRAIN_IMAGES = 2000  # bounds for any caller (the page's sliders, the API, scripts): disk and time
MAX_VAL_IMAGES = 200
DEFAULT_BATCH_SIZE = 4
DEFAULT_LR = 2e-3
STARTS = ("scratch", "demo-backbone")
DEFAULT_START = "demo-backbone"  # from scratch, 5 CPU minutes reach only about AP50 0.25 (benchmarks/results/shapes-demo.md)
UPDATE_EVERY_S = 3.0  # how often the page gets a new loss curve and status line
PREVIEW_EVERY_S = 20.0  # how often the preview re-runs the model being trained
STOP_WAIT_S = 60.0  # how long a new run waits for a stopping one to save and clean up
LOSS_SERIES = {"loss": "total", "loss_classifier": "classifier", "loss_mask": "mask", "loss_objectness": "objectness"}

# What one update gives the page: status line, loss rows (None before the first step), preview
# overlay, evaluation report (Markdown) and PR plot path (both empty until the evaluation is done).
Update = tuple[str, "pd.DataFrame | None", "np.ndarray | None", str, "str | None"]


@dataclass
class SessionPlan:
    """What one run will do: how long, on how many images, and where its checkpoint goes."""

    minutes: float
    train_images: int
    val_images: int
    seed: int
    out: Path
    title: str
    work_dir: Path | None  # the caller's folder (kept); None: a temporary one, removed after the run
    batch_size: int = DEFAULT_BATCH_SIZE
    lr: float = DEFAULT_LR
    start: str = DEFAULT_START

    @property
    def pr_plot(self) -> Path:
        """The precision–recall plot, kept next to the checkpoint it describes."""
        return self.out.with_name(f"{self.out.stem}-pr.png")


@dataclass
class LiveRun:
    """State shared between the worker thread and the page that watches it."""

    owner: str | None = None  # the browser session that started the run; only it may stop it
    stop: threading.Event = field(default_factory=threading.Event)
    abandoned: threading.Event = field(default_factory=threading.Event)  # its page closed mid-run
    finished: threading.Event = field(default_factory=threading.Event)
    phase: str = "Generating synthetic shapes…"
    rows: list[dict[str, Any]] = field(default_factory=list)
    last_event: TrainEvent | None = None
    val_metrics: dict[str, float] = field(default_factory=dict)
    want_snapshot: bool = True
    snapshot: Checkpoint | None = None
    preview_image: np.ndarray | None = None
    result: TrainResult | None = None
    report: str = ""
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

    def take_snapshot(self) -> tuple[Checkpoint | None, list[dict[str, Any]]]:
        """The weights handed over since the last call (if any) and a copy of the loss rows."""
        with self.lock:
            snapshot, self.snapshot = self.snapshot, None
            return snapshot, list(self.rows)

    def abandon(self) -> None:
        """The page watching this run went away: stop, skip the evaluation, clean up (never blocks)."""
        self.abandoned.set()
        self.stop.set()


class _RunSlot:
    """The one run this process may hold, handed out under a lock.

    A worker thread makes the data, trains, evaluates and frees the slot; the generator a page
    iterates only watches, so a page closed mid-run never blocks the server (see `_watch`).
    """

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.active: LiveRun | None = None

    def claim(self, run: LiveRun, wait_s: float = STOP_WAIT_S) -> None:
        """Take the slot for `run`, waiting a little for a run that is already stopping."""
        deadline = time.monotonic() + wait_s
        with self.changed:
            while self.active is not None and self.active.stop.is_set() and time.monotonic() < deadline:
                self.changed.wait(timeout=max(0.0, deadline - time.monotonic()))
            if self.active is not None:
                if run.owner is not None and self.active.owner == run.owner:
                    raise MaskSegError("Your training run is still going; wait for it to finish or press Stop.")
                raise MaskSegError("A training run started by another visitor is going on this server; try again when it ends.")
            self.active = run

    def release(self, run: LiveRun) -> None:
        """Give the slot back (only `run` itself can)."""
        with self.changed:
            if self.active is run:
                self.active = None
            self.changed.notify_all()


_SLOT = _RunSlot()  # process-wide on purpose: training already uses every core


def active_run() -> LiveRun | None:
    """The run going on in this process, if any."""
    return _SLOT.active


def stop_run(session: str | None) -> str:
    """Ask the run started by `session` to stop after its current step (the best weights are kept)."""
    run = _SLOT.active
    if run is None:
        return "No training run is going."
    if run.owner != session:
        return "A run started by another visitor is going; only they can stop it."
    run.stop.set()
    return "Stopping after this step…"


def _loss_frame(rows: list[dict[str, Any]]) -> pd.DataFrame | None:
    """The loss rows as the chart's frame; None before the first step (no made-up points)."""
    return pd.DataFrame(rows, columns=["step", "loss", "series"]) if rows else None


class PreviewModel:
    """A second copy of the network for drawing predictions while the first one trains."""

    def __init__(self) -> None:
        self.segmenter = None

    def update(self, snapshot: Checkpoint) -> None:
        """Load the latest weights into the preview network (built from the first snapshot)."""
        if self.segmenter is None:
            self.segmenter = _private_segmenter(snapshot)
            return
        loaded = self.segmenter.loaded
        with loaded.lock:
            loaded.network.load_state_dict(snapshot.state_dict)
            loaded.network.eval()

    def render(self, image: np.ndarray | None, score_threshold: float = 0.5) -> np.ndarray | None:
        """The overlay of the current weights' predictions on one image."""
        if self.segmenter is None or image is None:
            return None
        from maskseg.engine.render import RenderOptions, render_overlay

        prediction = self.segmenter.predict_one(image, score_threshold=score_threshold)
        return render_overlay(prediction, RenderOptions())

    def close(self) -> None:
        """Drop the preview network."""
        self.segmenter = None


def _private_segmenter(snapshot: Checkpoint):
    """A Segmenter over `snapshot` that the engine's shared model cache does not keep."""
    from maskseg.engine.segmenter import Segmenter

    with tempfile.TemporaryDirectory(prefix="maskseg-preview-") as folder:
        path = save_checkpoint(snapshot, Path(folder) / "preview.pt")
        # torch, not OpenVINO: the preview's weights change in place after every snapshot.
        segmenter = Segmenter(checkpoint=path, device="cpu", backend="torch")
        forget_model(path)
    return segmenter


def _status(run: LiveRun, minutes: float, phase: str) -> str:
    """One status line: phase, step and time, smoothed losses, the latest validation AP."""
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


def plan_session(
    minutes: float, train_images: int, val_images: int, seed: int = 0, name: str = "",
    work_dir: str | Path | None = None, checkpoints_dir: str | Path = CHECKPOINTS_DIR,
    max_minutes: float | None = None, **options: Any,
) -> SessionPlan:
    """Check a request (the server's time cap included) and name its checkpoint; one sentence if it is refused."""
    if not (isinstance(minutes, (int, float)) and math.isfinite(minutes) and minutes > 0):
        raise MaskSegError("Train for more than 0 minutes.")
    if max_minutes is not None and minutes > max_minutes:
        raise MaskSegError(f"Training runs on this server are limited to {max_minutes:g} minutes; you asked for {minutes:g}.")
    if not (4 <= train_images <= MAX_TRAIN_IMAGES and 1 <= val_images <= MAX_VAL_IMAGES):
        raise MaskSegError(f"Use 4 to {MAX_TRAIN_IMAGES} training images and 1 to {MAX_VAL_IMAGES} validation images.")
    if options.get("start", DEFAULT_START) not in STARTS:
        raise MaskSegError(f"Start from one of {', '.join(STARTS)}.")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in (name or "").strip())[:40]
    stem = slug or f"shapes-tiny-{minutes:g}min-{stamp}"
    return SessionPlan(
        float(minutes), int(train_images), int(val_images), int(seed), Path(checkpoints_dir) / f"{stem}.pt",
        f"Shapes, tiny, {minutes:g} min ({stamp})", Path(work_dir) if work_dir else None, **options,
    )


def _train_config(plan: SessionPlan, folder: Path) -> TrainConfig:
    """The tiny model on the run's synthetic set, ended by the time budget."""
    config = TrainConfig(
        data=str(folder / "train"),
        val=str(folder / "val"),
        out=str(plan.out),
        model="tiny",
        batch_size=plan.batch_size,
        lr=plan.lr,
        epochs=10_000,  # the time budget ends the run
        max_minutes=plan.minutes,
        seed=plan.seed,
        vertical_flip=True,
        half=True,
        run_dir=str(folder / "run"),
        title=plan.title,
    )
    if plan.start == "demo-backbone":
        if not DEMO_CHECKPOINT.is_file():
            raise MaskSegError(f"The demo model {DEMO_CHECKPOINT} is missing; start from random weights instead.")
        # like starting from ImageNet features: trunk and FPN come from the demo, every head is new
        config.init_from = str(DEMO_CHECKPOINT)
        config.init_prefixes = ("backbone.",)
    return config


def _make_data(run: LiveRun, plan: SessionPlan, folder: Path) -> None:
    """The synthetic training and validation sets; the first validation image becomes the preview."""
    generate_dataset(folder / "train", SynthOptions(num_images=plan.train_images, seed=plan.seed))
    # the validation seed differs from the training seed so the scores are honest
    generate_dataset(folder / "val", SynthOptions(num_images=plan.val_images, seed=plan.seed + 100_000))
    first = sorted((folder / "val" / "images").glob("*.png"))[0]
    with Image.open(first) as image:
        run.preview_image = np.asarray(image.convert("RGB"))  # in memory: the folder goes after the run


def _evaluate(checkpoint_path: Path, val_folder: Path, plot_path: Path) -> str:
    """Score the saved checkpoint on the run's validation images; the report, with the PR plot written."""
    from maskseg.engine.models import build_architecture
    from maskseg.training.datasets import open_dataset
    from maskseg.training.evaluate import evaluate_network, format_report, plot_pr_curves

    ckpt = load_checkpoint(checkpoint_path)
    network = build_architecture(ckpt.architecture, len(ckpt.class_names))
    network.load_state_dict(ckpt.state_dict)
    result = evaluate_network(network, open_dataset(val_folder), ckpt.class_names)
    plot_pr_curves(result, plot_path)
    return "```\n" + format_report(result) + "\n```"


def _work(run: LiveRun, plan: SessionPlan) -> None:
    """The worker thread: data, training, evaluation; then the temporary folder goes and the slot is freed."""
    folder = plan.work_dir or Path(tempfile.mkdtemp(prefix="maskseg-train-"))
    try:
        _make_data(run, plan, folder)
        if run.stop.is_set():
            return  # stopped before the first step: nothing worth saving
        run.phase = "Training"
        config = _train_config(plan, folder)
        run.result = train(config, callback=run.on_event, stop=run.stop, log=lambda _m: None, show_progress=False)
        forget_model(plan.out)  # the name may be re-used: the app must load these weights, not a cached copy
        if not run.abandoned.is_set():
            run.phase = "Evaluating the best checkpoint"
            run.report = _evaluate(plan.out, folder / "val", plan.pr_plot)
    except BaseException as exc:  # shown on the page; the server keeps running
        run.error = exc
    finally:
        if plan.work_dir is None:
            shutil.rmtree(folder, ignore_errors=True)
        run.finished.set()
        _SLOT.release(run)


def _start(plan: SessionPlan, owner: str | None) -> tuple[LiveRun, threading.Thread]:
    """Claim the process's run slot and start the worker thread."""
    run = LiveRun(owner=owner)
    _SLOT.claim(run)
    thread = threading.Thread(target=_work, args=(run, plan), name="maskseg-train", daemon=True)
    try:
        thread.start()
    except BaseException:
        _SLOT.release(run)
        raise
    return run, thread


def _raise_failure(run: LiveRun) -> None:
    """The worker's error as one sentence for the page."""
    if run.error is None:
        return
    if isinstance(run.error, MaskSegError):
        raise run.error
    raise MaskSegError(f"Training failed: {type(run.error).__name__}: {run.error}")


def _final_update(run: LiveRun, plan: SessionPlan, preview: PreviewModel, preview_array: np.ndarray | None) -> Update:
    """The last update: what was saved, the saved model's preview, the report and the PR plot."""
    frame = _loss_frame(run.rows)
    if run.result is None:
        return "Stopped before training began; nothing was saved.", frame, preview_array, "", None
    preview.update(load_checkpoint(plan.out))
    preview_array = preview.render(run.preview_image)
    if run.result.interrupted:
        done = f"Stopped early: saved the best weights so far as {plan.out.name}."
    else:
        done = f"Done: saved {plan.out.name}; pick “Checkpoint: {plan.out.name}” in the Segment tab's model list."
    plot = str(plan.pr_plot) if plan.pr_plot.is_file() else None
    return done, frame, preview_array, run.report, plot


def _watch(run: LiveRun, thread: threading.Thread, plan: SessionPlan, update_every_s: float, preview_every_s: float) -> Iterator[Update]:
    """Updates every `update_every_s` while the worker runs; a new preview every `preview_every_s`."""
    preview = PreviewModel()
    preview_array: np.ndarray | None = None
    last_preview = time.monotonic()
    try:
        yield run.phase, None, None, "", None
        while thread.is_alive():
            thread.join(timeout=update_every_s)
            snapshot, rows = run.take_snapshot()
            if snapshot is not None:
                preview.update(snapshot)
                preview_array = preview.render(run.preview_image)
                last_preview = time.monotonic()
            if time.monotonic() - last_preview > preview_every_s:
                run.want_snapshot = True
            yield _status(run, plan.minutes, run.phase), _loss_frame(rows), preview_array, "", None
        _raise_failure(run)
        yield _final_update(run, plan, preview, preview_array)
    finally:
        preview.close()
        if not run.finished.is_set():
            run.abandon()  # the page closed mid-run: the worker stops, saves and cleans up by itself


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
    owner: str | None = None,
    max_minutes: float | None = None,
) -> Iterator[Update]:
    """Yields (status, loss frame, preview image, evaluation report, PR plot path) as training goes on.

    `owner` (a browser session) is the only one `stop_run` obeys; `max_minutes` is the server's cap.
    Without `work_dir` the synthetic set lives in a temporary folder removed when the run ends.
    """
    plan = plan_session(
        minutes, train_images, val_images, seed, name, work_dir, checkpoints_dir, max_minutes,
        batch_size=batch_size, lr=lr, start=start,
    )
    run, thread = _start(plan, owner)
    yield from _watch(run, thread, plan, update_every_s, preview_every_s)
