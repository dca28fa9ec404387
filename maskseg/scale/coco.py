"""--format coco: the images' COCO documents merged into one coco.json, and objects.parquet (one row per object)."""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from maskseg import __version__

COCO_NAME = "coco.json"
PARQUET_NAME = "objects.parquet"
PARQUET_COLUMNS = ("input", "image", "image_id", "object", "category_id", "class", "score", "x", "y", "width", "height", "area")
ROWS_PER_GROUP = 50_000


class CocoWriter:
    """Merges per-image COCO documents (as `predict` bundles' instances.json hold them) in input
    order: image ids 1..N, annotation ids unique across the file, each object's id in its own image
    kept as `instance`. Annotations stream through a temporary file, so memory stays flat."""

    def __init__(self, out: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self._pa = pa
        self._schema = pa.schema([
            ("input", pa.string()), ("image", pa.string()), ("image_id", pa.int64()), ("object", pa.int64()),
            ("category_id", pa.int64()), ("class", pa.string()), ("score", pa.float64()), ("x", pa.float64()),
            ("y", pa.float64()), ("width", pa.float64()), ("height", pa.float64()), ("area", pa.int64()),
        ])
        # Both files are written under a .partial name and renamed when complete: a job stopped
        # half-way never leaves a truncated table that looks finished.
        self._parquet_partial = self.out / (PARQUET_NAME + ".partial")
        self._parquet = pq.ParquetWriter(self._parquet_partial, self._schema)
        self._annotations = tempfile.TemporaryFile("w+", encoding="utf-8", dir=self.out)
        self._rows: dict[str, list] = {name: [] for name in PARQUET_COLUMNS}
        self.images: list[dict] = []
        self.categories: dict[int, dict] = {}
        self.info: dict = {}
        self.objects = 0

    def add(self, input_name: str, document: dict) -> None:
        """One image's document, in input order."""
        image_id = len(self.images) + 1
        image = dict(document["images"][0], id=image_id, input=input_name)
        self.images.append(image)
        names = {c["id"]: c["name"] for c in document.get("categories", [])}
        for category in document.get("categories", []):
            self.categories.setdefault(category["id"], category)
        if not self.info:
            self.info = {k: v for k, v in document.get("info", {}).items() if k != "date_created"}
        for ann in document.get("annotations", []):
            self.objects += 1
            merged = dict(ann, id=self.objects, image_id=image_id, instance=ann["id"])
            self._annotations.write(("," if self.objects > 1 else "") + json.dumps(merged, separators=(",", ":")))
            x, y, w, h = ann["bbox"]
            values = (input_name, image["file_name"], image_id, ann["id"], ann["category_id"],
                      names.get(ann["category_id"], str(ann["category_id"])), ann["score"], x, y, w, h, ann["area"])
            for name, value in zip(PARQUET_COLUMNS, values):
                self._rows[name].append(value)
        if len(self._rows["input"]) >= ROWS_PER_GROUP:
            self._flush_rows()

    def _flush_rows(self) -> None:
        if self._rows["input"]:
            self._parquet.write_table(self._pa.table(self._rows, schema=self._schema))
            self._rows = {name: [] for name in PARQUET_COLUMNS}

    def close(self) -> tuple[Path, Path]:
        """Write coco.json and finish objects.parquet; returns both paths."""
        self._flush_rows()
        self._parquet.close()
        self._parquet_partial.replace(self.out / PARQUET_NAME)
        info = {**self.info, "description": f"maskseg {__version__} prediction, {len(self.images)} images merged",
                "date_created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        path = self.out / COCO_NAME
        partial = path.with_suffix(".json.partial")
        with open(partial, "w", encoding="utf-8") as handle:
            handle.write('{"info":' + json.dumps(info) + ',"images":' + json.dumps(self.images, separators=(",", ":")))
            handle.write(',"categories":' + json.dumps(sorted(self.categories.values(), key=lambda c: c["id"])))
            handle.write(',"annotations":[')
            self._annotations.seek(0)
            shutil.copyfileobj(self._annotations, handle)
            handle.write("]}\n")
        self._annotations.close()
        partial.replace(path)
        return path, self.out / PARQUET_NAME


def write_coco(out: Path, documents: Iterable[tuple[str, dict]]) -> tuple[Path, Path, int, int]:
    """coco.json and objects.parquet from (input name, document) pairs in input order; also the
    number of images and objects."""
    writer = CocoWriter(out)
    for input_name, document in documents:
        writer.add(input_name, document)
    coco_path, parquet_path = writer.close()
    return coco_path, parquet_path, len(writer.images), writer.objects
