"""Segmenter: images in, Predictions out. The only place that runs the network."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np
import torch

from maskseg.errors import UsageError
from maskseg.engine.images import DEFAULT_MAX_PIXELS, ImageSource, LoadedImage, load_image
from maskseg.engine.models import LoadedModel, load_model
from maskseg.engine.prediction import Instance, Prediction

# The network keeps everything down to this score, so a slider can go lower without a re-run.
SCORE_FLOOR = 0.05

ProgressCallback = Callable[[int, int], None]


class Segmenter:
    """Runs one cached Mask R-CNN over images with thresholds pushed into the model itself."""

    def __init__(
        self,
        model: str | None = "auto",
        checkpoint: str | Path | None = None,
        device: str | torch.device = "auto",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.loaded: LoadedModel = load_model(model=model, checkpoint=checkpoint, device=device)
        self.max_pixels = max_pixels
        _install_class_filter(self.loaded.network)

    @property
    def class_names(self) -> list[str]:
        """The classes a person can ask for (no background, no COCO 'N/A' gaps)."""
        return self.loaded.real_class_names

    def predict_one(self, image: ImageSource, **options) -> Prediction:
        """predict() for a single image."""
        return self.predict([image], **options)[0]

    def predict(
        self,
        images: Sequence[ImageSource],
        score_threshold: float = 0.5,
        mask_threshold: float = 0.5,
        classes: Iterable[str] | None = None,
        max_detections: int = 100,
        batch_size: int = 2,
        progress: ProgressCallback | None = None,
    ) -> list[Prediction]:
        """Segment every image; one Prediction each, in order. Bad images raise ImageLoadError."""
        _check_fraction("score threshold", score_threshold)
        _check_fraction("mask threshold", mask_threshold)
        if max_detections < 1:
            raise UsageError(f"Maximum objects must be at least 1, not {max_detections}.")
        if batch_size < 1:
            raise UsageError(f"Batch size must be at least 1, not {batch_size}.")
        allowed = self._label_ids(classes)
        floor = min(score_threshold, SCORE_FLOOR)
        results: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            batch = [load_image(img, max_pixels=self.max_pixels) for img in images[start : start + batch_size]]
            results.extend(self._run_batch(batch, floor, score_threshold, mask_threshold, allowed, max_detections))
            if progress is not None:
                progress(len(results), len(images))
        return results

    def _label_ids(self, classes: Iterable[str] | None) -> list[int] | None:
        names = self.loaded.class_names
        if not classes:
            # COCO's 'N/A' gaps are never real objects: keep them out unless the model has none.
            if any(n == "N/A" for n in names):
                return [i for i, n in enumerate(names) if i > 0 and n != "N/A"]
            return None
        wanted = [c.strip() for c in classes if c and c.strip()]
        unknown = [c for c in wanted if c not in names or c in ("N/A", "__background__")]
        if unknown:
            sample = ", ".join(self.class_names[:8])
            raise UsageError(
                f"Unknown class {', '.join(repr(u) for u in unknown)} for {self.loaded.title}; "
                f"known classes include {sample}, ..."
            )
        return sorted({names.index(c) for c in wanted}) or None

    def _run_batch(
        self,
        batch: list[LoadedImage],
        floor: float,
        score_threshold: float,
        mask_threshold: float,
        allowed: list[int] | None,
        max_detections: int,
    ) -> list[Prediction]:
        loaded = self.loaded
        net = loaded.network
        device = loaded.device
        tensors = []
        for image in batch:
            small = _shrink_for_network(image.pixels, net.transform.min_size[-1], net.transform.max_size)
            if not small.flags.writeable:
                small = small.copy()  # torch wants writable memory; PIL arrays are read-only
            tensors.append(torch.from_numpy(small).to(device).permute(2, 0, 1).float().div_(255))
        autocast = (
            torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else contextlib.nullcontext()
        )
        # One lock per model: thresholds live on the shared module, so concurrent requests queue.
        with loaded.lock, torch.inference_mode(), autocast:
            heads = net.roi_heads
            heads.score_thresh = floor
            heads.detections_per_img = max_detections
            net._maskseg_allowed_labels = allowed
            started = time.perf_counter()
            try:
                image_list, _ = net.transform(tensors)
                features = net.backbone(image_list.tensors)
                proposals, _ = net.rpn(image_list, features)
                detections, _ = heads(features, proposals, image_list.image_sizes)
            finally:
                net._maskseg_allowed_labels = None
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = (time.perf_counter() - started) / len(batch)
        predictions = []
        for image, det, network_size in zip(batch, detections, image_list.image_sizes):
            # Boxes come in the network's resized frame: scale them to the original photo.
            sy = image.height / network_size[0]
            sx = image.width / network_size[1]
            boxes = det["boxes"].float().cpu() * torch.tensor([sx, sy, sx, sy])
            masks = det["masks"][:, 0].float().cpu()
            instances = [
                Instance(
                    id=index + 1,
                    category_id=int(label),
                    class_name=loaded.class_names[int(label)],
                    score=float(score),
                    box=tuple(float(v) for v in box.tolist()),
                    mask_probabilities=mask,
                )
                for index, (box, label, score, mask) in enumerate(
                    zip(boxes, det["labels"].cpu(), det["scores"].float().cpu(), masks)
                )
            ]
            predictions.append(
                Prediction(
                    image=image.pixels,
                    image_name=image.name,
                    instances=instances,
                    score_floor=floor,
                    score_threshold=floor,
                    mask_threshold=mask_threshold,
                    model_title=loaded.title,
                    device_name=loaded.device_name,
                    inference_seconds=seconds,
                    class_names=loaded.class_names,
                ).filter(score_threshold=score_threshold)
            )
        return predictions


def _check_fraction(what: str, value: float) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise UsageError(f"The {what} must be between 0 and 1, not {value}.")


def _shrink_for_network(pixels: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """Downscale to the size torchvision's transform would pick, before it becomes a float tensor:
    a 48 MP photo then never exists as a float32 tensor (576 MB) inside the model."""
    height, width = pixels.shape[:2]
    scale = min(min_size / min(height, width), max_size / max(height, width))
    if scale >= 1.0:
        return pixels
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def _install_class_filter(network: torch.nn.Module) -> None:
    """Let the box head drop unwanted classes before NMS and top-k, inside the model.

    A forward hook on the class predictor moves the probability mass of unwanted classes into the
    background logit: the softmax denominator is unchanged, so wanted classes keep their exact
    scores, and unwanted ones fall below any threshold and never reach the mask head.
    """
    if getattr(network, "_maskseg_class_filter", False):
        return
    network._maskseg_allowed_labels = None

    def hook(_module, _inputs, output):
        allowed = network._maskseg_allowed_labels
        if allowed is None:
            return output
        class_logits, box_regression = output
        keep = torch.zeros(class_logits.shape[-1], dtype=torch.bool, device=class_logits.device)
        keep[allowed] = True
        keep[0] = True
        dropped = class_logits.masked_fill(keep, float("-inf"))
        dropped[:, 0] = class_logits[:, 0]
        logits = class_logits.masked_fill(~keep, float("-inf"))
        logits[:, 0] = torch.logsumexp(dropped, dim=-1)
        return logits, box_regression

    network.roi_heads.box_predictor.register_forward_hook(hook)
    network._maskseg_class_filter = True
