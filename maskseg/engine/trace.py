"""One traced run of Mask R-CNN for the stage explorer: the Segmenter's own run with hooks on the
network's modules, condensed into what each stage shows (pictures at level size, counts, shapes,
times) and small enough to keep per session. The objects are exactly the Segmenter's."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from maskseg.engine.models import count_stage_parameters
from maskseg.engine.prediction import Prediction
from maskseg.engine.segmenter import NOT_CLASSES, SCORE_FLOOR, Segmenter, autocast_for
from maskseg.engine.trace_hooks import Recording, record
from maskseg.engine.trace_steps import BoxFunnel, RpnFunnel, box_funnel, rpn_funnel

DRAWN_PROPOSALS = 300  # proposals kept for drawing, best first, before and after NMS


@dataclass
class LevelTrace:
    """One FPN level: its name, stride, feature shape, and two pictures of it at its own size."""

    name: str
    stride: tuple[int, int]  # (down, across) in network pixels, as torchvision's anchor generator computes it
    shape: tuple[int, int, int]  # C, H, W (padded batch)
    valid: tuple[int, int]  # rows, columns that cover the photo (the rest is padding)
    pca: np.ndarray  # valid H×W×3 uint8: first three principal components as RGB
    energy: np.ndarray  # valid H×W float32 in 0..1: root-mean-square over channels
    objectness: np.ndarray  # valid H×W float32: best anchor's objectness probability per cell
    anchors: np.ndarray  # A×4, this level's anchors around a cell centred at (0, 0), network pixels


@dataclass
class ObjectTrace:
    """One shown object's path through the heads."""

    instance_id: int
    proposal_box: tuple[float, float, float, float]  # photo pixels
    refined_box: tuple[float, float, float, float]  # photo pixels
    top_classes: dict[str, float]  # five most likely classes (background included), probability
    box_crop: np.ndarray  # 7×7 float32 energy of the RoIAlign features the box head saw
    mask_crop: np.ndarray  # 14×14 float32 energy of the RoIAlign features the mask head saw
    mask_probabilities: np.ndarray  # M×M float32, the mask head's output for the object's class


@dataclass
class Trace:
    """What the explorer shows for one photo, model and threshold."""

    view: Prediction  # the objects the Segment tab shows at these settings
    model_title: str
    runtime: str
    photo_size: tuple[int, int]  # H, W
    network_size: tuple[int, int]  # H, W after torchvision's resize
    padded_shape: tuple[int, ...]  # N, C, H, W of the batch the backbone saw
    min_size: int
    max_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    levels: list[LevelTrace]
    rpn: RpnFunnel
    boxes: BoxFunnel
    proposals_before_nms: np.ndarray  # K×4 photo pixels, best first
    proposals_after_nms: np.ndarray  # K×4 photo pixels, best first
    objects: dict[int, ObjectTrace]
    seconds: dict[str, float]
    parameters: dict[str, int]
    macs: dict[str, int] | None  # counted on torch; estimated per pixel / RoI where OpenVINO ran the layers
    score_threshold: float
    runtime_is_compiled: bool = False  # OpenVINO ran the layers: multiply-adds are estimates
    notes: list[str] = field(default_factory=list)

    def nbytes(self) -> int:
        """Bytes this trace holds (photo, mask crops, pictures), for its stated memory bound."""
        arrays = [self.view.image, self.proposals_before_nms, self.proposals_after_nms]
        for level in self.levels:
            arrays += [level.pca, level.energy, level.objectness, level.anchors]
        for obj in self.objects.values():
            arrays += [obj.box_crop, obj.mask_crop, obj.mask_probabilities]
        arrays += [a for a in (getattr(self, "_display_photo", None), getattr(self, "_result", None)) if a is not None]
        masks = sum(crop.pixels.nbytes for crop in self.view._store._crops.values())
        return sum(a.nbytes for a in arrays) + masks


def trace_photo(
    segmenter: Segmenter, image, score_threshold: float = 0.5, mask_threshold: float = 0.5,
    max_detections: int = 100,
) -> Trace:
    """Run the Segmenter once with the network's modules watched; the trace of that run.

    The run is the Segment tab's own (`app.session.run_network`): every candidate down to the
    floor with masks for up to 100 of them in one batch, then the view at `score_threshold`, so the
    objects and their mask pixels are the Segment tab's.
    """
    loaded = segmenter.loaded
    with loaded.lock:  # hooks sit on the shared network: no other request may run meanwhile
        started = time.perf_counter()
        with record(loaded.network, loaded.device) as rec:
            base = segmenter.predict_one(
                image, score_threshold=min(score_threshold, SCORE_FLOOR), mask_threshold=mask_threshold,
                max_detections=100, keep_features=True,
            )
        network_done = time.perf_counter()
        view = base.filter(score_threshold=score_threshold, max_detections=max_detections)
        for inst in view.instances:
            view.mask_crop(inst)  # post-processing's last step: each 28×28 pasted into its box and cut
        pasted = time.perf_counter()
        with torch.inference_mode(), autocast_for(loaded):  # the replays must round as the run did
            trace = _condense(segmenter, view, rec, score_threshold)
        base.mask_head.release()  # every shown object's mask is computed; the features can go
    trace.seconds["input"] = rec.started["backbone"] - started  # read, resize, normalise, pad
    trace.seconds["result"] = pasted - network_done
    return trace


