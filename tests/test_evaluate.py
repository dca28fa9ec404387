"""`maskseg eval`: COCO AP from pycocotools, exact precision/recall/F1, prediction bundles."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskseg.training.datasets import open_dataset
from maskseg.training.evaluate import add_cli, coco_metrics, read_bundles
from maskseg.training.synth import SynthOptions, generate_dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("shapes"), SynthOptions(num_images=8, seed=11, size=96))


def _perfect(gt: dict) -> list[dict]:
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "segmentation": a["segmentation"], "score": 0.9}
        for a in gt["annotations"]
    ]


def _shifted(gt: dict, rng: np.random.Generator) -> list[dict]:
    """Imperfect predictions: masks moved by a few pixels, random scores, some wrong classes."""
    out = []
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}
    for a in gt["annotations"]:
        h, w = sizes[a["image_id"]]
        rle = dict(a["segmentation"], counts=a["segmentation"]["counts"].encode())
        mask = np.roll(mask_utils.decode(rle), int(rng.integers(-4, 5)), axis=1)
        enc = mask_utils.encode(np.asfortranarray(mask))
        enc["counts"] = enc["counts"].decode()
        x, y, bw, bh = a["bbox"]
        category = a["category_id"] if rng.uniform() > 0.15 else 1 + (a["category_id"] % 5)
        out.append({"image_id": a["image_id"], "category_id": category, "bbox": [x + float(rng.normal(0, 2)), y, bw, bh], "segmentation": enc, "score": float(rng.uniform(0.2, 1))})
    return out


def test_perfect_predictions_score_one(shapes):
    gt = open_dataset(shapes).to_coco()
    result = coco_metrics(gt, _perfect(gt))
    for m in (result.box, result.mask):
        assert m.ap == pytest.approx(1.0) and m.ap50 == pytest.approx(1.0) and m.ap75 == pytest.approx(1.0)
        assert (m.precision, m.recall, m.f1) == (1.0, 1.0, 1.0)
        assert m.false_negatives == 0


def test_one_missed_object_gives_exact_recall(shapes):
    gt = open_dataset(shapes).to_coco()
    n = len(gt["annotations"])
    dets = _perfect(gt)[1:]  # miss the first object
    dets.append(dict(dets[0], score=0.3, image_id=gt["images"][-1]["id"], bbox=[0, 0, 3, 3]))  # a low-score false positive
    result = coco_metrics(gt, dets, score_threshold=0.5)
    assert result.mask.recall == pytest.approx((n - 1) / n)
    assert result.mask.precision == 1.0  # the false positive is below the threshold
    assert result.mask.f1 == pytest.approx(2 * (n - 1) / (2 * n - 1))
    assert (result.mask.true_positives, result.mask.false_negatives) == (n - 1, 1)
    low = coco_metrics(gt, dets, score_threshold=0.1)
    assert low.mask.precision == pytest.approx((n - 1) / n)
    assert result.mask.ap < 1.0


def test_no_detections_means_zero_not_a_crash(shapes):
    gt = open_dataset(shapes).to_coco()
    result = coco_metrics(gt, [])
    assert result.mask.ap == 0.0 and result.mask.recall == 0.0 and result.mask.false_negatives == len(gt["annotations"])


def _pycocotools_stats(gt_path: Path, dets: list[dict], iou_type: str) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        if iou_type == "segm":
            dets = [{k: v for k, v in d.items() if k != "bbox"} for d in dets]
        evaluator = COCOeval(gt, gt.loadRes(dets), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def test_numbers_equal_pycocotools_on_the_same_files(shapes, tmp_path):
    gt = json.loads((shapes / "annotations.json").read_text())
    dets = _shifted(gt, np.random.default_rng(0))
    result = coco_metrics(open_dataset(shapes).to_coco(), dets)
    box = _pycocotools_stats(shapes / "annotations.json", dets, "bbox")
    segm = _pycocotools_stats(shapes / "annotations.json", dets, "segm")
    assert 0.05 < result.mask.ap < 0.95  # imperfect, so the comparison means something
    assert [result.box.ap, result.box.ap50, result.box.ap75] == pytest.approx(list(box[:3]), abs=1e-9)
    assert [result.mask.ap, result.mask.ap50, result.mask.ap75] == pytest.approx(list(segm[:3]), abs=1e-9)


def _write_bundles(gt: dict, dets: list[dict], out: Path) -> None:
    """Prediction bundles as `maskseg predict` writes them, with category ids renumbered."""
    names = {c["id"]: c["name"] for c in gt["categories"]}
    for img in gt["images"]:
        folder = out / Path(img["file_name"]).stem
        folder.mkdir(parents=True)
        mine = [d for d in dets if d["image_id"] == img["id"]]
        cats = [{"id": 100 + cid, "name": name} for cid, name in names.items()]
        anns = [dict(d, image_id=1, category_id=100 + d["category_id"], iscrowd=0) for d in mine]
        (folder / "instances.json").write_text(json.dumps({"images": [dict(img, id=1)], "categories": cats, "annotations": anns}))


def test_bundle_folder_gives_the_same_numbers(shapes, tmp_path):
    dataset = open_dataset(shapes)
    gt = dataset.to_coco()
    dets = _shifted(json.loads((shapes / "annotations.json").read_text()), np.random.default_rng(1))
    _write_bundles(gt, dets, tmp_path / "bundles")
    from_bundles = read_bundles(tmp_path / "bundles", dataset)
    assert len(from_bundles) == len(dets)
    direct = coco_metrics(gt, dets).summary()
    assert coco_metrics(gt, from_bundles).summary() == pytest.approx(direct)

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    out = tmp_path / "m" / "metrics.json"
    args = parser.parse_args(["eval", "--data", str(shapes), "--predictions", str(tmp_path / "bundles"), "--out", str(out)])
    assert args.handler(args) == 0
    written = json.loads(out.read_text())
    assert written["mask"]["ap"] == pytest.approx(direct["mask_ap"])
    assert {c["name"] for c in written["mask"]["per_class"]} >= {"circle", "star"}
    assert (tmp_path / "m" / "metrics_pr.png").stat().st_size > 1000
