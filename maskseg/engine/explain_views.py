"""Pictures of a Trace's stages, at the photo's display scale: feature levels, objectness, anchors,
proposals, one object's boxes, crops and mask, and the final overlay. No network runs here."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from maskseg.engine.prediction import paste_mask_crop
from maskseg.engine.render import RenderOptions, instance_color, render_overlay
from maskseg.engine.trace import LevelTrace, Trace

DISPLAY_LONG_SIDE = 960  # stage pictures are the photo at most this long (never enlarged)
CROP_SIZE = 196  # 7×7 and 14×14 RoIAlign crops, enlarged with visible cells
MASK_SIZE = 224  # the 28×28 mask probabilities, enlarged with visible cells
LEVEL_COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def display_size(trace: Trace) -> tuple[int, int]:
    """(height, width) of every photo-sized stage picture."""
    h, w = trace.photo_size
    scale = min(1.0, DISPLAY_LONG_SIDE / max(h, w))
    return max(int(round(h * scale)), 1), max(int(round(w * scale)), 1)


def display_photo(trace: Trace) -> np.ndarray:
    """The photo at display size (kept on the trace after the first call)."""
    cached = getattr(trace, "_display_photo", None)
    if cached is None:
        h, w = display_size(trace)
        cached = cv2.resize(trace.view.image, (w, h), interpolation=cv2.INTER_AREA)
        trace._display_photo = cached  # type: ignore[attr-defined]
    return cached


def _display_scale(trace: Trace) -> tuple[float, float]:
    """Display pixels per network pixel (x, y)."""
    h, w = display_size(trace)
    return w / trace.network_size[1], h / trace.network_size[0]


def _level_to_display(trace: Trace, level: LevelTrace, picture: np.ndarray) -> np.ndarray:
    """A level-sized picture stretched over the photo: each cell covers `stride` network pixels."""
    h, w = display_size(trace)
    sx, sy = _display_scale(trace)
    rows, cols = level.valid
    down, across = level.stride
    big = cv2.resize(picture, (max(int(round(cols * across * sx)), w), max(int(round(rows * down * sy)), h)),
                     interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(big[:h, :w])


def heat(values: np.ndarray) -> np.ndarray:
    """0..1 values as an RGB heat map (dark blue → yellow)."""
    scaled = (np.clip(values, 0, 1) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(scaled, cv2.COLORMAP_VIRIDIS), cv2.COLOR_BGR2RGB)


def _blend(base: np.ndarray, top: np.ndarray, alpha: float) -> np.ndarray:
    return cv2.addWeighted(top, alpha, base, 1 - alpha, 0)


def level_view(trace: Trace, index: int, mode: str = "pca") -> np.ndarray:
    """FPN level `index` as a picture over the photo: 'pca' (3 components as RGB) or 'energy'."""
    level = trace.levels[index]
    picture = level.pca if mode == "pca" else heat(level.energy)
    return _blend(display_photo(trace), _level_to_display(trace, level, picture), 0.8)


def objectness_view(trace: Trace, index: int) -> np.ndarray:
    """Level `index`'s best-anchor objectness probability per cell, as heat over the photo."""
    level = trace.levels[index]
    return _blend(display_photo(trace), _level_to_display(trace, level, heat(level.objectness)), 0.65)


