"""The synthetic shapes generator: reproducible bytes, honest masks, CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from maskseg.errors import MaskSegError
from maskseg.training.synth import SHAPE_CLASSES, SynthOptions, add_cli, generate_dataset


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = generate_dataset(tmp_path / "a", SynthOptions(num_images=4, seed=7, size=128))
    b = generate_dataset(tmp_path / "b", SynthOptions(num_images=4, seed=7, size=128))
    c = generate_dataset(tmp_path / "c", SynthOptions(num_images=4, seed=8, size=128))
    files_a = _files(a)
    assert len(files_a) == 5  # 4 images + annotations.json
    assert files_a == _files(b)
    assert files_a["images/shape_7_00000.png"] != _files(c).get("images/shape_8_00000.png")


def test_image_k_does_not_depend_on_how_many_are_made(tmp_path):
    few = generate_dataset(tmp_path / "few", SynthOptions(num_images=2, seed=3, size=96))
    many = generate_dataset(tmp_path / "many", SynthOptions(num_images=5, seed=3, size=96))
    assert (few / "images/shape_3_00001.png").read_bytes() == (many / "images/shape_3_00001.png").read_bytes()


def test_annotations_match_their_masks_and_cover_every_shape_kind(tmp_path):
    out = generate_dataset(tmp_path / "d", SynthOptions(num_images=40, seed=0, size=128))
    coco = json.loads((out / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == list(SHAPE_CLASSES)
    assert len(SHAPE_CLASSES) >= 5 and {"circle", "rectangle", "triangle"} <= set(SHAPE_CLASSES)
    assert {a["category_id"] for a in coco["annotations"]} == set(range(1, len(SHAPE_CLASSES) + 1))
    areas = []
    by_image: dict[int, list[np.ndarray]] = {}
    for ann in coco["annotations"]:
        rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
        mask = mask_utils.decode(rle).astype(bool)
        assert mask.sum() == ann["area"] > 0
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        by_image.setdefault(ann["image_id"], []).append(mask)
        areas.append(ann["area"])
    assert max(areas) > 10 * min(areas)  # a range of sizes
    # visible masks never overlap: a later shape hides what it covers
    for masks in by_image.values():
        assert (np.sum(masks, axis=0) <= 1).all()
    assert any(len(m) >= 4 for m in by_image.values())


def test_cli_writes_dataset_and_rejects_bad_counts(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    args = parser.parse_args(["synth", "--out", str(tmp_path / "s"), "--num", "2", "--seed", "1", "--size", "64"])
    assert args.handler(args) == 0
    assert len(list((tmp_path / "s" / "images").glob("*.png"))) == 2
    bad = parser.parse_args(["synth", "--out", str(tmp_path / "t"), "--num", "0"])
    with pytest.raises(MaskSegError):
        bad.handler(bad)
