"""Check that a bundle's files agree: COCO RLEs = PNG masks = cut-outs' alpha, label map, CSV, overlay size."""

from __future__ import annotations

import csv
import io
import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from maskseg.engine.cutouts import cutout_file_name
from maskseg.engine.export import CSV_COLUMNS, mask_file_name


@dataclass
class BundleSummary:
    """What a checked bundle holds."""

    width: int
    height: int
    num_instances: int
    class_names: list[str]


def _read_png(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def check_bundle(path: str | Path) -> BundleSummary:
    """Raise AssertionError naming the first disagreement in a bundle folder or single-bundle zip."""
    path = Path(path)
    if path.is_dir():
        files = {str(p.relative_to(path)).replace("\\", "/"): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    else:
        with zipfile.ZipFile(path) as archive:
            files = {name: archive.read(name) for name in archive.namelist() if not name.endswith("/")}
    return check_bundle_files(files)


def check_bundle_files(files: dict[str, bytes]) -> BundleSummary:
    """check_bundle on an in-memory {relative path: bytes} mapping."""
    for required in ("overlay.png", "label_map.png", "instances.json", "objects.csv"):
        assert required in files, f"bundle lacks {required}"
    document = json.loads(files["instances.json"])
    # pycocotools must load it as a COCO file (it reads from a path).
    with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as handle:
        handle.write(files["instances.json"])
    coco = COCO(handle.name)
    Path(handle.name).unlink()
    image = document["images"][0]
    width, height = image["width"], image["height"]
    overlay = _read_png(files["overlay.png"])
    assert overlay.shape[:2] == (height, width), f"overlay is {overlay.shape[:2]}, image is {(height, width)}"
    label_map = _read_png(files["label_map.png"])
    assert label_map.dtype == np.uint16, f"label map is {label_map.dtype}, expected 16-bit"
    assert label_map.shape == (height, width), "label map size differs from the image"
    names = {c["id"]: c["name"] for c in document["categories"]}
    annotations = sorted(coco.loadAnns(coco.getAnnIds()), key=lambda a: a["id"])
    mask_files = sorted(k for k in files if k.startswith("masks/"))
    assert len(mask_files) == len(annotations), f"{len(mask_files)} mask PNGs for {len(annotations)} annotations"
    _check_cutout_names(files, [(a["id"], names[a["category_id"]]) for a in annotations])
    rows = list(csv.reader(io.StringIO(files["objects.csv"].decode())))
    assert rows[0] == CSV_COLUMNS, f"objects.csv header is {rows[0]}"
    assert len(rows) - 1 == len(annotations), "objects.csv rows and annotations differ in number"
    union = np.zeros((height, width), dtype=bool)
    by_score = {}
    for ann, row in zip(annotations, rows[1:]):
        name = names[ann["category_id"]]
        mask_name = mask_file_name(ann["id"], name)
        assert mask_name in files, f"bundle lacks {mask_name} for instance {ann['id']}"
        png = _read_png(files[mask_name])
        assert set(np.unique(png).tolist()) <= {0, 255}, "mask PNG is not 0/255"
        decoded = mask_utils.decode(ann["segmentation"]).astype(bool)
        assert np.array_equal(decoded, png == 255), f"RLE of instance {ann['id']} differs from its PNG"
        _check_cutout(files, cutout_file_name(ann["id"], name), png == 255)
        assert ann["area"] == int(decoded.sum()), f"area of instance {ann['id']} differs from its mask"
        mine = label_map == ann["id"]
        assert not (mine & ~decoded).any(), f"label map marks instance {ann['id']} outside its mask"
        by_score[ann["id"]] = (ann["score"], decoded)
        union |= decoded
        x, y, w, h = ann["bbox"]
        assert int(row[0]) == ann["id"] and row[1] == name, f"CSV row {row[:2]} vs instance {ann['id']} {name}"
        assert abs(float(row[2]) - ann["score"]) < 1e-3, f"CSV score differs for instance {ann['id']}"
        expected_box = (x, y, x + w, y + h)
        assert all(abs(float(a) - b) < 0.2 for a, b in zip(row[3:7], expected_box)), "CSV box differs from bbox"
        assert int(row[7]) == ann["area"], f"CSV area differs for instance {ann['id']}"
    assert np.array_equal(label_map > 0, union), "label map foreground differs from the union of masks"
    # Where masks overlap, the label map must hold the highest-scoring one.
    for instance_id, (score, decoded) in by_score.items():
        owners = label_map[decoded]
        for owner in np.unique(owners):
            assert by_score[int(owner)][0] >= score, f"label map gives a lower-scoring owner over {instance_id}"
    return BundleSummary(width, height, len(annotations), [names[a["category_id"]] for a in annotations])


def _check_cutout_names(files: dict[str, bytes], objects: list[tuple[int, str]]) -> None:
    """Exactly one cutouts/NN_<class>.png per object: none missing, none left over."""
    present = {k for k in files if k.startswith("cutouts/")}
    if objects and not present:
        raise AssertionError(
            "bundle has no cutouts/ folder: it was written before cut-outs became part of the bundle "
            "format (or they were removed); export it again"
        )
    expected = {cutout_file_name(instance_id, name) for instance_id, name in objects}
    missing, extra = sorted(expected - present), sorted(present - expected)
    assert not missing, f"bundle lacks the cut-out {missing[0]} ({len(missing)} missing)"
    assert not extra, f"cut-out {extra[0]} matches no object in instances.json ({len(extra)} extra)"


def _check_cutout(files: dict[str, bytes], name: str, mask: np.ndarray) -> None:
    """The cut-out's alpha is the mask's tight crop (0/255), and its transparent pixels hold no photo."""
    cutout = _read_png(files[name])
    assert cutout is not None and cutout.ndim == 3 and cutout.shape[2] == 4 and cutout.dtype == np.uint8, (
        f"{name} is not an 8-bit RGBA PNG"
    )
    alpha = cutout[:, :, 3]
    assert set(np.unique(alpha).tolist()) <= {0, 255}, f"{name} has alpha values other than 0 and 255"
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        assert alpha.shape == (1, 1) and not alpha.any(), f"{name} should be 1×1 and transparent: its mask is empty"
    else:
        tight = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        assert alpha.shape == tight.shape, f"{name} is {alpha.shape}, its mask's tight box is {tight.shape}"
        assert np.array_equal(alpha == 255, tight), f"{name}'s alpha differs from its mask"
    assert not cutout[alpha == 0, :3].any(), f"{name} keeps photo pixels where it is transparent"
