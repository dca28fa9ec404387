"""Overlay drawing: filled masks, contours, boxes and labels over the full-resolution photo."""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from maskseg.engine.prediction import Instance, Prediction


@dataclass(frozen=True)
class RenderOptions:
    """What to draw and how strongly; every layer can be turned off."""

    opacity: float = 0.5
    masks: bool = True
    contours: bool = True
    boxes: bool = True
    labels: bool = True


@lru_cache(maxsize=1024)
def instance_color(instance_id: int) -> tuple[int, int, int]:
    """A fixed, distinct RGB colour per instance id.

    Hues step by the golden ratio so neighbouring ids are far apart on the colour wheel, and
    saturation/value alternate so that even ids with close hues differ in brightness.
    """
    hue = ((instance_id - 1) * 0.618033988749895) % 1.0
    saturation = (0.95, 0.75, 0.85)[instance_id % 3]
    value = (0.95, 0.8)[(instance_id // 3) % 2]
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return int(r * 255), int(g * 255), int(b * 255)


def color_hex(instance_id: int) -> str:
    """The instance's colour as '#rrggbb' for legends and table rows."""
    return "#{:02x}{:02x}{:02x}".format(*instance_color(instance_id))


def render_overlay(prediction: Prediction, options: RenderOptions = RenderOptions()) -> np.ndarray:
    """The photo with every kept instance drawn on it; same size as the input, RGB uint8."""
    canvas = prediction.image.copy()
    height, width = canvas.shape[:2]
    # Scale strokes and text with the image so they read the same on a thumbnail and a 12 MP photo.
    unit = max(1, round(max(height, width) / 640))
    # Draw lowest score first so the most confident objects end up on top.
    ordered = sorted(prediction.instances, key=lambda i: i.score)
    if options.masks and options.opacity > 0:
        alpha = float(np.clip(options.opacity, 0.0, 1.0))
        for inst in ordered:
            crop = prediction.mask_crop(inst)
            if crop.pixels.size == 0:
                continue
            # Blend the whole box region at once, then copy back only the mask's pixels: OpenCV's
            # masked copy is ~5× faster than NumPy boolean indexing on large masks.
            region = canvas[crop.y0 : crop.y1, crop.x0 : crop.x1]
            tint = np.empty_like(region)
            tint[:] = instance_color(inst.id)
            blended = cv2.addWeighted(region, 1.0 - alpha, tint, alpha, 0.0)
            cv2.copyTo(blended, crop.pixels.view(np.uint8), region)
    if options.contours:
        for inst in ordered:
            _draw_contour(canvas, prediction, inst, unit)
    if options.boxes:
        for inst in ordered:
            x1, y1, x2, y2 = (int(round(v)) for v in inst.box)
            cv2.rectangle(canvas, (x1, y1), (x2, y2), instance_color(inst.id), unit, cv2.LINE_AA)
    if options.labels:
        for inst in ordered:
            _draw_label(canvas, inst, unit)
    return canvas


def _draw_contour(canvas: np.ndarray, prediction: Prediction, inst: Instance, unit: int) -> None:
    crop = prediction.mask_crop(inst)
    if crop.pixels.size == 0 or not crop.pixels.any():
        return
    contours, _ = cv2.findContours(
        crop.pixels.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(crop.x0, crop.y0)
    )
    cv2.drawContours(canvas, contours, -1, instance_color(inst.id), unit, cv2.LINE_AA)


def _draw_label(canvas: np.ndarray, inst: Instance, unit: int) -> None:
    height, width = canvas.shape[:2]
    text = f"{inst.class_name} {inst.score:.2f}"
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = 0.5 * unit
    thickness = max(1, unit)
    (text_w, text_h), baseline = cv2.getTextSize(text, font, scale, thickness)
    pad = 2 * unit
    box_w, box_h = text_w + 2 * pad, text_h + baseline + 2 * pad
    x1, y1 = int(round(inst.box[0])), int(round(inst.box[1]))
    # Sit above the box when there is room, inside it otherwise; never leave the image.
    left = min(max(x1, 0), max(width - box_w, 0))
    top = y1 - box_h if y1 - box_h >= 0 else max(y1, 0)
    top = min(top, max(height - box_h, 0))
    color = instance_color(inst.id)
    cv2.rectangle(canvas, (left, top), (left + box_w, top + box_h), color, cv2.FILLED)
    # Dark text on light colours, white on dark ones, so every label stays readable.
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    text_color = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    cv2.putText(canvas, text, (left + pad, top + pad + text_h), font, scale, text_color, thickness, cv2.LINE_AA)
