"""Parity with torchvision: maskseg must give exactly the answer torchvision's own model gives.

The reference is the "standard forward": the same torchvision network (weights taken from maskseg's
torch model, deep-copied, so nothing maskseg does to its modules can leak in), in eval mode, called as
`net([tensor])` on `torch.from_numpy(rgb).permute(2, 0, 1).float() / 255`, masks pasted by
torchvision (`out["masks"][:, 0] > 0.5`). maskseg never reports COCO's 'N/A' ids, so the reference
drops them, and its detection cap is raised so that it cannot hide objects; maskseg at cap N is then
compared with the reference's first N objects.

One change to torchvision's defaults keeps 12-megapixel references within memory: the reference's
`score_thresh` is the test's threshold T instead of 0.05. That gives the same objects as running at
0.05 and keeping scores >= T: postprocess_detections drops low scores before its per-class NMS, and
NMS only ever suppresses a box by a higher-scoring one, so the boxes below T never change the rest.

Every model and backend is compared with the same reference; OpenVINO may swap the network's
submodules, so the reference never comes from an OpenVINO segmenter.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import REPO_ROOT, require_or_skip, write_random_zoo_weights

BACKENDS = ["torch", "openvino"]
PHOTO = REPO_ROOT / "assets" / "examples" / "street.jpg"
NOT_OBJECTS = ("N/A", "__background__")

BOX_TOL = 0.5  # pixels
SCORE_TOL = 1e-4
MIN_IOU = 0.999
AP_TOL = 0.003

# (threshold, cap) per case: random COCO weights score 0.3-0.8, so thresholds sit high enough to
# keep the reference's full-resolution masks in memory; each cap is below the number of real
# objects the reference finds there, so the cap binds (after the 'N/A' objects are dropped).
V1_1080 = (0.6, 10)
V1_12MP = (0.65, 8)
V2_1080 = (0.7, 20)
SHAPES = (0.05, 30)
CLI_CAP = 3


# ---------------------------------------------------------------------------------------------
# helpers


@dataclass
class Objects:
    """One image's detections, best first: labels, names, boxes (N×4, photo pixels), scores, masks."""

    labels: list[int]
    names: list[str]
    boxes: np.ndarray
    scores: np.ndarray
    masks: list[np.ndarray]  # H×W bool each

    def __len__(self) -> int:
        return len(self.labels)

    def first(self, n: int) -> "Objects":
        """The first n objects."""
        return Objects(self.labels[:n], self.names[:n], self.boxes[:n], self.scores[:n], self.masks[:n])

    def of_class(self, name: str) -> "Objects":
        """Only the objects of class `name`, in order."""
        keep = [i for i, n in enumerate(self.names) if n == name]
        return Objects(
            [self.labels[i] for i in keep], [self.names[i] for i in keep], self.boxes[keep],
            self.scores[keep], [self.masks[i] for i in keep],
        )


def make_segmenter(model: str, backend: str):
    """maskseg's Segmenter for `model` on the CPU with `backend`; fails in CI / skips locally when
    the backend cannot be had."""
    from maskseg import Segmenter

    try:
        segmenter = Segmenter(model=model, device="cpu", backend=backend)
    except TypeError:
        require_or_skip(backend == "torch", "Segmenter does not accept backend= yet")
        return Segmenter(model=model, device="cpu")
    running = getattr(segmenter.loaded, "backend", "torch")
    require_or_skip(running == backend, f"asked for the {backend} backend, got {running}: "
                    f"{getattr(segmenter.loaded, 'backend_note', '')}")
    return segmenter


def reference_network(model: str) -> torch.nn.Module:
    """A private deep copy of maskseg's torch network for `model`: pure torchvision, eval mode."""
    network = copy.deepcopy(make_segmenter(model, "torch").loaded.network).eval()
    assert type(network).__module__.startswith("torchvision."), type(network)
    return network


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """The standard input: 3×H×W float32 in 0..1."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255


def reference_objects(network, class_names: list[str], rgb: np.ndarray, score_thresh: float) -> Objects:
    """torchvision's standard forward on `rgb`: uncapped, 'N/A' objects dropped."""
    network.roi_heads.score_thresh = score_thresh
    network.roi_heads.detections_per_img = 1000
    with torch.inference_mode():
        out = network([to_tensor(rgb)])[0]
    names = [class_names[int(label)] for label in out["labels"]]
    assert len(names) < 1000, "the reference hit its own cap; raise the test's threshold"
    keep = [i for i, name in enumerate(names) if name not in NOT_OBJECTS]
    masks = out["masks"][keep, 0] > 0.5 if keep else torch.zeros((0, *rgb.shape[:2]), dtype=torch.bool)
    return Objects(
        [int(out["labels"][i]) for i in keep], [names[i] for i in keep],
        out["boxes"][keep].numpy().reshape(-1, 4), out["scores"][keep].numpy(), list(masks.numpy()),
    )


