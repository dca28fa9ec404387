"""The Ray actor: one Segmenter per actor, loaded once; a batch of inputs in, one result row per input out."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from maskseg.engine.export import coco_document, write_bundle
from maskseg.engine.render import RenderOptions
from maskseg.engine.segmenter import Segmenter
from maskseg.engine.sources import Source, read_sources
from maskseg.errors import MaskSegError, UsageError
from maskseg.scale.plan import JobSettings

RESULT_COLUMNS = ("order", "input", "folder", "signature", "status", "reason", "objects", "document", "model", "device", "pid")


class SegmentWorker:
    """Callable class for `Dataset.map_batches`: Ray Data keeps a pool of these actors, each with its
    own model, and sends each a batch of input rows at a time."""

    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings
        masks, contours, boxes, labels = settings.layers
        self.options = RenderOptions(opacity=settings.opacity, masks=masks, contours=contours, boxes=boxes, labels=labels)
        self.setup_error: tuple[str, str] | None = None
        try:
            self.segmenter = Segmenter(
                model=settings.model, checkpoint=settings.checkpoint, device=settings.device,
                max_pixels=settings.max_pixels, backend=settings.backend, precision=settings.precision,
            )
            # Checked with no image: a wrong class name or threshold stops the job before any image is read.
            self.segmenter.predict([], score_threshold=settings.score_threshold, mask_threshold=settings.mask_threshold,
                                   classes=list(settings.classes) or None, max_detections=settings.max_detections)
        except MaskSegError as exc:
            # Missing weights, an unknown class...: answered as rows, so the driver prints the sentence
            # (an exception here would reach the user as a dead actor's traceback).
            self.setup_error = ("usage" if isinstance(exc, UsageError) else "error", str(exc))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        """Decode the batch's inputs, segment the readable ones together (as the local CLI does), then
        write each bundle (or make its COCO document); an unreadable input becomes a 'failed' row."""
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        if self.setup_error is not None:
            status, sentence = self.setup_error
            results = [self._row(row, status, reason=sentence) for row in rows]
            return {column: [result[column] for result in results] for column in RESULT_COLUMNS}
        sources = [Source(Path(row["path"]), str(row["member"]) or None, int(row["index"])) for row in rows]
        results, images = [], []
        for row, (_source, image, reason) in zip(rows, read_sources(sources, self.settings.max_pixels)):
            results.append(self._row(row, "failed" if image is None else "done", reason=reason))
            if image is not None:
                images.append((results[-1], image))
        settings = self.settings
        predictions = self.segmenter.predict(
            [image for _row, image in images], score_threshold=settings.score_threshold,
            mask_threshold=settings.mask_threshold, classes=list(settings.classes) or None,
            max_detections=settings.max_detections, batch_size=max(1, len(images)),
        ) if images else []
        for (result, _image), prediction in zip(images, predictions):
            result["objects"] = len(prediction.instances)
            if settings.output_format == "coco":
                result["document"] = json.dumps(coco_document(prediction), separators=(",", ":"))
            else:
                write_bundle(prediction, Path(settings.out) / result["folder"], self.options)
        return {column: [result[column] for result in results] for column in RESULT_COLUMNS}

    def _row(self, row: dict[str, Any], status: str, reason: str = "") -> dict[str, Any]:
        loaded = None if self.setup_error else self.segmenter.loaded
        return {
            "order": int(row["order"]), "input": str(row["input"]), "folder": str(row["folder"]),
            "signature": str(row["signature"]), "status": status, "reason": reason, "objects": 0, "document": "",
            "model": loaded.title if loaded else "", "device": loaded.device_name if loaded else "", "pid": os.getpid(),
        }
