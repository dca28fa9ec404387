"""torchvision's input transform (resize rule, bilinear kernel, normalisation, padding), done on the
uint8 photo so a 48 MP image never exists as a float32 tensor."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.detection.image_list import ImageList

# Output rows resized at a time: bounds the float32 scratch to BAND_ROWS × photo width × 3.
BAND_ROWS = 256


def network_size(height: int, width: int, min_size: float, max_size: float) -> tuple[int, int]:
    """The (height, width) torchvision's GeneralizedRCNNTransform resizes a photo to.

    Same arithmetic as torchvision: its scale in double precision, then F.interpolate's
    recompute_scale_factor rule, floor(side × scale) (1920×1080 → 1333×749, not 750).
    """
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return math.floor(float(height) * scale), math.floor(float(width) * scale)


def _source_taps(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First and second source index and the second's weight per output index, as PyTorch's
    bilinear kernel (align_corners=False, no antialiasing) computes them, in float32."""
    scale = np.float32(in_size) / np.float32(out_size)
    centres = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    centres = np.maximum(centres, np.float32(0.0))
    first = centres.astype(np.int64)  # truncation == floor: centres are never negative
    second = np.minimum(first + 1, in_size - 1)
    weight = (centres - first.astype(np.float32)).astype(np.float32)
    return torch.from_numpy(first), torch.from_numpy(second), torch.from_numpy(weight)


def _as_tensor(pixels: np.ndarray) -> torch.Tensor:
    """A zero-copy uint8 tensor view of the photo (read-only arrays from Pillow included)."""
    with warnings.catch_warnings():
        # We only read from it; torch warns because Pillow's arrays are not writable.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(pixels)


def resize_bilinear(pixels: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """H×W×3 uint8 photo → 3×h×w float32 in 0..1, resized like F.interpolate(bilinear,
    align_corners=False, antialias=False), a band of rows at a time."""
    out_h, out_w = size
    source = _as_tensor(pixels)
    if (out_h, out_w) == tuple(pixels.shape[:2]):
        return source.permute(2, 0, 1).float().div_(255.0)
    rows_a, rows_b, row_weight = _source_taps(pixels.shape[0], out_h)
    out = torch.empty((1, 3, out_h, out_w), dtype=torch.float32)
    for start in range(0, out_h, BAND_ROWS):
        band = slice(start, min(start + BAND_ROWS, out_h))
        # Vertical pass by hand on just the two source rows each output row needs (PyTorch's
        # row taps), in float32; the horizontal pass is F.interpolate itself with the row count
        # unchanged, which is an exact identity vertically and PyTorch's own column taps.
        upper = source.index_select(0, rows_a[band]).float()
        lower = source.index_select(0, rows_b[band]).float()
        rows = torch.lerp(upper, lower, row_weight[band][:, None, None])
        rows = rows.permute(2, 0, 1)[None]  # 1×3×b×W, channels-last in memory
        out[:, :, band] = F.interpolate(rows, size=(rows.shape[2], out_w), mode="bilinear", align_corners=False)
    return out[0].div_(255.0)


def prepare_batch(transform: torch.nn.Module, photos: list[np.ndarray], device: torch.device) -> ImageList:
    """Photos → the padded, normalised batch torchvision's transform would build, and their network sizes."""
    min_size, max_size = float(transform.min_size[-1]), float(transform.max_size)
    mean = torch.tensor(transform.image_mean, dtype=torch.float32, device=device)[:, None, None]
    std = torch.tensor(transform.image_std, dtype=torch.float32, device=device)[:, None, None]
    tensors = []
    for pixels in photos:
        size = network_size(pixels.shape[0], pixels.shape[1], min_size, max_size)
        resized = resize_bilinear(pixels, size).to(device)
        tensors.append(resized.sub_(mean).div_(std))
    sizes = [tuple(t.shape[-2:]) for t in tensors]
    batched = transform.batch_images(tensors, size_divisible=transform.size_divisible)
    return ImageList(batched, sizes)
