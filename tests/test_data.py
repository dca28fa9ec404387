"""Dataset loaders yield the same masks as their sources; augmentations move boxes with masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from maskseg.training.datasets import (
    COCO80_NAMES,
    CocoDataset,
    MaskFolderDataset,
    PanopticDataset,
    YoloSegDataset,
    default_transforms,
    open_dataset,
)
from conftest import require_or_skip
from maskseg.errors import MaskSegError
from maskseg.training.synth import SynthOptions, generate_dataset

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
PANOPTIC_JSON = SHARED / "coco_val2017_100" / "panoptic" / "panoptic_val2017.json"
COCO128 = SHARED / "coco128-seg"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("shapes"), SynthOptions(num_images=6, seed=5, size=96))


def test_coco_loader_returns_the_json_masks(shapes):
    dataset = open_dataset(shapes)
    assert isinstance(dataset, CocoDataset)
    coco = json.loads((shapes / "annotations.json").read_text())
    assert dataset.class_names == ["__background__"] + [c["name"] for c in coco["categories"]]
    for index, record in enumerate(dataset.records):
        anns = [a for a in coco["annotations"] if a["image_id"] == record.image_id]
        inst = dataset.load_instances(index)
        assert len(inst.masks) == len(anns)
        for mask, label, ann in zip(inst.masks, inst.labels, anns):
            rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
            assert np.array_equal(mask, mask_utils.decode(rle).astype(bool))
            assert dataset.class_names[label] == coco["categories"][ann["category_id"] - 1]["name"]


def test_coco_loader_reads_polygons(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    poly = [5, 5, 25, 5, 25, 20, 5, 20]
    coco = {
        "images": [{"id": 3, "file_name": "a.png", "width": 40, "height": 30}],
        "annotations": [{"id": 1, "image_id": 3, "category_id": 9, "segmentation": [poly], "iscrowd": 0, "bbox": [5, 5, 20, 15], "area": 300}],
        "categories": [{"id": 9, "name": "box"}],
    }
    (tmp_path / "inst.json").write_text(json.dumps(coco))
    dataset = open_dataset(tmp_path / "inst.json")
    inst = dataset.load_instances(0)
    assert dataset.class_names == ["__background__", "box"] and inst.labels.tolist() == [1]
    assert inst.masks[0].sum() == 300  # COCO's rasteriser: 20 x 15 pixels


def test_panoptic_loader_matches_json_areas_and_keeps_crowd_flags():
    require_or_skip(PANOPTIC_JSON.is_file(), f"shared COCO panoptic sample not at {PANOPTIC_JSON}")
    dataset = open_dataset(PANOPTIC_JSON)
    assert isinstance(dataset, PanopticDataset)
    assert len(dataset.class_names) == 81 and dataset.class_names[1] == "person"
    data = json.loads(PANOPTIC_JSON.read_text())
    things = {c["id"] for c in data["categories"] if c["isthing"]}
    seen_crowd = False
    for index in range(8):
        record = dataset.records[index]
        ann = next(a for a in data["annotations"] if a["image_id"] == record.image_id)
        segments = [s for s in ann["segments_info"] if s["category_id"] in things]
        inst = dataset.load_instances(index)
        assert inst.masks.shape == (len(segments), record.height, record.width)
        assert inst.masks.sum(axis=(1, 2)).tolist() == [s["area"] for s in segments]
        assert inst.iscrowd.tolist() == [s["iscrowd"] for s in segments]
        seen_crowd |= bool(inst.iscrowd.any())
        # crowd regions are evaluation-only: the training target leaves them out
        _, target = dataset[index]
        assert len(target["labels"]) == int((inst.iscrowd == 0).sum())
    assert seen_crowd  # image 000000000632 (third in the json) has a crowd region


def _shoelace(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def test_yolo_loader_rasterises_its_polygons():
    require_or_skip(COCO128.is_dir(), f"shared coco128-seg sample not at {COCO128}")
    dataset = open_dataset(COCO128)
    assert isinstance(dataset, YoloSegDataset)
    assert dataset.class_names[1:] == list(COCO80_NAMES) and dataset.class_names[1] == "person"
    checked = 0
    for index in range(8):
        polygons = dataset.read_polygons(index)
        inst = dataset.load_instances(index)
        assert len(polygons) == len(inst.masks)
        for (class_id, xy), mask, label in zip(polygons, inst.masks, inst.labels):
            assert dataset.class_names[label] == COCO80_NAMES[class_id]
            area = _shoelace(xy)
            if area > 400:  # small polygons are dominated by edge pixels
                assert abs(mask.sum() - area) / area < 0.08
                checked += 1
    assert checked > 10
    unlabelled = next(i for i, r in enumerate(dataset.records) if r.path.stem == "000000000250")
    assert len(dataset.load_instances(unlabelled).masks) == 0


def test_mask_folder_loader(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (50, 40), (90, 90, 90)).save(tmp_path / "images" / "pic.jpg")
    ids = Image.new("L", (50, 40), 0)
    draw = ImageDraw.Draw(ids)
    draw.rectangle([2, 2, 11, 11], fill=1)  # 10x10
    draw.rectangle([20, 10, 39, 29], fill=7)  # 20x20
    ids.save(tmp_path / "masks" / "pic.png")
    (tmp_path / "masks" / "pic.json").write_text(json.dumps({"1": "cat", "7": "dog"}))
    dataset = open_dataset(tmp_path)
    assert isinstance(dataset, MaskFolderDataset)
    assert dataset.class_names == ["__background__", "cat", "dog"]
    inst = dataset.load_instances(0)
    assert inst.masks.sum(axis=(1, 2)).tolist() == [100, 400]
    assert [dataset.class_names[k] for k in inst.labels] == ["cat", "dog"]
    assert inst.boxes.tolist() == [[2, 2, 12, 12], [20, 10, 40, 30]]


def test_augmentations_move_boxes_with_masks(shapes):
    dataset = open_dataset(shapes)
    dataset.transforms = default_transforms(train=True, vertical_flip=True)
    torch.manual_seed(0)
    for _ in range(3):
        for index in range(len(dataset)):
            image, target = dataset[index]
            assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
            for mask, box in zip(target["masks"], target["boxes"]):
                ys, xs = torch.nonzero(mask, as_tuple=True)
                tight = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                assert torch.allclose(box, torch.tensor(tight, dtype=box.dtype), atol=1.0)


def test_bad_paths_are_user_errors(tmp_path):
    with pytest.raises(MaskSegError, match="does not exist"):
        open_dataset(tmp_path / "nope")
    with pytest.raises(MaskSegError, match="not a dataset"):
        open_dataset(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MaskSegError):
        open_dataset(tmp_path / "bad.json")
