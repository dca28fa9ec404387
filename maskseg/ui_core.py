"""What the web app does, without Gradio: model choices, cached-prediction re-rendering, batches.

maskseg.ui wires these functions to components; keeping them here lets benchmarks and tests call
exactly the code a slider move runs. Only Segmenter / render / export are used: no torch here.
"""

from __future__ import annotations

import html
import os
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from maskseg.errors import MaskSegError, WeightsMissingError
from maskseg.images import DEFAULT_MAX_PIXELS, LoadedImage, load_image
from maskseg.models import DEMO_CHECKPOINT, DEMO_MODEL_NAME, ZOO, resolve_model_name, resolve_device
from maskseg.prediction import TABLE_COLUMNS, Prediction
from maskseg.render import RenderOptions, instance_color, render_overlay
from maskseg.segmenter import SCORE_FLOOR, Segmenter

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = REPO_ROOT / "assets" / "examples"
ZOO_LABELS = {
    "maskrcnn_resnet50_fpn": "Mask R-CNN v1 (COCO, ResNet-50 FPN)",
    "maskrcnn_resnet50_fpn_v2": "Mask R-CNN v2 (COCO, ResNet-50 FPN v2)",
}
DEMO_LABEL = "Shapes demo (offline)"
BATCH_COLUMNS = ["image", *TABLE_COLUMNS]
MAX_ZIP_MEMBERS = 500
MAX_MEMBER_BYTES = 200 * 1024 * 1024
SKIP_NAMES = ("__MACOSX/", ".DS_Store", "Thumbs.db")


@dataclass
class AppConfig:
    """How the app was launched (flags or environment variables)."""

    model: str = "auto"
    checkpoint: str | None = None
    device: str = "auto"
    checkpoints_dir: Path = field(default_factory=lambda: Path("checkpoints"))
    max_pixels: int = DEFAULT_MAX_PIXELS
    score_threshold: float = 0.5
    queue_size: int = 16
    examples_dir: Path = EXAMPLES_DIR


@dataclass
class Controls:
    """Everything that changes the view but not the network's output."""

    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    classes: list[str] = field(default_factory=list)
    max_detections: int = 100
    opacity: float = 0.5
    masks: bool = True
    contours: bool = True
    boxes: bool = True
    labels: bool = True

    @property
    def render_options(self) -> RenderOptions:
        return RenderOptions(
            opacity=float(self.opacity), masks=bool(self.masks), contours=bool(self.contours),
            boxes=bool(self.boxes), labels=bool(self.labels),
        )


@dataclass
class SessionResult:
    """The per-session cache: the network's full answer for one image, kept down to its floor.

    `preview` is the same answer on a copy of the photo no larger than PREVIEW_MAX_SIDE: live
    re-renders draw on it (the browser shows the overlay smaller than that anyway), while the
    table, the /segment API and the download always use the full-resolution prediction.
    """

    model_value: str
    base: Prediction
    preview: Prediction | None = None

    def preview_base(self) -> Prediction:
        if self.preview is None:
            self.preview = preview_prediction(self.base)
        return self.preview


@dataclass
class View:
    """What one render produces for the Segment tab."""

    prediction: Prediction
    overlay: np.ndarray
    rows: list[list]
    legend_html: str
    status: str


# ---------------------------------------------------------------- models


def is_zoo_or_demo(value: str) -> bool:
    return value in ZOO or value == DEMO_MODEL_NAME or value in ("v1", "v2", "auto")


def model_choices(config: AppConfig) -> list[tuple[str, str]]:
    """(label, value) pairs for the model dropdown: zoo, demo, --checkpoint and checkpoints/*.pt."""
    choices: list[tuple[str, str]] = []
    for name, label in ZOO_LABELS.items():
        on_disk = ZOO[name].weights_path.is_file()
        choices.append((label if on_disk else f"{label} (not downloaded yet)", name))
    choices.append((DEMO_LABEL if DEMO_CHECKPOINT.is_file() else f"{DEMO_LABEL} (missing)", DEMO_MODEL_NAME))
    seen: set[str] = set()
    paths: list[Path] = []
    if config.checkpoint:
        paths.append(Path(config.checkpoint))
    folder = Path(config.checkpoints_dir)
    if folder.is_dir():
        paths.extend(sorted(folder.glob("*.pt"), key=lambda p: p.name))
    for path in paths:
        key = str(path.resolve())
        if key in seen or path.resolve() == DEMO_CHECKPOINT.resolve():
            continue
        seen.add(key)
        choices.append((f"Checkpoint: {path.name}", str(path)))
    return choices


def make_segmenter(model_value: str, config: AppConfig) -> Segmenter:
    """The (process-cached) Segmenter for a dropdown value: a zoo/demo name or a checkpoint path."""
    if not model_value:
        raise MaskSegError("Pick a model first.")
    if is_zoo_or_demo(model_value):
        return Segmenter(model=model_value, device=config.device, max_pixels=config.max_pixels)
    return Segmenter(checkpoint=model_value, device=config.device, max_pixels=config.max_pixels)


