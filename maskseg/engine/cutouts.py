"""Transparent cut-outs: each object's pixels as an RGBA image cropped to the object."""

from __future__ import annotations

import re

import numpy as np

from maskseg.engine.prediction import Instance, Prediction


def cutout_file_name(instance_id: int, class_name: str) -> str:
    """cutouts/NN_<class>.png, numbered like masks/NN_<class>.png."""
    safe = re.sub(r"[^A-Za-z0-9]+", "-", class_name).strip("-") or "object"
    return f"cutouts/{instance_id:02d}_{safe}.png"


def cutout_rgba(prediction: Prediction, instance: Instance) -> np.ndarray:
    """The object's photo pixels as RGBA, transparent outside its mask, cropped tight (1×1 if empty)."""
    crop = prediction.mask_crop(instance)
    rows = np.flatnonzero(crop.pixels.any(axis=1)) if crop.pixels.size else np.empty(0, dtype=np.int64)
    if rows.size == 0:
        return np.zeros((1, 1, 4), dtype=np.uint8)
    cols = np.flatnonzero(crop.pixels.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    inside = crop.pixels[r0:r1, c0:c1]
    y0, x0 = crop.y0 + r0, crop.x0 + c0
    out = np.zeros((r1 - r0, c1 - c0, 4), dtype=np.uint8)
    # Copy only the pixels inside the mask: transparent pixels stay 0, so the background of the
    # rectangle cannot be recovered from a shared cut-out (and the PNG is smaller).
    photo = prediction.image[y0 : y0 + (r1 - r0), x0 : x0 + (c1 - c0)]
    np.copyto(out[..., :3], photo, where=inside[..., None])
    out[..., 3] = inside * np.uint8(255)
    return out
