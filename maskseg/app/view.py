"""What the Segment tab shows for a prediction: overlay, table rows, legend and status line."""

from __future__ import annotations

import html
from dataclasses import dataclass, replace

import cv2
import numpy as np

from maskseg.app.controls import Controls, apply_controls
from maskseg.engine.cutouts import cutout_rgba
from maskseg.engine.prediction import Prediction
from maskseg.engine.render import instance_color, render_overlay

@dataclass
class View:
    """What one render produces for the Segment tab."""

    prediction: Prediction
    overlay: np.ndarray
    rows: list[list]
    legend_html: str
    status: str

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
    scaled = {
        inst.id: replace(inst, box=(inst.box[0] * sx, inst.box[1] * sy, inst.box[2] * sx, inst.box[3] * sy))
        for inst in pred.candidates
    }
    return Prediction(
        image=small, image_name=pred.image_name, instances=[scaled[inst.id] for inst in pred.instances],
        score_floor=pred.score_floor, score_threshold=pred.score_threshold, mask_threshold=pred.mask_threshold,
        model_title=pred.model_title, device_name=pred.device_name,
        inference_seconds=pred.inference_seconds, class_names=pred.class_names,
        candidates=list(scaled.values()), classes=pred.classes, max_detections=pred.max_detections,
        mask_head=pred.mask_head,  # same objects, same 28×28 masks: pasted at the preview's size
    )


def render_view(base: Prediction, controls: Controls, preview: Prediction | None = None) -> View:
    """Filter the cached prediction, draw the overlay, build table, legend and status.

    With `preview` (the same prediction on a smaller copy of the photo) the overlay is drawn on it;
    table, legend and status always come from the full-resolution prediction.
    """
    pred = apply_controls(base, controls)
    drawn = pred if preview is None else apply_controls(preview, controls)
    overlay = render_overlay(drawn, controls.render_options)
    return View(pred, overlay, pred.table_rows(), legend_html(pred), status_line(pred, controls.score_threshold))


MAX_GALLERY_CUTOUTS = 48  # the gallery is a preview; the download holds every object's cut-out


def cutout_gallery(result, controls: Controls) -> list[tuple[np.ndarray, str]]:
    """(RGBA cut-out, caption) per shown object, cut from the preview-sized photo so it stays fast."""
    shown = apply_controls(result.preview_base(), controls)
    return [
        (cutout_rgba(shown, inst), f"#{inst.id} {inst.class_name} {inst.score:.2f}")
        for inst in shown.instances[:MAX_GALLERY_CUTOUTS]
    ]
