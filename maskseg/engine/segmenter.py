"""Segmenter: images in, Predictions out. The only place that runs the network."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from maskseg.errors import ImageLoadError, UsageError
from maskseg.engine.backend import default_backend, default_precision
from maskseg.engine.forward import Candidates, MaskHead, detect
from maskseg.engine.images import DEFAULT_MAX_PIXELS, ImageSource, LoadedImage, load_image
from maskseg.engine.models import LoadedModel, load_model, release_device_memory
from maskseg.engine.prediction import Instance, Prediction
from maskseg.engine.preprocess import network_size, prepare_batch

# The network keeps everything down to this score, so a slider can go lower without a re-run.
SCORE_FLOOR = 0.05
# Label names that are never objects: the background and COCO's unused ids.
NOT_CLASSES = ("__background__", "N/A")

ProgressCallback = Callable[[int, int], None]


class Segmenter:
    """Runs one cached Mask R-CNN over images with thresholds pushed into the model itself."""

    def __init__(
        self,
        model: str | None = "auto",
        checkpoint: str | Path | None = None,
        device: str | torch.device = "auto",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        backend: str | None = None,
        precision: str | None = None,
    ) -> None:
        """`backend`: auto (OpenVINO on CPU, torch on CUDA), torch or openvino; `precision`: fp32
        or bf16. Unset, they come from MASKSEG_BACKEND / MASKSEG_PRECISION, else auto and fp32."""
        self.loaded: LoadedModel = load_model(
            model=model, checkpoint=checkpoint, device=device,
            backend=backend or default_backend(), precision=precision or default_precision(),
        )
        self.max_pixels = max_pixels

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, max_pixels: int = DEFAULT_MAX_PIXELS) -> "Segmenter":
        """A Segmenter over a network already in memory (training's validation uses its own)."""
        segmenter = cls.__new__(cls)
        segmenter.loaded = loaded
        segmenter.max_pixels = max_pixels
        return segmenter

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
        keep_features: bool = False,
    ) -> list[Prediction]:
        """Segment every image; one Prediction each, in order. Bad images raise ImageLoadError.

        Each Prediction holds every candidate down to the floor; classes and the cap apply after
        the network, the same way `Prediction.filter` applies them, so every path agrees. Masks
        are computed for the objects returned; `keep_features=True` keeps what a later, lower
        `filter` needs to compute more (tens of MB per image).
        """
        _check_fraction("score threshold", score_threshold)
        _check_fraction("mask threshold", mask_threshold)
        if max_detections < 1:
            raise UsageError(f"Maximum objects must be at least 1, not {max_detections}.")
        if batch_size < 1:
            raise UsageError(f"Batch size must be at least 1, not {batch_size}.")
        wanted = self._check_classes(classes)
        floor = min(score_threshold, SCORE_FLOOR)
        results: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            batch = [load_image(img, max_pixels=self.max_pixels) for img in images[start : start + batch_size]]
            for prediction in self._run_batch(batch, floor, mask_threshold):
                view = prediction.filter(score_threshold=score_threshold, classes=wanted, max_detections=max_detections)
                if not keep_features:
                    prediction.mask_head.release()
                results.append(view)
            if progress is not None:
                progress(len(results), len(images))
        return results

    def _check_classes(self, classes: Iterable[str] | None) -> list[str] | None:
        """The wanted class names, or None for all; unknown names are a user error."""
        if not classes:
            return None
        names = self.loaded.class_names
        wanted = [c.strip() for c in classes if c and c.strip()]
        unknown = [c for c in wanted if c not in names or c in NOT_CLASSES]
        if unknown:
            sample = ", ".join(self.class_names[:8])
            raise UsageError(
                f"Unknown class {', '.join(repr(u) for u in unknown)} for {self.loaded.title}; "
                f"known classes include {sample}, ..."
            )
        return sorted(set(wanted)) or None

    def _run_batch(self, batch: list[LoadedImage], floor: float, mask_threshold: float) -> list[Prediction]:
        """Predictions for a batch, in order, running images together only when the network sees
        them at the same size: padding one to another's size would change its answer."""
        transform = self.loaded.network.transform
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(batch):
            size = network_size(image.height, image.width, float(transform.min_size[-1]), float(transform.max_size))
            groups.setdefault(size, []).append(index)
        results: dict[int, Prediction] = {}
        for indices in groups.values():
            group = [batch[i] for i in indices]
            results.update(zip(indices, self._run_fitting(group, floor, mask_threshold)))
        return [results[i] for i in range(len(batch))]

    def _run_fitting(self, group: list[LoadedImage], floor: float, mask_threshold: float) -> list[Prediction]:
        """_run_group, halving a group that runs out of GPU memory until it fits (results do not
        depend on the group, so the answer is the same); one photo that cannot fit is a clear error."""
        try:
            return self._run_group(group, floor, mask_threshold)
        except torch.OutOfMemoryError:
            release_device_memory(self.loaded.device)
            if len(group) == 1:
                raise ImageLoadError(
                    f"{group[0].name} does not fit in the GPU's memory even alone; lower --max-pixels or "
                    "use --device cpu."
                ) from None
        half = len(group) // 2
        return self._run_fitting(group[:half], floor, mask_threshold) + self._run_fitting(group[half:], floor, mask_threshold)

    def _run_group(self, group: list[LoadedImage], floor: float, mask_threshold: float) -> list[Prediction]:
        """Backbone, RPN and box head once for images of one network size; masks left on demand."""
        loaded = self.loaded
        net, device = loaded.network, loaded.device
        autocast = autocast_for(loaded)
        # One lock per model: thresholds live on the shared module, so concurrent requests queue.
        with loaded.lock, torch.inference_mode(), autocast:
            started = time.perf_counter()
            images = prepare_batch(net.transform, [image.pixels for image in group], device)
            features, found = detect(net, images, floor)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = (time.perf_counter() - started) / len(group)
        real = torch.tensor([name not in NOT_CLASSES for name in loaded.class_names], dtype=torch.bool)
        predictions = []
        for index, (image, candidates) in enumerate(zip(group, found)):
            # COCO's 'N/A' gaps are never real objects: they never become candidates.
            keep = real.to(candidates.labels.device)[candidates.labels]
            candidates = Candidates(
                candidates.boxes[keep], candidates.scores[keep], candidates.labels[keep], candidates.network_size
            )
            own_features = {name: level[index : index + 1] for name, level in features.items()}
            mask_head = MaskHead(net, own_features, candidates, loaded.lock, precision=lambda: autocast_for(loaded))
            predictions.append(self._prediction(image, candidates, mask_head, floor, mask_threshold, seconds))
        return predictions

    def _prediction(
        self, image: LoadedImage, candidates: Candidates, mask_head: MaskHead, floor: float,
        mask_threshold: float, seconds: float,
    ) -> Prediction:
        """A Prediction of every candidate, boxes scaled to the photo as torchvision's postprocess does."""
        loaded = self.loaded
        # torchvision's resize_boxes: float32 ratios of original to network size, per axis.
        ratio_h = torch.tensor(image.height, dtype=torch.float32) / torch.tensor(candidates.network_size[0], dtype=torch.float32)
        ratio_w = torch.tensor(image.width, dtype=torch.float32) / torch.tensor(candidates.network_size[1], dtype=torch.float32)
        boxes = candidates.boxes.float().cpu() * torch.stack([ratio_w, ratio_h, ratio_w, ratio_h])
        instances = [
            Instance(
                id=index + 1,
                category_id=int(label),
                class_name=loaded.class_names[int(label)],
                score=float(score),
                box=tuple(float(v) for v in box),
            )
            for index, (box, label, score) in enumerate(
                zip(boxes.tolist(), candidates.labels.tolist(), candidates.scores.float().tolist())
            )
        ]
        return Prediction(
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
            mask_head=mask_head,
        )


AUTOCAST_TYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def autocast_for(loaded: LoadedModel):
    """Autocast in the model's precision for torch (fp16/bf16 on CUDA, bf16 on CPU); plain fp32
    otherwise (OpenVINO applies its own precision inside the compiled parts)."""
    dtype = AUTOCAST_TYPES.get(loaded.precision)
    if dtype is None or loaded.backend != "torch":
        return contextlib.nullcontext()
    return torch.autocast(loaded.device.type, dtype=dtype)


def _check_fraction(what: str, value: float) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise UsageError(f"The {what} must be between 0 and 1, not {value}.")