def maskseg_objects(prediction) -> Objects:
    """A maskseg Prediction's objects, masks from `prediction.mask`."""
    instances = prediction.instances
    return Objects(
        [int(i.category_id) for i in instances], [i.class_name for i in instances],
        np.array([i.box for i in instances], dtype=np.float64).reshape(-1, 4),
        np.array([i.score for i in instances], dtype=np.float64),
        [prediction.mask(i) for i in instances],
    )


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def compare(ours: Objects, ref: Objects, masks: bool = True) -> tuple[list[str], dict]:
    """What differs between two object lists (count, order/labels, boxes, scores, masks) and the
    measured differences over the common prefix."""
    problems = []
    if len(ours) != len(ref):
        problems.append(f"count: maskseg {len(ours)}, reference {len(ref)}")
    n = min(len(ours), len(ref))
    box_diff = np.abs(ours.boxes[:n] - ref.boxes[:n]).max(axis=1) if n else np.zeros(0)
    score_diff = np.abs(ours.scores[:n] - ref.scores[:n]) if n else np.zeros(0)
    ious = [mask_iou(ours.masks[i], ref.masks[i]) for i in range(n)] if masks else []
    for i in range(n):
        where = f"object {i}"
        if ours.labels[i] != ref.labels[i]:
            problems.append(f"{where} label: maskseg {ours.names[i]} ({ours.labels[i]}), "
                            f"reference {ref.names[i]} ({ref.labels[i]})")
        if box_diff[i] > BOX_TOL:
            problems.append(f"{where} box: maskseg {np.round(ours.boxes[i], 2).tolist()}, "
                            f"reference {np.round(ref.boxes[i], 2).tolist()}")
        if score_diff[i] > SCORE_TOL:
            problems.append(f"{where} score: maskseg {ours.scores[i]:.6f}, reference {ref.scores[i]:.6f}")
        if masks and ious[i] < MIN_IOU:
            problems.append(f"{where} mask IoU {ious[i]:.5f}")
    stats = {
        "count": (len(ours), len(ref)),
        "max_box_diff": float(box_diff.max()) if n else 0.0,
        "max_score_diff": float(score_diff.max()) if n else 0.0,
        "min_mask_iou": float(min(ious)) if ious else 1.0,
    }
    return problems, stats


def assert_same_objects(ours: Objects, ref: Objects, what: str, masks: bool = True) -> None:
    """Fail, saying what differs and by how much, unless the two object lists agree."""
    problems, stats = compare(ours, ref, masks=masks)
    shown = "\n  ".join(problems[:12]) + (f"\n  ... {len(problems) - 12} more" if len(problems) > 12 else "")
    assert not problems, f"{what}: differs {stats}:\n  {shown}"


def assert_identical(a: Objects, b: Objects, what: str) -> None:
    """Fail unless labels, boxes and scores are bit-for-bit the same."""
    assert a.names == b.names, f"{what}: classes differ: {a.names} vs {b.names}"
    box_diff = float(np.abs(a.boxes - b.boxes).max()) if len(a) else 0.0
    score_diff = float(np.abs(a.scores - b.scores).max()) if len(a) else 0.0
    assert box_diff == 0 and score_diff == 0, f"{what}: max box diff {box_diff:.3g} px, max score diff {score_diff:.3g}"