def startup_model(config: AppConfig) -> tuple[str, str | None, bool]:
    """Load the launch model once; fall back to the offline demo when COCO weights cannot be had.

    Returns (dropdown value, notice or None, whether a model is loaded). The notice is the one
    message a person sees about it; nothing retries the download at startup after that.
    """
    if config.checkpoint:
        make_segmenter(str(config.checkpoint), config)  # an explicit checkpoint must load
        return str(config.checkpoint), None, True
    name = resolve_model_name(config.model, resolve_device(config.device))
    try:
        make_segmenter(name, config)
        return name, None, True
    except WeightsMissingError as exc:
        if name != DEMO_MODEL_NAME and DEMO_CHECKPOINT.is_file():
            make_segmenter(DEMO_MODEL_NAME, config)
            return DEMO_MODEL_NAME, f"{exc} Using the offline {DEMO_LABEL} model instead.", True
        return name, str(exc), False


# ---------------------------------------------------------------- segment tab


class NetworkRuns:
    """How many times the app ran the network: tests and benchmarks check sliders never do."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def add(self, images: int = 1) -> None:
        with self._lock:
            self._count += images

    @property
    def count(self) -> int:
        return self._count


NETWORK_RUNS = NetworkRuns()


def run_network(segmenter: Segmenter, image: LoadedImage | np.ndarray, controls: Controls) -> Prediction:
    """Run the network once, keeping everything down to the floor so later filters are free."""
    floor = min(float(controls.score_threshold), SCORE_FLOOR)
    NETWORK_RUNS.add(1)
    return segmenter.predict_one(
        image, score_threshold=floor, mask_threshold=float(controls.mask_threshold), max_detections=100
    )


def apply_controls(base: Prediction, controls: Controls) -> Prediction:
    """The cached prediction seen through the controls: milliseconds, no network."""
    return base.filter(
        score_threshold=float(controls.score_threshold),
        classes=list(controls.classes) or None,
        max_detections=max(1, int(controls.max_detections or 1)),
        mask_threshold=float(controls.mask_threshold),
    )


def status_line(pred: Prediction, threshold: float, base_count: int | None = None) -> str:
    """Model, device, inference time, object count, or the hint to lower the threshold."""
    parts = [
        f"Model: {pred.model_title}",
        f"Device: {pred.device_name}",
        f"Inference: {pred.inference_seconds:.2f} s",
        f"Objects: {len(pred.instances)}",
    ]
    line = " · ".join(parts)
    if not pred.instances:
        return f"No objects above {threshold:.2f}; lower the threshold. ({line})"
    return line


def legend_html(pred: Prediction) -> str:
    """Colour chips, one per object, in the overlay's colours and the table's order."""
    if not pred.instances:
        return "<div id='legend-empty'>No objects to show.</div>"
    chips = []
    for inst in pred.instances:
        r, g, b = instance_color(inst.id)
        text = "#000" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#fff"
        chips.append(
            f"<span class='maskseg-chip' data-id='{inst.id}' style='background:rgb({r},{g},{b});"
            f"color:{text};padding:2px 8px;margin:2px;border-radius:10px;display:inline-block;"
            f"font-size:0.85em'>#{inst.id} {html.escape(inst.class_name)} {inst.score:.2f}</span>"
        )
    return "<div class='maskseg-legend'>" + "".join(chips) + "</div>"


def clamp_to_floor(base: Prediction, controls: Controls) -> tuple[Controls, str | None]:
    """Controls a cached prediction can serve, and a note when the threshold had to be raised.

    Live controls never run the network (that would bypass the one-at-a-time network queue):
    below the floor the photo was run at, they show the floor and say how to go lower.
    """
    if base.can_filter(controls.score_threshold):
        return controls, None
    note = (
        f"Showing objects above {base.score_floor:.2f}, the lowest this photo was run at; "
        f"press Segment to run it again at {controls.score_threshold:.2f}."
    )
    return replace(controls, score_threshold=base.score_floor), note


def render_view(base: Prediction, controls: Controls, preview: Prediction | None = None) -> View:
    """Filter the cached prediction, draw the overlay, build table, legend and status.

    With `preview` (the same prediction on a smaller copy of the photo) the overlay is drawn on it;
    table, legend and status always come from the full-resolution prediction.
    """
    pred = apply_controls(base, controls)
    drawn = pred if preview is None else apply_controls(preview, controls)
    overlay = render_overlay(drawn, controls.render_options)
    return View(pred, overlay, pred.table_rows(), legend_html(pred), status_line(pred, controls.score_threshold))


PREVIEW_MAX_SIDE = 1280


def preview_prediction(pred: Prediction, max_side: int = PREVIEW_MAX_SIDE) -> Prediction:
    """The same detections on a copy of the photo whose long side is at most `max_side`.

    Boxes are scaled; masks are pasted from the head's small probabilities at the preview size on
    demand, exactly as at full size, so drawing costs the preview's pixels, not the photo's.
    """
    scale = max_side / max(pred.height, pred.width)
    if scale >= 1.0:
        return pred
    size = (max(1, round(pred.width * scale)), max(1, round(pred.height * scale)))
    small = cv2.resize(pred.image, size, interpolation=cv2.INTER_AREA)
    sx, sy = size[0] / pred.width, size[1] / pred.height
    instances = [
        replace(inst, box=(inst.box[0] * sx, inst.box[1] * sy, inst.box[2] * sx, inst.box[3] * sy))
        for inst in pred.instances
    ]
    return Prediction(
        image=small, image_name=pred.image_name, instances=instances, score_floor=pred.score_floor,
        score_threshold=pred.score_threshold, mask_threshold=pred.mask_threshold,
        model_title=pred.model_title, device_name=pred.device_name,
        inference_seconds=pred.inference_seconds, class_names=pred.class_names,
    )


# ---------------------------------------------------------------- downloads

_TEMP_ROOT = Path(tempfile.gettempdir()) / "maskseg-app"
_PRUNE_SECONDS = 3600
_prune_lock = threading.Lock()


def fresh_output_path(stem: str, suffix: str = ".zip") -> Path:
    """A new file path under the app's temp folder; files older than an hour are removed."""
    _TEMP_ROOT.mkdir(parents=True, exist_ok=True)
    now = time.time()
    with _prune_lock:
        for old in _TEMP_ROOT.glob("*/*"):
            try:
                if now - old.stat().st_mtime > _PRUNE_SECONDS:
                    old.unlink()
                    old.parent.rmdir()
            except OSError:
                pass
    folder = Path(tempfile.mkdtemp(dir=_TEMP_ROOT))
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or "maskseg"
    return folder / f"{safe}{suffix}"