def anchors_at(trace: Trace, x: float, y: float) -> list[tuple[str, np.ndarray]]:
    """Every level's anchors at display point (x, y): (level name, A×4 boxes in display pixels)."""
    sx, sy = _display_scale(trace)
    nx, ny = x / sx, y / sy
    found = []
    for level in trace.levels:
        if not len(level.anchors):
            continue
        # torchvision's grid: the cell at (row, col) shifts the level's base anchors by col·stride, row·stride.
        down, across = level.stride
        col = min(int(nx // across), level.valid[1] - 1)
        row = min(int(ny // down), level.valid[0] - 1)
        shifted = level.anchors + np.array([col * across, row * down] * 2, np.float32)
        found.append((level.name, shifted * np.array([sx, sy, sx, sy], np.float32)))
    return found


def anchors_view(trace: Trace, x: float, y: float) -> np.ndarray:
    """The photo with every anchor (each size × aspect ratio) of every level at display point (x, y)."""
    canvas = display_photo(trace).copy()
    for index, (name, boxes) in enumerate(anchors_at(trace, x, y)):
        color = LEVEL_COLORS[index % len(LEVEL_COLORS)]
        for x0, y0, x1, y1 in boxes.round().astype(int).tolist():
            cv2.rectangle(canvas, (x0, y0), (x1, y1), color, 2, cv2.LINE_AA)
        cv2.putText(canvas, name.split()[0], (8, 22 + 22 * index), cv2.FONT_HERSHEY_SIMPLEX, 0.6, color, 2, cv2.LINE_AA)
    cv2.drawMarker(canvas, (int(x), int(y)), (255, 255, 255), cv2.MARKER_CROSS, 18, 2)
    return canvas


def proposals_view(trace: Trace, after_nms: bool, count: int = 100) -> np.ndarray:
    """The best `count` proposals entering NMS, or kept after it, drawn on the photo."""
    canvas = display_photo(trace).copy()
    boxes = trace.proposals_after_nms if after_nms else trace.proposals_before_nms
    h, w = display_size(trace)
    scale = np.array([w / trace.photo_size[1], h / trace.photo_size[0]] * 2, np.float32)
    color = (255, 200, 0) if after_nms else (255, 80, 80)
    for box in (boxes[:count] * scale).round().astype(int).tolist():
        cv2.rectangle(canvas, (box[0], box[1]), (box[2], box[3]), color, 1, cv2.LINE_AA)
    return canvas


def _photo_box(trace: Trace, box) -> tuple[int, int, int, int]:
    h, w = display_size(trace)
    sx, sy = w / trace.photo_size[1], h / trace.photo_size[0]
    return tuple(int(round(v)) for v in (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy))


def object_boxes_view(trace: Trace, instance_id: int) -> np.ndarray:
    """The object's proposal (dashed white) and the box head's refined box (its colour)."""
    obj = trace.objects[instance_id]
    canvas = display_photo(trace).copy()
    x0, y0, x1, y1 = _photo_box(trace, obj.proposal_box)
    for start, end in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        _dashed_line(canvas, start, end)
    r = _photo_box(trace, obj.refined_box)
    cv2.rectangle(canvas, r[:2], r[2:], instance_color(instance_id), 3, cv2.LINE_AA)
    return canvas


def _dashed_line(canvas: np.ndarray, start, end, dash: int = 8) -> None:
    length = max(abs(end[0] - start[0]), abs(end[1] - start[1]), 1)
    for s in range(0, length, 2 * dash):
        a, b = s / length, min(s + dash, length) / length
        p = (int(start[0] + (end[0] - start[0]) * a), int(start[1] + (end[1] - start[1]) * a))
        q = (int(start[0] + (end[0] - start[0]) * b), int(start[1] + (end[1] - start[1]) * b))
        cv2.line(canvas, p, q, (255, 255, 255), 2, cv2.LINE_AA)


def cells_view(values: np.ndarray, size: int) -> np.ndarray:
    """A small map (7×7, 14×14, 28×28) enlarged to `size` px, cells kept sharp."""
    if values.size == 0:
        return np.zeros((size, size, 3), np.uint8)
    return cv2.resize(heat(values), (size, size), interpolation=cv2.INTER_NEAREST)


def object_mask(trace: Trace, instance_id: int, mask_threshold: float):
    """The object's mask at `mask_threshold`: the head's 28×28 pasted into its box exactly as the
    download's mask PNG is made (same function), as a MaskCrop in photo pixels."""
    obj = trace.objects[instance_id]
    probabilities = torch.from_numpy(obj.mask_probabilities)
    return paste_mask_crop(probabilities, obj.refined_box, trace.photo_size[0], trace.photo_size[1], mask_threshold)


def mask_view(trace: Trace, instance_id: int, mask_threshold: float) -> np.ndarray:
    """The photo around the object with its mask at `mask_threshold` painted in its colour."""
    crop = object_mask(trace, instance_id, mask_threshold)
    photo = trace.view.image
    x0, y0, x1, y1 = (int(v) for v in trace.objects[instance_id].refined_box)
    pad = max(8, (x1 - x0) // 8)
    x0, y0 = max(x0 - pad, 0), max(y0 - pad, 0)
    x1, y1 = min(x1 + pad, photo.shape[1]), min(y1 + pad, photo.shape[0])
    window = photo[y0:y1, x0:x1].copy()
    # The mask crop's part inside the window, painted straight in (no photo-sized arrays per move).
    top, left = max(crop.y0, y0), max(crop.x0, x0)
    bottom, right = min(crop.y1, y1), min(crop.x1, x1)
    if crop.pixels.size and bottom > top and right > left:
        inside = crop.pixels[top - crop.y0 : bottom - crop.y0, left - crop.x0 : right - crop.x0]
        region = window[top - y0 : bottom - y0, left - x0 : right - x0]
        region[inside] = (0.45 * region[inside] + 0.55 * np.array(instance_color(instance_id))).astype(np.uint8)
    long_side = max(window.shape[:2])
    if long_side > 480:
        f = 480 / long_side
        window = cv2.resize(window, (max(int(window.shape[1] * f), 1), max(int(window.shape[0] * f), 1)), interpolation=cv2.INTER_AREA)
    return window


def result_view(trace: Trace) -> np.ndarray:
    """The final overlay, as the Segment tab draws it, at display size (clicks on it are read in
    display pixels); drawn once per trace."""
    cached = getattr(trace, "_result", None)
    if cached is None:
        cached = cv2.resize(render_overlay(trace.view, RenderOptions()), display_size(trace)[::-1], interpolation=cv2.INTER_AREA)
        trace._result = cached  # type: ignore[attr-defined]
    return cached