def read_rgb(path: Path) -> np.ndarray:
    """An image file as H×W×3 uint8 RGB."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).copy()


def resized_photo(size: tuple[int, int]) -> np.ndarray:
    """The street photo resized (Pillow bilinear) to width×height `size`."""
    with Image.open(PHOTO) as image:
        return np.asarray(image.convert("RGB").resize(size, Image.BILINEAR)).copy()


def run_synth(out: Path, num: int, size: int) -> Path:
    """`python -m maskseg synth` into `out`; returns the folder."""
    command = [sys.executable, "-m", "maskseg", "synth", "--out", str(out), "--num", str(num),
               "--size", str(size), "--seed", "0"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


@contextlib.contextmanager
def recording_network_input(network: torch.nn.Module):
    """Record the batch tensor and image sizes the network's RPN is given during the block."""
    seen: list[tuple[torch.Tensor, list[tuple[int, int]]]] = []
    rpn = network.rpn
    original = rpn.forward

    def spy(images, features, *args, **kwargs):
        seen.append((images.tensors.detach().clone(), [tuple(s) for s in images.image_sizes]))
        return original(images, features, *args, **kwargs)

    rpn.forward = spy
    try:
        yield seen
    finally:
        del rpn.forward


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def zoo_home(random_weights_home, tmp_path_factory):
    """Random v1 and v2 COCO weights in TORCH_HOME, and a private OpenVINO cache."""
    write_random_zoo_weights(random_weights_home, "maskrcnn_resnet50_fpn_v2", seed=0)
    with pytest.MonkeyPatch.context() as patch:  # restored after the module, whatever happens
        patch.setenv("MASKSEG_CACHE_DIR", str(tmp_path_factory.mktemp("openvino_cache")))
        yield random_weights_home


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict:
    """The street photo at 1920×1080 (also as a PNG for the CLI), 4000×3000, and a wide 2400×900."""
    folder = tmp_path_factory.mktemp("parity_photos")
    path = folder / "street_1080.png"
    Image.fromarray(resized_photo((1920, 1080))).save(path)
    return {
        "1080p_path": path,
        "1080p": read_rgb(path),
        "12mp": resized_photo((4000, 3000)),
        "wide": resized_photo((2400, 900)),
    }


@pytest.fixture(scope="module")
def references(zoo_home) -> dict:
    """Reference networks, one per model, copied from maskseg's torch models."""
    return {}


def get_reference(references: dict, model: str, key: str, rgb: np.ndarray, score_thresh: float) -> Objects:
    """The standard forward of `model` on image `key`, computed once per module."""
    if model not in references:
        references[model] = reference_network(model)
    memo_key = (model, key, score_thresh)
    if memo_key not in references:
        network = references[model]
        class_names = make_segmenter(model, "torch").loaded.class_names
        references[memo_key] = reference_objects(network, class_names, rgb, score_thresh)
    return references[memo_key]


@pytest.fixture(scope="module")
def runs(zoo_home) -> dict:
    """maskseg's predictions, computed once per module: (model, backend, image key) -> (Prediction, inputs seen)."""
    return {}


def get_run(runs: dict, model: str, backend: str, key: str, image, threshold: float, cap: int):
    """maskseg's predict_one on image `key` (and what its RPN was given), computed once per module."""
    memo_key = (model, backend, key, threshold, cap)
    if memo_key not in runs:
        segmenter = make_segmenter(model, backend)
        with recording_network_input(segmenter.loaded.network) as seen:
            prediction = segmenter.predict_one(image, score_threshold=threshold, max_detections=cap)
        runs[memo_key] = (prediction, seen)
    return runs[memo_key]


@pytest.fixture(scope="module")
def synth_1024(tmp_path_factory) -> Path:
    return run_synth(tmp_path_factory.mktemp("synth_1024"), 3, 1024)


@pytest.fixture(scope="module")
def synth_2048(tmp_path_factory) -> Path:
    return run_synth(tmp_path_factory.mktemp("synth_2048"), 6, 2048)


# ---------------------------------------------------------------------------------------------
# 1. COCO models on a real photo


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "model, key, case",
    [("v1", "1080p", V1_1080), ("v1", "12mp", V1_12MP), ("v2", "1080p", V2_1080)],
    ids=["v1-1920x1080", "v1-4000x3000", "v2-1920x1080"],
)
def test_coco_model_on_a_photo_matches_torchvision(photos, references, runs, model, key, case, backend) -> None:
    threshold, cap = case
    image = photos["1080p_path"] if key == "1080p" else photos[key]
    rgb = photos[key]
    ref = get_reference(references, model, key, rgb, threshold)
    assert len(ref) > cap, f"precondition: the reference finds {len(ref)} real objects, want more than the cap {cap}"
    prediction, _ = get_run(runs, model, backend, key, image, threshold, cap)
    assert (prediction.height, prediction.width) == rgb.shape[:2]
    assert_same_objects(maskseg_objects(prediction), ref.first(cap), f"{model} {key} {backend} T={threshold} cap={cap}")