# ---------------------------------------------------------------- batch tab


@dataclass
class BatchInputs:
    images: list[LoadedImage]
    skipped: list[tuple[str, str]]  # (file name, reason)


def collect_batch_images(paths: Sequence[str | Path], max_pixels: int) -> BatchInputs:
    """Read every upload (images, or zips of images); whatever is not an image is skipped with a reason."""
    images: list[LoadedImage] = []
    skipped: list[tuple[str, str]] = []
    for raw in paths:
        path = Path(raw)
        if zipfile.is_zipfile(path):
            _collect_from_zip(path, max_pixels, images, skipped)
            continue
        try:
            images.append(load_image(path, name=path.name, max_pixels=max_pixels))
        except MaskSegError as exc:
            skipped.append((path.name, str(exc)))
    return BatchInputs(images, skipped)


def _collect_from_zip(path: Path, max_pixels: int, images: list, skipped: list) -> None:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        skipped.append((path.name, f"{path.name} is not a readable zip ({exc})."))
        return
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir() and not any(s in m.filename for s in SKIP_NAMES)]
        if len(members) > MAX_ZIP_MEMBERS:
            skipped.append((path.name, f"{path.name} holds {len(members)} files; at most {MAX_ZIP_MEMBERS} are read."))
            members = members[:MAX_ZIP_MEMBERS]
        for member in members:
            name = f"{path.name}/{member.filename}"
            base = Path(member.filename).name
            if member.file_size > MAX_MEMBER_BYTES:
                skipped.append((name, f"{base} is {member.file_size / 1e6:.0f} MB unpacked; too large to read."))
                continue
            try:
                images.append(load_image(archive.read(member), name=base, max_pixels=max_pixels))
            except (MaskSegError, zipfile.BadZipFile, OSError, RuntimeError) as exc:
                reason = str(exc) if isinstance(exc, MaskSegError) else f"{base} could not be unpacked ({exc})."
                skipped.append((name, reason))


def batch_rows(preds: Sequence[Prediction], names: Sequence[str]) -> list[list]:
    """One combined table: the image's bundle folder name, then the usual columns."""
    rows = []
    for name, pred in zip(names, preds):
        rows.extend([name, *row] for row in pred.table_rows())
    return rows


def batch_status(preds: Sequence[Prediction], skipped: Sequence[tuple[str, str]], seconds: float) -> str:
    done = len(preds)
    objects = sum(len(p.instances) for p in preds)
    lines = [f"Segmented {done} image{'s' if done != 1 else ''} ({objects} objects) in {seconds:.1f} s."]
    if preds:
        lines[0] += f" Model: {preds[0].model_title} · Device: {preds[0].device_name}."
    if skipped:
        lines.append(f"Skipped {len(skipped)}:")
        lines.extend(f"- {name}: {reason}" for name, reason in skipped)
    return "\n".join(lines)


def progress_adapter(progress: Callable | None, total_label: str = "Segmenting") -> Callable[[int, int], None] | None:
    """Turn Gradio's Progress into the engine's progress(done, total) callback."""
    if progress is None:
        return None

    def report(done: int, total: int) -> None:
        progress(done / max(total, 1), desc=f"{total_label} {done}/{total}")

    return report


def env_flag(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default