def _condense(segmenter: Segmenter, view: Prediction, rec: Recording, threshold: float) -> Trace:
    """The recording turned into pictures, counts and per-object crops; big tensors are dropped."""
    loaded = segmenter.loaded
    network = loaded.network
    transform = network.transform
    sizes = rec.filter_inputs[2]
    network_size = tuple(int(v) for v in sizes[0])
    rpn = rpn_funnel(network.rpn, rec)
    boxes = box_funnel(network.roi_heads, rec, _real_labels(loaded.class_names))
    scale = torch.tensor([view.width / network_size[1], view.height / network_size[0]] * 2)
    trace = Trace(
        view=view, model_title=loaded.title, runtime=loaded.device_name, photo_size=(view.height, view.width),
        network_size=network_size, padded_shape=rec.input_shape, min_size=int(transform.min_size[-1]),
        max_size=int(transform.max_size), mean=tuple(transform.image_mean), std=tuple(transform.image_std),
        levels=_levels(network, rec, network_size),
        rpn=rpn, boxes=boxes,
        proposals_before_nms=(rpn.before_nms[:DRAWN_PROPOSALS] * scale).numpy(),
        proposals_after_nms=(rec.proposals[:DRAWN_PROPOSALS].float().cpu() * scale).numpy(),
        objects=_objects(network, view, rec, boxes, network_size, loaded.class_names),
        seconds={stage: rec.seconds(stage) for stage in ("backbone", "rpn", "box_head", "mask_head")},
        parameters=loaded.stage_parameters or count_stage_parameters(network),
        macs=_macs(loaded, rec, view, boxes),
        score_threshold=threshold, runtime_is_compiled=loaded.backend != "torch",
    )
    if threshold < SCORE_FLOOR:
        trace.notes.append(f"Below the usual {SCORE_FLOOR} floor the network was run at this threshold itself; the view "
                           f"shows every candidate down to {threshold:.2f}.")
    rec.features = rec.box_pooled = None
    boxes.class_probabilities = boxes.candidate_boxes = None  # per-object results are taken; the rest is large
    return trace


def _macs(loaded, rec: Recording, view: Prediction, boxes: BoxFunnel) -> dict[str, int] | None:
    """Multiply-adds per stage: counted by the hooks on torch layers; where OpenVINO ran them,
    estimated from the torch layers' cost per pixel and per RoI (measured when the model loaded)."""
    if loaded.backend == "torch" and rec.counted_macs:
        return dict(rec.macs)
    rates = loaded.info.get("mac_rates")
    if not rates:
        return None
    pixels = rec.input_shape[-2] * rec.input_shape[-1]
    work = {"backbone": pixels, "rpn": pixels, "box_head": boxes.proposals.shape[0], "mask_head": rec.mask_rois}
    return {stage: int(rates[stage] * amount) for stage, amount in work.items()}


def _real_labels(class_names: list[str]) -> torch.Tensor:
    return torch.tensor([name not in NOT_CLASSES for name in class_names], dtype=torch.bool)