# ---------------------------------------------------------------------------------------------
# 2. the Shapes demo on synthetic images


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", [1024, 2048])
def test_shapes_demo_matches_torchvision(synth_1024, synth_2048, references, zoo_home, size, backend) -> None:
    folder = synth_1024 if size == 1024 else synth_2048
    paths = sorted((folder / "images").glob("*.png"))[:3]
    threshold, cap = SHAPES
    segmenter = make_segmenter("shapes-demo", backend)
    predictions = segmenter.predict([str(p) for p in paths], score_threshold=threshold, max_detections=cap, batch_size=2)
    for path, prediction in zip(paths, predictions):
        ref = get_reference(references, "shapes-demo", f"synth{size}/{path.name}", read_rgb(path), threshold)
        assert len(ref) > 0, f"precondition: the demo finds nothing in {path.name}"
        assert_same_objects(maskseg_objects(prediction), ref.first(cap), f"shapes-demo {backend} {size}px {path.name}")


# ---------------------------------------------------------------------------------------------
# 3. AP parity


def coco_results(image_id: int, objects: Objects, category_ids: dict[str, int]) -> list[dict]:
    """COCO result records (bbox xywh, RLE segmentation) for one image's objects."""
    records = []
    for name, box, score, mask in zip(objects.names, objects.boxes, objects.scores, objects.masks):
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        x1, y1, x2, y2 = (float(v) for v in box)
        records.append({
            "image_id": image_id, "category_id": category_ids[name], "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(score), "segmentation": rle,
        })
    return records


def coco_ap(ground_truth: COCO, results: list[dict], kind: str) -> float:
    """COCOeval's AP@[.5:.95] of `results` against `ground_truth` ('bbox' or 'segm')."""
    with contextlib.redirect_stdout(io.StringIO()):
        detections = ground_truth.loadRes(results)
        evaluator = COCOeval(ground_truth, detections, kind)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_shapes_demo_ap_equals_the_standard_forwards(synth_2048, references, zoo_home, backend) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(synth_2048 / "annotations.json"))
    category_ids = {c["name"]: c["id"] for c in ground_truth.loadCats(ground_truth.getCatIds())}
    images = ground_truth.loadImgs(sorted(ground_truth.getImgIds()))
    paths = [synth_2048 / "images" / image["file_name"] for image in images]
    threshold, cap = 0.05, 100  # torchvision's score floor, COCO's maxDets
    segmenter = make_segmenter("shapes-demo", backend)
    predictions = segmenter.predict([str(p) for p in paths], score_threshold=threshold, max_detections=cap, batch_size=2)
    ours, theirs = [], []
    for image, path, prediction in zip(images, paths, predictions):
        ref = get_reference(references, "shapes-demo", f"synth2048/{path.name}", read_rgb(path), threshold)
        ours += coco_results(image["id"], maskseg_objects(prediction), category_ids)
        theirs += coco_results(image["id"], ref.first(cap), category_ids)
    assert theirs, "precondition: the standard forward found nothing"
    for kind in ("bbox", "segm"):
        reference_ap, maskseg_ap = coco_ap(ground_truth, theirs, kind), coco_ap(ground_truth, ours, kind)
        assert reference_ap > 0.1, f"precondition: the demo's {kind} AP is only {reference_ap:.3f}"
        assert abs(maskseg_ap - reference_ap) <= AP_TOL, (
            f"{kind} AP: maskseg {maskseg_ap:.4f}, standard forward {reference_ap:.4f} "
            f"(diff {maskseg_ap - reference_ap:+.4f}; {len(ours)} vs {len(theirs)} detections)"
        )


# ---------------------------------------------------------------------------------------------
# 4. batch independence


@pytest.mark.parametrize("backend", BACKENDS)
def test_v1_photos_alone_equal_the_photos_in_a_mixed_size_batch(photos, runs, backend) -> None:
    """Both photos: the 1920×1080 one fixes the padded size, so only the wide one shows padding."""
    threshold, cap = V1_1080
    alone = [
        get_run(runs, "v1", backend, "1080p", photos["1080p_path"], threshold, cap)[0],
        get_run(runs, "v1", backend, "wide", photos["wide"], threshold, cap)[0],
    ]
    segmenter = make_segmenter("v1", backend)
    together = segmenter.predict([photos["1080p_path"], photos["wide"]], score_threshold=threshold,
                                 max_detections=cap, batch_size=2)
    assert alone[0].instances and alone[1].instances, "precondition: objects found in both photos"
    for name, one, other in zip(("1920×1080", "2400×900"), alone, together):
        assert_identical(maskseg_objects(other), maskseg_objects(one), f"v1 {backend} {name} in a mixed-size batch")


