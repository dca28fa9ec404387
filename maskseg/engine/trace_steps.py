"""The counts between the RPN's and the box head's filtering steps, for the explorer's funnels.

torchvision's `filter_proposals` and `postprocess_detections` return only their final boxes. These
replays walk the same steps with the modules' own methods and settings on the inputs the hooks
recorded, count what survives each step, and check that they end with exactly the boxes the real
call returned (a mismatch is reported, never papered over).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import boxes as box_ops

from maskseg.engine.trace_hooks import Recording

DRAWN = 300  # boxes entering NMS kept for drawing, best first


@dataclass
class RpnFunnel:
    """Anchors → top-k per level → inside and large enough → above the RPN's floor → NMS → kept."""

    anchors: int
    top_k: int
    not_small: int
    above_floor: int
    after_nms: int
    kept: int
    pre_nms_top_n: int
    post_nms_top_n: int
    nms_threshold: float
    before_nms: torch.Tensor  # the best DRAWN boxes entering NMS, network frame (CPU float)
    matches_module: bool  # the replay ended with the module's own proposals


@dataclass
class BoxFunnel:
    """Proposals × classes → above the score floor → non-empty → per-class NMS → candidate cap."""

    proposals: torch.Tensor  # P×4 network frame, the box head's input
    class_probabilities: torch.Tensor  # P×C softmax of the box head's logits
    pairs: int
    above_floor: int
    not_empty: int
    after_nms: int
    candidates: int  # after the candidate cap, before COCO's 'N/A' classes are dropped
    real: int  # candidates of real classes: what the Prediction holds
    nms_threshold: float
    score_floor: float
    candidate_boxes: torch.Tensor  # real candidates' boxes, network frame, in Prediction order
    proposal_of: list[int]  # real candidate k came from proposal proposal_of[k]
    matches_module: bool


def rpn_funnel(rpn, rec: Recording) -> RpnFunnel:
    """Replay RegionProposalNetwork.filter_proposals for image 0 and count each step."""
    proposals, objectness, image_shapes, per_level = rec.filter_inputs
    objectness = objectness.detach().reshape(proposals.shape[0], -1)[:1]
    device = objectness.device
    levels = torch.cat([torch.full((n,), i, dtype=torch.int64, device=device) for i, n in enumerate(per_level)])[None]
    top = rpn._get_top_n_idx(objectness, per_level)
    scores = torch.sigmoid(objectness[0, top[0]])
    boxes = box_ops.clip_boxes_to_image(proposals[0, top[0]], image_shapes[0])
    lvl = levels[0, top[0]]
    keep = box_ops.remove_small_boxes(boxes, rpn.min_size)
    boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
    not_small = int(boxes.shape[0])
    keep = torch.where(scores >= rpn.score_thresh)[0]
    boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
    above = int(boxes.shape[0])
    kept = box_ops.batched_nms(boxes, scores, lvl, rpn.nms_thresh)
    final = kept[: rpn.post_nms_top_n()]
    order = torch.argsort(scores, descending=True, stable=True)
    return RpnFunnel(
        anchors=int(sum(per_level)), top_k=int(top.shape[1]), not_small=not_small, above_floor=above,
        after_nms=int(kept.numel()), kept=int(final.numel()), pre_nms_top_n=int(rpn.pre_nms_top_n()),
        post_nms_top_n=int(rpn.post_nms_top_n()), nms_threshold=float(rpn.nms_thresh),
        before_nms=boxes[order[:DRAWN]].float().cpu(),
        matches_module=bool(torch.equal(boxes[final], rec.proposals)),
    )


def box_funnel(heads, rec: Recording, real_labels: torch.Tensor) -> BoxFunnel:
    """Replay RoIHeads.postprocess_detections for image 0, count each step, and find which proposal
    each candidate came from."""
    class_logits, box_regression, proposals, image_shapes = rec.postprocess_inputs
    out_boxes, out_scores, out_labels = (o[0] for o in rec.postprocess_outputs)
    count = proposals[0].shape[0]
    class_logits, box_regression = class_logits[:count], box_regression[:count]
    num_classes = class_logits.shape[-1]
    boxes = box_ops.clip_boxes_to_image(heads.box_coder.decode(box_regression, [proposals[0]]), image_shapes[0])
    probabilities = F.softmax(class_logits, -1)
    flat_boxes = boxes[:, 1:].reshape(-1, 4)
    flat_scores = probabilities[:, 1:].reshape(-1)
    flat_labels = torch.arange(num_classes, device=probabilities.device).view(1, -1).expand_as(probabilities)[:, 1:].reshape(-1)
    index = torch.where(flat_scores > heads.score_thresh)[0]
    above = int(index.numel())
    index = index[box_ops.remove_small_boxes(flat_boxes[index], min_size=1e-2)]
    not_empty = int(index.numel())
    kept = index[box_ops.batched_nms(flat_boxes[index], flat_scores[index], flat_labels[index], heads.nms_thresh)]
    after_nms = int(kept.numel())
    kept = kept[: heads.detections_per_img]
    matches = bool(torch.equal(flat_boxes[kept], out_boxes) and torch.equal(flat_scores[kept], out_scores))
    real = real_labels.to(out_labels.device)[out_labels]
    return BoxFunnel(
        proposals=proposals[0].float().cpu(), class_probabilities=probabilities.float().cpu(),
        pairs=int(flat_scores.numel()), above_floor=above, not_empty=not_empty, after_nms=after_nms,
        candidates=int(kept.numel()), real=int(real.sum()), nms_threshold=float(heads.nms_thresh),
        score_floor=float(heads.score_thresh), candidate_boxes=out_boxes[real].float().cpu(),
        proposal_of=_source_proposals(boxes, out_boxes[real], out_labels[real]), matches_module=matches,
    )


def _source_proposals(decoded: torch.Tensor, out_boxes: torch.Tensor, out_labels: torch.Tensor) -> list[int]:
    """For each output candidate, the proposal whose decoded box for the candidate's class is the
    candidate's box (distance 0 when the replay rounds as the run did; the nearest otherwise)."""
    if out_boxes.numel() == 0:
        return []
    per_class = decoded[:, out_labels].permute(1, 0, 2)  # K×P×4: every proposal's box for each candidate's class
    distance = (per_class.float() - out_boxes.float()[:, None]).abs().sum(dim=2)
    return distance.argmin(dim=1).tolist()