def _levels(network, rec: Recording, network_size: tuple[int, int]) -> list[LevelTrace]:
    """Each FPN level's shape, stride and pictures, cut to the part that covers the photo."""
    generator = network.rpn.anchor_generator
    cell_anchors = [a.float().cpu().numpy() for a in generator.cell_anchors]
    levels = []
    padded_h, padded_w = rec.input_shape[-2:]
    for index, (name, features) in enumerate(rec.features.items()):
        c, h, w = features.shape[1:]
        stride = (max(padded_h // h, 1), max(padded_w // w, 1))  # torchvision's rule, one per axis
        rows, cols = min(math.ceil(network_size[0] / stride[0]), h), min(math.ceil(network_size[1] / stride[1]), w)
        level = features[0, :, :rows, :cols].float()
        objectness = torch.sigmoid(rec.objectness[index][0].float().amax(dim=0))[:rows, :cols]
        levels.append(LevelTrace(
            name=_level_label(name, index), stride=stride, shape=(c, h, w), valid=(rows, cols),
            pca=_pca_rgb(level), energy=_energy(level), objectness=objectness.cpu().numpy(),
            anchors=cell_anchors[index] if index < len(cell_anchors) else np.zeros((0, 4), np.float32),
        ))
    return levels


def _level_label(name: str, index: int) -> str:
    """torchvision names levels '0'..'3' and 'pool'; the paper calls them P2..P5 and P6."""
    return f"P{index + 2}" + (" (pool)" if name == "pool" else "")


def _pca_rgb(level: torch.Tensor) -> np.ndarray:
    """The first three principal components of C×H×W features as an H×W×3 picture."""
    c, h, w = level.shape
    flat = level.reshape(c, -1)
    centred = flat - flat.mean(dim=1, keepdim=True)
    # The directions come from at most 16k cells (a picture needs no more), the projection uses them all.
    sample = centred[:, :: max(centred.shape[1] // 16384, 1)]
    covariance = sample @ sample.T / max(sample.shape[1], 1)
    _values, vectors = torch.linalg.eigh(covariance.float().cpu())  # float32 is plenty for a picture
    components = vectors[:, -3:].flip(1).T.to(centred.device) @ centred  # 3×HW, strongest first
    return _to_uint8(components).reshape(3, h, w).permute(1, 2, 0).contiguous().cpu().numpy()


def _to_uint8(values: torch.Tensor) -> torch.Tensor:
    """Each row stretched between its 1st and 99th percentile to 0..255."""
    sample = values[:, :: max(values.shape[1] // 65536, 1)]
    low = torch.quantile(sample, 0.01, dim=1, keepdim=True)
    high = torch.quantile(sample, 0.99, dim=1, keepdim=True)
    scaled = (values - low) / (high - low).clamp_min(1e-6)
    return (scaled.clamp(0, 1) * 255).round().to(torch.uint8)


def _energy(features: torch.Tensor) -> np.ndarray:
    """Root-mean-square over channels, scaled to 0..1."""
    energy = features.float().pow(2).mean(dim=0).sqrt()
    return (energy / energy.max().clamp_min(1e-6)).cpu().numpy()


def _objects(network, view: Prediction, rec: Recording, boxes: BoxFunnel, network_size, class_names) -> dict[int, ObjectTrace]:
    """Each shown object's proposal, refined box, top classes, pooled crops and mask probabilities."""
    if not view.instances:
        return {}
    heads = network.roi_heads
    scale = torch.tensor([view.width / network_size[1], view.height / network_size[0]] * 2)
    rows = [boxes.proposal_of[inst.id - 1] for inst in view.instances]
    mask_energy = None
    if getattr(heads, "mask_roi_pool", None) is not None:
        level = next(iter(rec.features.values()))
        network_boxes = torch.stack([boxes.candidate_boxes[inst.id - 1] for inst in view.instances])
        # The mask head's own RoIAlign on the same boxes and features (same device and dtype as the run).
        pooled = heads.mask_roi_pool(rec.features, [network_boxes.to(level.device, level.dtype)], [network_size])
        mask_energy = pooled.float().pow(2).mean(dim=1).sqrt().cpu()
    box_energy = rec.box_pooled[rows].float().pow(2).mean(dim=1).sqrt().cpu()
    # Top classes among background and the real ones (COCO's 'N/A' gaps are never shown).
    real = _real_labels(class_names)
    real[0] = True
    objects = {}
    for k, (inst, row) in enumerate(zip(view.instances, rows)):
        probs = torch.where(real, boxes.class_probabilities[row], torch.tensor(-1.0))
        top = torch.topk(probs, min(5, int(real.sum())))
        objects[inst.id] = ObjectTrace(
            instance_id=inst.id,
            proposal_box=tuple((boxes.proposals[row].float() * scale).tolist()),
            refined_box=inst.box,
            top_classes={_class_label(class_names, int(i)): float(p) for p, i in zip(top.values, top.indices)},
            box_crop=_normalised(box_energy[k]),
            mask_crop=_normalised(mask_energy[k]) if mask_energy is not None else np.zeros((0, 0), np.float32),
            mask_probabilities=_mask_probabilities(view, inst, heads),
        )
    return objects


def _class_label(class_names: list[str], index: int) -> str:
    return "background" if index == 0 else class_names[index]


def _normalised(values: torch.Tensor) -> np.ndarray:
    return (values / values.max().clamp_min(1e-6)).cpu().numpy().astype(np.float32)


def _mask_probabilities(view: Prediction, inst, heads) -> np.ndarray:
    if inst.mask_probabilities is not None:
        return inst.mask_probabilities.float().numpy()
    if view.mask_head is None or getattr(heads, "mask_roi_pool", None) is None:
        return np.zeros((0, 0), np.float32)
    return view.mask_head.probabilities(inst.id - 1).float().numpy()
