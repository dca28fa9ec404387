"""COCO box/mask AP (pycocotools COCOeval) plus precision, recall and F1 at IoU 0.5 and a score threshold."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskseg.training.datasets import InstanceDataset, open_dataset

if TYPE_CHECKING:
    from maskseg.engine.segmenter import Segmenter

# COCOeval scores at most 100 detections per image (its maxDets); so does `predict` by default.
COCO_MAX_DETECTIONS = 100
from maskseg.errors import MaskSegError


@dataclass
class ClassMetrics:
    """One class's AP and its precision/recall/F1 at IoU 0.5 and the score threshold."""

    name: str
    num_gt: int
    ap: float | None
    ap50: float | None
    precision: float
    recall: float
    f1: float


@dataclass
class TypeMetrics:
    """Everything measured for one IoU type ('bbox' or 'segm')."""

    ap: float
    ap50: float
    ap75: float
    precision: float
    recall: float
    f1: float
    true_positives: int
    false_positives: int
    false_negatives: int
    per_class: list[ClassMetrics] = field(default_factory=list)
    pr_recall: list[float] = field(default_factory=list)  # COCO's 101 recall points
    pr_precision: list[float] = field(default_factory=list)  # class-mean precision at IoU 0.5


@dataclass
class EvalResult:
    """Box and mask metrics of one evaluation run."""

    box: TypeMetrics
    mask: TypeMetrics
    score_threshold: float
    num_images: int
    num_detections: int

    def summary(self) -> dict[str, float]:
        """The flat figures a checkpoint stores and a status line shows."""
        return {
            "box_ap": self.box.ap,
            "box_ap50": self.box.ap50,
            "box_ap75": self.box.ap75,
            "mask_ap": self.mask.ap,
            "mask_ap50": self.mask.ap50,
            "mask_ap75": self.mask.ap75,
            "precision": self.mask.precision,
            "recall": self.mask.recall,
            "f1": self.mask.f1,
            "score_threshold": self.score_threshold,
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything, json-ready."""
        return asdict(self)


def _f1(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _mean_valid(values: np.ndarray) -> float | None:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


def _counts_at_threshold(cocoeval: COCOeval, score_threshold: float) -> dict[int, tuple[int, int, int]]:
    """Per category (tp, fp, num_gt) at IoU 0.5 from COCOeval's own greedy matches."""
    params = cocoeval.params
    num_images, num_areas = len(params.imgIds), len(params.areaRng)
    out: dict[int, tuple[int, int, int]] = {}
    for k, cat_id in enumerate(params.catIds):
        tp = fp = num_gt = 0
        for i in range(num_images):
            entry = cocoeval.evalImgs[k * num_areas * num_images + i]  # area range 0 = 'all'
            if entry is None:
                continue
            num_gt += int((np.asarray(entry["gtIgnore"]) == 0).sum())
            scores = np.asarray(entry["dtScores"])
            if scores.size == 0:
                continue
            matched = entry["dtMatches"][0] > 0
            ignored = entry["dtIgnore"][0].astype(bool)  # matched to a crowd region: neither TP nor FP
            kept = (scores >= score_threshold) & ~ignored
            tp += int((kept & matched).sum())
            fp += int((kept & ~matched).sum())
        out[cat_id] = (tp, fp, num_gt)
    return out


def _empty_type_metrics(gt: COCO, class_names: dict[int, str]) -> TypeMetrics:
    """No detections at all: COCOeval cannot load an empty result list, but the answer is known."""
    per_class = []
    total_gt = 0
    for cat_id, name in class_names.items():
        n = len([a for a in gt.loadAnns(gt.getAnnIds(catIds=[cat_id])) if not a.get("iscrowd", 0)])
        total_gt += n
        per_class.append(ClassMetrics(name, n, 0.0 if n else None, 0.0 if n else None, 0.0, 0.0, 0.0))
    recall_points = list(np.linspace(0, 1, 101))
    return TypeMetrics(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, total_gt, per_class, recall_points, [0.0] * 101)


def _run_cocoeval(gt: COCO, detections: list[dict], iou_type: str, score_threshold: float) -> TypeMetrics:
    class_names = {c["id"]: c["name"] for c in gt.loadCats(gt.getCatIds())}
    if not detections:
        return _empty_type_metrics(gt, class_names)
    dets = [dict(d) for d in detections]
    if iou_type == "segm":
        for d in dets:  # with a bbox present, COCO would take the box area as the mask's area
            d.pop("bbox", None)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets)
        cocoeval = COCOeval(gt, dt, iou_type)
        cocoeval.params.imgIds = sorted(gt.getImgIds())
        cocoeval.evaluate()
        cocoeval.accumulate()
        cocoeval.summarize()
    stats = cocoeval.stats
    precision = cocoeval.eval["precision"]  # [iou, recall, class, area, maxdets]
    counts = _counts_at_threshold(cocoeval, score_threshold)
    per_class = []
    for k, cat_id in enumerate(cocoeval.params.catIds):
        tp, fp, num_gt = counts[cat_id]
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / num_gt if num_gt else 0.0
        per_class.append(
            ClassMetrics(
                class_names[cat_id], num_gt, _mean_valid(precision[:, :, k, 0, -1]), _mean_valid(precision[0, :, k, 0, -1]), p, r, _f1(p, r)
            )
        )
    tp = sum(c[0] for c in counts.values())
    fp = sum(c[1] for c in counts.values())
    num_gt = sum(c[2] for c in counts.values())
    p_all = tp / (tp + fp) if tp + fp else 0.0
    r_all = tp / num_gt if num_gt else 0.0
    curve = precision[0, :, :, 0, -1]  # IoU 0.5, all areas, 100 detections
    curve_mean = [(_mean_valid(row) or 0.0) for row in curve]
    return TypeMetrics(
        ap=max(float(stats[0]), 0.0),
        ap50=max(float(stats[1]), 0.0),
        ap75=max(float(stats[2]), 0.0),
        precision=p_all,
        recall=r_all,
        f1=_f1(p_all, r_all),
        true_positives=tp,
        false_positives=fp,
        false_negatives=num_gt - tp,
        per_class=per_class,
        pr_recall=[float(x) for x in cocoeval.params.recThrs],
        pr_precision=curve_mean,
    )


