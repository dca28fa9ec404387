"""The model menu: which models the app offers, the Segmenter for a choice, and the launch model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from maskseg.app.config import AppConfig
from maskseg.engine.models import DEMO_CHECKPOINT, DEMO_MODEL_NAME, ZOO, resolve_device, resolve_model_name
from maskseg.engine.segmenter import Segmenter
from maskseg.errors import MaskSegError, WeightsMissingError

ZOO_LABELS = {
    "maskrcnn_resnet50_fpn": "Mask R-CNN v1 (COCO, ResNet-50 FPN)",
    "maskrcnn_resnet50_fpn_v2": "Mask R-CNN v2 (COCO, ResNet-50 FPN v2)",
}

DEMO_LABEL = "Shapes demo (offline)"

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
    runtime = dict(device=config.device, max_pixels=config.max_pixels, backend=config.backend, precision=config.precision)
    if is_zoo_or_demo(model_value):
        return Segmenter(model=model_value, **runtime)
    return Segmenter(checkpoint=model_value, **runtime)

@dataclass
class Startup:
    """The model the app starts with, and what to tell the operator and the visitors about it."""

    model: str
    ready: bool  # whether a model is loaded
    operator_notice: str | None = None  # for the terminal: file names and folders
    visitor_notice: str | None = None  # for the page: plain words, no server paths


def preload_menu_models(config: AppConfig) -> list[str]:
    """Load every model the menu offers whose weights are here (ZeroGPU wants models built and put
    on the GPU at start-up, in the main process); returns the values loaded."""
    loaded = []
    for _, value in model_choices(config):
        if value in ZOO and not ZOO[value].weights_path.is_file():
            continue  # never a download at start-up; the menu says "not downloaded yet"
        try:
            make_segmenter(value, config)
        except MaskSegError as exc:  # missing weights or a bad checkpoint: the menu says so on use
            print(f"maskseg: not preloading {value}: {exc}", flush=True)
            continue
        loaded.append(value)
    return loaded


def startup_model(config: AppConfig) -> Startup:
    """Load the launch model once; fall back to the offline demo when COCO weights cannot be had.

    Nothing retries the download at startup after this: the notice is the one message about it.
    """
    if config.checkpoint:
        make_segmenter(str(config.checkpoint), config)  # an explicit checkpoint must load
        return Startup(str(config.checkpoint), True)
    name = resolve_model_name(config.model, resolve_device(config.device))
    try:
        make_segmenter(name, config)
        return Startup(name, True)
    except WeightsMissingError as exc:
        if name != DEMO_MODEL_NAME and DEMO_CHECKPOINT.is_file():
            make_segmenter(DEMO_MODEL_NAME, config)
            return Startup(
                DEMO_MODEL_NAME, True,
                operator_notice=f"{exc} Using the offline {DEMO_LABEL} model instead.",
                visitor_notice=(
                    f"This server has no COCO weights, so it is showing the offline {DEMO_LABEL}: a small "
                    "model that finds circles, rectangles, triangles, stars and crosses. Try the shapes "
                    "examples below the Segment button."
                ),
            )
        return Startup(
            name, False, operator_notice=str(exc),
            visitor_notice="No model could be loaded on this server yet; its operator can see why in the terminal.",
        )
