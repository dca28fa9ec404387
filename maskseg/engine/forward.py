"""Mask R-CNN's eval forward, stage by stage, calling the network's own modules in torchvision's order.

Split in two so the mask head runs only on the objects someone looks at: `detect` runs the backbone,
the RPN and the box head and keeps every candidate down to the score floor (no cap, no class filter),
and `MaskHead` computes the 28×28 mask probabilities of chosen candidates later, from kept features.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterable

import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import maskrcnn_inference

from maskseg.engine.roi_pool import pool_rois
from maskseg.errors import MaskSegError

# Candidates kept per image after NMS. torchvision's cap is 100 *after* any class filter a person
# might apply later, so the engine keeps far more and applies classes and the cap afterwards.
CANDIDATE_LIMIT = 2000


@dataclass
class Candidates:
    """One image's detections down to the floor, best first, in the network's resized frame."""

    boxes: torch.Tensor  # K×4 float, network frame
    scores: torch.Tensor  # K
    labels: torch.Tensor  # K, the model's label index
    network_size: tuple[int, int]  # (height, width) the photo was resized to


def detect(
    network: torch.nn.Module, images: ImageList, score_floor: float
) -> tuple[dict[str, torch.Tensor], list[Candidates]]:
    """Backbone + FPN, RPN and box head on a batch: its features and every image's candidates."""
    heads = network.roi_heads
    heads.score_thresh = score_floor
    heads.detections_per_img = CANDIDATE_LIMIT
    features = network.backbone(images.tensors)
    proposals, _ = network.rpn(images, features)
    pooled = pool_rois(heads.box_roi_pool, features, proposals, images.image_sizes)
    class_logits, box_regression = heads.box_predictor(heads.box_head(pooled))
    boxes, scores, labels = heads.postprocess_detections(class_logits, box_regression, proposals, images.image_sizes)
    candidates = [
        Candidates(b, s, l, tuple(size)) for b, s, l, size in zip(boxes, scores, labels, images.image_sizes)
    ]
    return features, candidates


class MaskHead:
    """The mask head for one image's candidates, run on demand; keeps each result it computed.

    Holds that image's FPN features until `release()`; after that, objects whose masks were not
    computed cannot get one (a clear error says so).
    """

    def __init__(
        self, network: torch.nn.Module, features: dict[str, torch.Tensor], candidates: Candidates,
        lock: threading.RLock, precision: Callable[[], ContextManager] = contextlib.nullcontext,
    ) -> None:
        """`precision`: the autocast the features were made under; the mask head runs under it too
        (fp16/bf16 features meet fp32 weights otherwise, and RoIAlign has no CPU bf16 kernel)."""
        self._network = network
        self._precision = precision
        self._features: dict[str, torch.Tensor] | None = features
        self._boxes = candidates.boxes
        self._labels = candidates.labels
        self._size = candidates.network_size
        self._lock = lock
        self._done: dict[int, torch.Tensor] = {}

    @property
    def released(self) -> bool:
        return self._features is None

    def probabilities(self, index: int) -> torch.Tensor:
        """Candidate `index`'s M×M mask probabilities (CPU float32), computing them if needed."""
        if index not in self._done:
            self.ensure([index])
        return self._done[index]

    def ensure(self, indices: Iterable[int]) -> None:
        """Compute every missing mask among `indices` in one mask-head call."""
        missing = sorted({int(i) for i in indices} - self._done.keys())
        if not missing:
            return
        if self._features is None:
            raise MaskSegError(
                f"The mask of object {missing[0] + 1} was not computed and the network's features are "
                "gone; run predict() with keep_features=True to lower the threshold afterwards."
            )
        with self._lock, torch.inference_mode(), self._precision():
            chosen = torch.tensor(missing, dtype=torch.int64, device=self._boxes.device)
            heads = self._network.roi_heads
            pooled = pool_rois(heads.mask_roi_pool, self._features, [self._boxes[chosen]], [self._size])
            logits = heads.mask_predictor(heads.mask_head(pooled))
            probs = maskrcnn_inference(logits, [self._labels[chosen]])[0][:, 0].float().cpu()
        for index, mask in zip(missing, probs):
            self._done[index] = mask

    def release(self) -> None:
        """Drop the features (tens of MB); masks already computed stay."""
        self._features = None

    def ensure_all(self, chunk: int = 256) -> None:
        """Compute every candidate's mask (in chunks, to bound the mask head's memory)."""
        count = int(self._boxes.shape[0])
        for start in range(0, count, chunk):
            self.ensure(range(start, min(start + chunk, count)))

    def __getstate__(self) -> dict:
        """Pickled (as a ZeroGPU worker returns it): the masks computed so far and the boxes, on
        the CPU; the network, its features and the lock stay behind, so the copy is released."""
        return {"_done": self._done, "_boxes": self._boxes.cpu(), "_labels": self._labels.cpu(), "_size": self._size}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._network, self._features, self._lock = None, None, threading.RLock()
        self._precision = contextlib.nullcontext