def coco_metrics(ground_truth: dict[str, Any], detections: list[dict[str, Any]], score_threshold: float = 0.5) -> EvalResult:
    """Evaluate COCO-format detections (with `bbox`, `segmentation` RLE and `score`) against a COCO dict."""
    gt = COCO()
    gt.dataset = json.loads(json.dumps(ground_truth))  # COCOeval mutates what it is given
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    box = _run_cocoeval(gt, detections, "bbox", score_threshold)
    mask = _run_cocoeval(gt, detections, "segm", score_threshold)
    return EvalResult(box, mask, score_threshold, len(ground_truth["images"]), len(detections))


def label_mapping(model_class_names: list[str], dataset_class_names: list[str]) -> dict[int, int]:
    """Network label -> dataset label, by class name (a COCO model on a dataset with fewer classes)."""
    index = {name: i for i, name in enumerate(dataset_class_names)}
    return {k: index[name] for k, name in enumerate(model_class_names) if k > 0 and name in index}


def predict_dataset(
    segmenter: "Segmenter",
    dataset: InstanceDataset,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the Segmenter over every image, as `predict` does, down to COCO's floor and 100 objects;
    detections in COCO results format with dataset labels, from the bundle's own instances.json."""
    from maskseg.engine.export import coco_document
    from maskseg.engine.segmenter import SCORE_FLOOR

    mapping = label_mapping(segmenter.loaded.class_names, dataset.class_names)
    results: list[dict[str, Any]] = []
    for index in range(len(dataset)):
        prediction = segmenter.predict_one(
            dataset.load_image(index), score_threshold=SCORE_FLOOR, max_detections=COCO_MAX_DETECTIONS
        )
        for ann in coco_document(prediction)["annotations"]:
            if ann["category_id"] not in mapping:
                continue
            results.append(
                {
                    "image_id": dataset.records[index].image_id,
                    "category_id": mapping[ann["category_id"]],
                    "bbox": ann["bbox"],
                    "score": ann["score"],
                    "segmentation": ann["segmentation"],
                }
            )
        if progress:
            progress(index + 1, len(dataset))
    return results


def evaluate_network(
    network: torch.nn.Module,
    dataset: InstanceDataset,
    class_names: list[str],
    device: torch.device | str = "cpu",
    score_threshold: float = 0.5,
    progress: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """Score a network in memory (training's validation) through the same Segmenter `predict` runs."""
    from maskseg.engine.models import LoadedModel
    from maskseg.engine.segmenter import Segmenter

    was_training = network.training
    network.eval()
    loaded = LoadedModel(
        key="validation", title="model in training", architecture="", network=network,
        class_names=list(class_names), device=torch.device(device), source="memory",
    )
    try:
        detections = predict_dataset(Segmenter.from_loaded(loaded), dataset, progress=progress)
    finally:
        network.train(was_training)
    return coco_metrics(dataset.to_coco(), detections, score_threshold)


def read_bundles(bundle_dir: str | Path, dataset: InstanceDataset) -> list[dict[str, Any]]:
    """Detections from a folder of `maskseg predict` bundles (*/instances.json), matched by file name."""
    files = sorted(Path(bundle_dir).rglob("instances.json"))
    if not files:
        raise MaskSegError(f"No */instances.json prediction bundles under {bundle_dir}.")
    by_name = {r.file_name: r for r in dataset.records}
    label_of = {name: i for i, name in enumerate(dataset.class_names)}
    detections = []
    for path in files:
        data = json.loads(path.read_text())
        if not data.get("images"):
            continue
        record = by_name.get(Path(data["images"][0]["file_name"]).name)
        if record is None:
            continue  # a prediction for an image the dataset does not hold
        names = {c["id"]: c["name"] for c in data.get("categories", [])}
        for ann in data.get("annotations", []):
            label = label_of.get(names.get(ann["category_id"], ""))
            if label is None or label == 0:
                continue
            det = {k: ann[k] for k in ("bbox", "segmentation", "score") if k in ann}
            det.update(image_id=record.image_id, category_id=label)
            detections.append(det)
    return detections


def plot_pr_curves(result: EvalResult, path: str | Path) -> Path:
    """Precision-recall curves (IoU 0.5, class mean) for boxes and masks, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    for name, metrics in (("box", result.box), ("mask", result.mask)):
        ax.plot(metrics.pr_recall, metrics.pr_precision, label=f"{name} (AP50 {metrics.ap50:.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("Precision-recall at IoU 0.5")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(value: float | None) -> str:
    return "  -  " if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def format_report(result: EvalResult) -> str:
    """The human-readable summary and per-class table `maskseg eval` prints."""
    lines = [
        f"images {result.num_images}, detections {result.num_detections}, score threshold {result.score_threshold:g}",
        "        AP     AP50   AP75   P@.5   R@.5   F1@.5",
    ]
    for name, m in (("box ", result.box), ("mask", result.mask)):
        lines.append(f"{name}   {m.ap:.3f}  {m.ap50:.3f}  {m.ap75:.3f}  {m.precision:.3f}  {m.recall:.3f}  {m.f1:.3f}")
    lines.append("")
    lines.append(f"{'class':<20} {'GT':>5}  mask AP  AP50   P      R      F1")
    for c in result.mask.per_class:
        if c.num_gt == 0 and c.ap is None:
            continue
        lines.append(f"{c.name[:20]:<20} {c.num_gt:>5}  {_fmt(c.ap)}    {_fmt(c.ap50)}  {c.precision:.3f}  {c.recall:.3f}  {c.f1:.3f}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = open_dataset(args.data, args.format)
    if args.predictions:
        detections = read_bundles(args.predictions, dataset)
    else:
        if not args.checkpoint and not args.model:
            raise MaskSegError("Pass --checkpoint CKPT, --model NAME or --predictions DIR to evaluate.")
        from maskseg.engine.segmenter import Segmenter

        segmenter = Segmenter(
            model=args.model, checkpoint=args.checkpoint, device=args.device,
            backend=args.backend, precision=args.precision,
        )
        from tqdm import tqdm

        with tqdm(total=len(dataset), desc="eval", unit="img") as bar:
            detections = predict_dataset(segmenter, dataset, progress=lambda i, n: bar.update(1))
    result = coco_metrics(dataset.to_coco(), detections, args.threshold)
    print(format_report(result))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result.to_dict(), indent=1))
    plot = plot_pr_curves(result, args.plot or out.with_name(out.stem + "_pr.png"))
    print(f"wrote {out} and {plot}")
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register `maskseg eval`."""
    parser = subparsers.add_parser("eval", help="COCO AP, precision, recall and F1 of a model on a dataset")
    parser.add_argument("--data", required=True, help="dataset: COCO json/folder, panoptic json, YOLO-seg or mask folder")
    parser.add_argument("--format", default="auto", help="dataset format: auto, coco, panoptic, yolo, masks")
    parser.add_argument("--checkpoint", help="a checkpoint saved by `maskseg train`")
    parser.add_argument("--model", help="a zoo model name instead of a checkpoint (e.g. shapes-demo)")
    parser.add_argument("--predictions", help="a folder of `maskseg predict` bundles to score instead of running a model")
    parser.add_argument("--threshold", type=float, default=0.5, help="score threshold for precision/recall/F1 (default 0.5)")
    parser.add_argument("--out", default="metrics.json", help="where to write the metrics json (default metrics.json)")
    parser.add_argument("--plot", help="precision-recall PNG (default: next to --out)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")
    from maskseg.engine.backend import add_backend_arguments

    add_backend_arguments(parser)
    parser.set_defaults(handler=_run)