@pytest.mark.parametrize("backend", BACKENDS)
def test_shapes_demo_alone_equals_in_a_mixed_size_batch(synth_1024, zoo_home, backend) -> None:
    paths = sorted((synth_1024 / "images").glob("*.png"))
    square = read_rgb(paths[0])
    with Image.open(paths[1]) as image:
        wide = np.asarray(image.convert("RGB").resize((1536, 640), Image.BILINEAR)).copy()
    threshold, cap = SHAPES
    segmenter = make_segmenter("shapes-demo", backend)
    alone = [segmenter.predict_one(image, score_threshold=threshold, max_detections=cap) for image in (square, wide)]
    together = segmenter.predict([square, wide], score_threshold=threshold, max_detections=cap, batch_size=2)
    assert alone[0].instances and alone[1].instances, "precondition: the demo finds shapes in both images"
    for name, one, other in zip(("1024×1024", "1536×640"), alone, together):
        assert_identical(maskseg_objects(other), maskseg_objects(one), f"shapes-demo {backend} {name} in a mixed batch")


# ---------------------------------------------------------------------------------------------
# 5. what the network is given


@pytest.mark.parametrize("backend", BACKENDS)
def test_network_input_is_torchvisions_for_a_1080p_photo(photos, references, runs, backend) -> None:
    threshold, cap = V1_1080
    if "v1" not in references:
        references["v1"] = reference_network("v1")
    with torch.inference_mode():
        expected = references["v1"].transform([to_tensor(photos["1080p"])])[0]
    assert [tuple(s) for s in expected.image_sizes] == [(749, 1333)], expected.image_sizes  # torchvision floors
    _, seen = get_run(runs, "v1", backend, "1080p", photos["1080p_path"], threshold, cap)
    assert len(seen) == 1, f"the RPN ran {len(seen)} times for one photo"
    tensors, sizes = seen[0]
    assert sizes == [(749, 1333)], f"maskseg's network sees {sizes}, torchvision's sees [(749, 1333)]"
    assert tuple(tensors.shape) == tuple(expected.tensors.shape), (
        f"padded batch: maskseg {tuple(tensors.shape)}, torchvision {tuple(expected.tensors.shape)}"
    )
    pixel_diff = float((tensors.float() - expected.tensors).abs().max())
    assert pixel_diff <= 1e-4, f"normalised input differs from torchvision's transform by up to {pixel_diff:.3g}"


# ---------------------------------------------------------------------------------------------
# 6. the CLI


def cli_objects(bundle: Path) -> Objects:
    """The objects in a bundle's instances.json (no masks): category ids, names, xyxy boxes, scores."""
    document = json.loads((bundle / "instances.json").read_text())
    names = {c["id"]: c["name"] for c in document["categories"]}
    rows = document["annotations"]
    boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in rows])
    return Objects([a["category_id"] for a in rows], [names[a["category_id"]] for a in rows],
                   boxes.reshape(-1, 4), np.array([a["score"] for a in rows]), [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_cli_class_filter_and_cap_agree_with_the_api_and_torchvision(photos, references, tmp_path, backend) -> None:
    threshold, _ = V1_1080
    ref = get_reference(references, "v1", "1080p", photos["1080p"], threshold)
    counts = {name: ref.names.count(name) for name in set(ref.names)}
    wanted = max(sorted(counts), key=counts.get)
    assert counts[wanted] > CLI_CAP, f"precondition: want a class with more than {CLI_CAP} objects, got {counts}"
    expected = ref.of_class(wanted).first(CLI_CAP)

    api = make_segmenter("v1", backend).predict_one(
        photos["1080p_path"], score_threshold=threshold, classes=[wanted], max_detections=CLI_CAP)
    assert_same_objects(maskseg_objects(api), expected, f"API v1 {backend} classes=[{wanted}] cap={CLI_CAP}")

    out = tmp_path / "bundles"
    command = [sys.executable, "-m", "maskseg", "predict", str(photos["1080p_path"]), "--out", str(out),
               "--model", "v1", "--device", "cpu", "--backend", backend, "--threshold", str(threshold),
               "--max-detections", str(CLI_CAP), "--classes", wanted]
    done = subprocess.run(command, cwd=REPO_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"CLI failed ({done.returncode}):\n{done.stderr[-3000:]}"
    cli = cli_objects(out / photos["1080p_path"].stem)
    assert_same_objects(cli, expected, f"CLI v1 {backend} --classes {wanted} --max-detections {CLI_CAP} vs reference", masks=False)
    assert_same_objects(cli, maskseg_objects(api), f"CLI v1 {backend} vs the API", masks=False)
