"""Prediction / Instance values: small mask probabilities kept, full-resolution masks on demand."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

from maskseg.errors import MaskSegError

if TYPE_CHECKING:
    from maskseg.engine.forward import MaskHead

TABLE_COLUMNS = ["#", "class", "score", "x1", "y1", "x2", "y2", "area_px", "area_pct"]


@dataclass(frozen=True)
class MaskCrop:
    """A binary mask stored only inside its bounding rectangle: rows y0:y1, columns x0:x1."""

    x0: int
    y0: int
    pixels: np.ndarray  # bool, (y1 - y0) × (x1 - x0)

    @property
    def x1(self) -> int:
        return self.x0 + self.pixels.shape[1]

    @property
    def y1(self) -> int:
        return self.y0 + self.pixels.shape[0]

    @property
    def area(self) -> int:
        return int(self.pixels.sum())

    def full(self, height: int, width: int) -> np.ndarray:
        """The mask at full image size (bool H×W)."""
        mask = np.zeros((height, width), dtype=bool)
        mask[self.y0 : self.y1, self.x0 : self.x1] = self.pixels
        return mask


def paste_mask_crop(
    probabilities: torch.Tensor, box: tuple[float, float, float, float], height: int, width: int,
    mask_threshold: float,
) -> MaskCrop:
    """The head's M×M mask pasted into its box, as torchvision's paste_masks_in_image does, but
    allocating only the box region instead of a full image per instance."""
    padded, scale = expand_masks(probabilities[None, None].float(), padding=1)
    x0b, y0b, x1b, y1b = expand_boxes(torch.tensor([box], dtype=torch.float32), scale).to(torch.int64)[0].tolist()
    w = max(x1b - x0b + 1, 1)
    h = max(y1b - y0b + 1, 1)
    x0, x1 = max(x0b, 0), min(x1b + 1, width)
    y0, y1 = max(y0b, 0), min(y1b + 1, height)
    if x1 <= x0 or y1 <= y0:
        return MaskCrop(0, 0, np.zeros((0, 0), dtype=bool))
    # Resize only the visible part: same pixels as resizing the whole box and cropping.
    resized = F.interpolate(padded, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    visible = resized[y0 - y0b : y1 - y0b, x0 - x0b : x1 - x0b]
    return MaskCrop(x0, y0, (visible > mask_threshold).numpy())


@dataclass(frozen=True)
class Instance:
    """One detected object: stable id, COCO/checkpoint category id, class name, score, box."""

    id: int
    category_id: int
    class_name: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in original-image pixels
    # The head's M×M output; None while it lives in the prediction's MaskHead (computed on demand).
    mask_probabilities: torch.Tensor | None = field(default=None, repr=False, compare=False)


class _MaskStore:
    """Pasted mask crops shared by a prediction and every re-filtered view of it.

    Keyed by instance id, which is unique among one prediction's candidates; a Prediction built
    with other instances must get its own store (the default).
    """

    def __init__(self) -> None:
        self._crops: dict[tuple[int, float], MaskCrop] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"_crops": dict(self._crops)}  # a lock cannot be pickled; the copy gets its own

    def __setstate__(self, state: dict) -> None:
        self._crops, self._lock = state["_crops"], threading.Lock()

    def get(
        self, instance: Instance, height: int, width: int, mask_threshold: float, mask_head: "MaskHead | None"
    ) -> MaskCrop:
        key = (instance.id, mask_threshold)
        crop = self._crops.get(key)
        if crop is None:
            probabilities = instance.mask_probabilities
            if probabilities is None:
                if mask_head is None:
                    raise MaskSegError(f"Object {instance.id} has no mask probabilities.")
                probabilities = mask_head.probabilities(instance.id - 1)
            crop = paste_mask_crop(probabilities, instance.box, height, width, mask_threshold)
            with self._lock:
                self._crops[key] = crop
        return crop


@dataclass
class Prediction:
    """Everything the network said about one image, kept down to `score_floor`."""

    image: np.ndarray  # H×W×3 uint8 RGB, full resolution
    image_name: str
    instances: list[Instance]
    score_floor: float  # the network was run at this threshold; lower ones need a re-run
    score_threshold: float
    mask_threshold: float = 0.5
    model_title: str = ""
    device_name: str = ""
    inference_seconds: float = 0.0
    class_names: list[str] = field(default_factory=list, repr=False)  # the model's, index = label
    # Everything the network returned down to score_floor; `instances` is the current view of it.
    candidates: list[Instance] | None = field(default=None, repr=False)
    # The view's class filter (None: every class) and cap; a later filter() keeps what it is not given.
    classes: tuple[str, ...] | None = None
    max_detections: int | None = None
    # Computes masks of candidates on demand (candidate id k is its index k - 1); shared by views.
    mask_head: "MaskHead | None" = field(default=None, repr=False, compare=False)
    _store: _MaskStore = field(default_factory=_MaskStore, repr=False)

    def __post_init__(self) -> None:
        if self.candidates is None:
            self.candidates = list(self.instances)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def image_stem(self) -> str:
        """The image's name without extension: its bundle folder name."""
        return Path(self.image_name).stem or "image"

    def detached(self) -> "Prediction":
        """This prediction with every candidate's mask computed and the network's features let go:
        complete without the network, so it can leave the process that ran it (a ZeroGPU worker)
        and still serve any later threshold, class filter or cap."""
        if self.mask_head is not None and not self.mask_head.released:
            self.mask_head.ensure_all()
            self.mask_head.release()
        return self

    def can_filter(self, score_threshold: float) -> bool:
        """Whether `score_threshold` can be served from this prediction without re-running."""
        return score_threshold >= self.score_floor

    def filter(
        self,
        score_threshold: float | None = None,
        classes: Iterable[str] | None = None,
        max_detections: int | None = None,
        mask_threshold: float | None = None,
    ) -> "Prediction":
        """A view keeping candidates at or above the threshold, of these classes, at most N of them.

        Always filters the network's full answer (down to the floor), so a threshold can go down
        as well as up; mask crops are shared, so re-filtering never pastes a mask twice. Settings
        not given stay as they were; `classes=[]` means every class again.
        """
        threshold = self.score_threshold if score_threshold is None else float(score_threshold)
        if not self.can_filter(threshold):
            raise MaskSegError(
                f"Threshold {threshold:.2f} is below {self.score_floor:.2f}, the floor this image was "
                "run at; run the model again at the lower threshold."
            )
        wanted = self.classes if classes is None else (tuple(sorted(set(classes))) or None)
        cap = self.max_detections if max_detections is None else max(int(max_detections), 0)
        kept = [
            inst
            for inst in self.candidates
            if inst.score >= threshold and (wanted is None or inst.class_name in wanted)
        ]
        if cap is not None:
            kept = kept[:cap]
        if self.mask_head is not None and not self.mask_head.released:
            # One mask-head call for every newly shown object, instead of one per object later.
            self.mask_head.ensure(inst.id - 1 for inst in kept if inst.mask_probabilities is None)
        return replace(
            self,
            instances=kept,
            score_threshold=threshold,
            classes=wanted,
            max_detections=cap,
            mask_threshold=self.mask_threshold if mask_threshold is None else float(mask_threshold),
        )

    def mask_crop(self, instance: Instance) -> MaskCrop:
        """The instance's binary mask at full resolution, stored inside its box."""
        return self._store.get(instance, self.height, self.width, self.mask_threshold, self.mask_head)

    def mask(self, instance: Instance) -> np.ndarray:
        """The instance's binary mask as a full-size H×W bool array."""
        return self.mask_crop(instance).full(self.height, self.width)

    def masks(self) -> np.ndarray:
        """All kept masks as an N×H×W bool array (allocates N full-size masks: prefer mask_crop)."""
        out = np.zeros((len(self.instances), self.height, self.width), dtype=bool)
        for index, inst in enumerate(self.instances):
            crop = self.mask_crop(inst)
            out[index, crop.y0 : crop.y1, crop.x0 : crop.x1] = crop.pixels
        return out

    def label_map(self) -> np.ndarray:
        """uint16 H×W: 0 background, k where instance id k is; where masks overlap the higher score wins."""
        label_map = np.zeros((self.height, self.width), dtype=np.uint16)
        # Paint lowest score first so higher-scoring instances overwrite it.
        for inst in sorted(self.instances, key=lambda i: i.score):
            crop = self.mask_crop(inst)
            region = label_map[crop.y0 : crop.y1, crop.x0 : crop.x1]
            region[crop.pixels] = inst.id
        return label_map

    def table_rows(self) -> list[list]:
        """One row per instance with TABLE_COLUMNS, the same values as objects.csv."""
        total = float(self.height * self.width)
        rows = []
        for inst in self.instances:
            area = self.mask_crop(inst).area
            x1, y1, x2, y2 = (round(v, 1) for v in inst.box)
            rows.append(
                [inst.id, inst.class_name, round(inst.score, 4), x1, y1, x2, y2, area,
                 round(100.0 * area / total, 3)]
            )
        return rows

    def summary(self) -> str:
        """A one-line status: objects found, model, device and time."""
        count = len(self.instances)
        if count == 0:
            return f"No objects above {self.score_threshold:.2f}; lower the threshold."
        noun = "object" if count == 1 else "objects"
        return (
            f"{count} {noun} above {self.score_threshold:.2f} · {self.model_title} on "
            f"{self.device_name} · {self.inference_seconds * 1000:.0f} ms"
        )
