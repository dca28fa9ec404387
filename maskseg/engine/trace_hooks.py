"""Hooks that watch one run of the network's own modules: what each stage received and returned,
when it started and ended, and the multiply-adds its torch layers did. Nothing here computes a result."""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

STAGE_NAMES = ("backbone", "rpn", "box_head", "mask_head")


@dataclass
class Recording:
    """Everything the hooks saw during one traced run."""

    input_shape: tuple[int, ...] = ()  # the padded batch the backbone saw (N, C, H, W)
    features: dict[str, torch.Tensor] | None = None
    objectness: list[torch.Tensor] = field(default_factory=list)  # per level, N×A×H×W logits
    filter_inputs: tuple | None = None  # RPN filter_proposals(proposals, objectness, sizes, per_level)
    proposals: torch.Tensor | None = None  # the RPN's output boxes
    box_pooled: torch.Tensor | None = None  # RoIAlign 7×7 features of every proposal
    postprocess_inputs: tuple | None = None  # postprocess_detections(logits, regression, proposals, sizes)
    postprocess_outputs: tuple | None = None
    started: dict[str, float] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)
    macs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGE_NAMES, 0))
    counted_macs: bool = False  # torch layers ran (OpenVINO's compiled parts are opaque to hooks)
    mask_rois: int = 0  # RoIs the mask head ran on
    cuda: bool = False  # GPU work is asynchronous: synchronise before reading the clock
    _stage: str | None = None

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def enter(self, stage: str) -> None:
        self._stage = stage
        if stage not in self.started:
            self.started[stage] = self._now()

    def leave(self, stage: str) -> None:
        self.ended[stage] = self._now()

    def seconds(self, stage: str) -> float:
        if stage not in self.started or stage not in self.ended:
            return 0.0
        return max(self.ended[stage] - self.started[stage], 0.0)


def _layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-adds of one conv or linear layer call, from its weights and its output's shape."""
    weight = module.weight
    if isinstance(module, nn.Linear):
        return output.numel() * weight.shape[1]
    if isinstance(module, nn.ConvTranspose2d):
        inputs = output.numel() // (output.shape[1] * module.stride[0] * module.stride[1])
        return inputs * weight[0].numel() * weight.shape[0] // max(module.groups, 1)
    return output.numel() * weight[0].numel()  # Conv2d: C_in/groups × k × k per output value


@contextmanager
def record(network: nn.Module, device: torch.device | None = None) -> Iterator[Recording]:
    """Watch `network` for one run; every hook and wrapper is removed on exit."""
    rec = Recording(cuda=device is not None and device.type == "cuda")
    heads = network.roi_heads
    with ExitStack() as stack:
        def hook(module, pre=None, post=None):
            if pre is not None:
                stack.callback(module.register_forward_pre_hook(pre).remove)
            if post is not None:
                stack.callback(module.register_forward_hook(post).remove)

        hook(network.backbone, lambda m, a: _enter_backbone(rec, a[0]), lambda m, a, out: _keep_features(rec, out))
        hook(network.rpn, lambda m, a: rec.enter("rpn"), lambda m, a, out: _keep_proposals(rec, out))
        hook(network.rpn.head, post=lambda m, a, out: setattr(rec, "objectness", [o.detach() for o in out[0]]))
        hook(heads.box_roi_pool, lambda m, a: rec.enter("box_head"))
        # The box head's input, not RoIAlign's output: RoIAlign may run in chunks on several threads.
        hook(heads.box_head, lambda m, a: setattr(rec, "box_pooled", a[0].detach()))
        if getattr(heads, "mask_roi_pool", None) is not None:
            hook(heads.mask_roi_pool, lambda m, a: rec.enter("mask_head"))
            hook(heads.mask_head, lambda m, a: setattr(rec, "mask_rois", rec.mask_rois + a[0].shape[0]))
            for module in (heads.mask_head, heads.mask_predictor):
                hook(module, post=lambda m, a, out: rec.leave("mask_head"))
        stack.enter_context(_wrap(network.rpn, "filter_proposals", lambda args, out: setattr(rec, "filter_inputs", args)))
        stack.enter_context(_wrap(heads, "postprocess_detections", lambda args, out: _keep_postprocess(rec, args, out)))
        for module in network.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                hook(module, post=lambda m, a, out: _count(rec, m, out))
        yield rec


def _enter_backbone(rec: Recording, images: torch.Tensor) -> None:
    rec.input_shape = tuple(images.shape)
    rec.enter("backbone")


def _keep_features(rec: Recording, out: Any) -> None:
    rec.features = {name: level.detach() for name, level in out.items()}
    rec.leave("backbone")


def _keep_proposals(rec: Recording, out: Any) -> None:
    rec.proposals = out[0][0].detach()
    rec.leave("rpn")


def _keep_postprocess(rec: Recording, args: tuple, out: tuple) -> None:
    rec.postprocess_inputs, rec.postprocess_outputs = args, out
    rec.leave("box_head")


def _count(rec: Recording, module: nn.Module, output: torch.Tensor) -> None:
    if rec._stage is not None and isinstance(output, torch.Tensor):
        rec.macs[rec._stage] += _layer_macs(module, output)
        rec.counted_macs = True


@contextmanager
def _wrap(owner: Any, name: str, seen) -> Iterator[None]:
    """Call `seen(args, result)` after each call of `owner.name` (the module's own method runs)."""
    original = getattr(owner, name)
    had_own = name in vars(owner)  # an instance attribute to put back, not just the class's method

    def watched(*args):
        result = original(*args)
        seen(args, result)
        return result

    setattr(owner, name, watched)
    try:
        yield
    finally:
        if had_own:
            setattr(owner, name, original)
        else:
            delattr(owner, name)  # the class's method shows through again


def mac_rates(network: nn.Module, side: int = 256) -> dict[str, float]:
    """Multiply-adds of each stage per unit of work, counted on the torch layers: per padded input
    pixel for the backbone and the RPN head, per RoI for the box and mask heads. The explorer uses
    them where a compiled backend hides the layers (convolution cost grows with pixels, head cost with RoIs)."""
    heads = network.roi_heads
    channels = network.backbone.out_channels
    counts: dict[str, int] = {}

    def measured(name: str, fn) -> None:
        total = [0]
        handles = [
            m.register_forward_hook(lambda m, a, out: total.__setitem__(0, total[0] + _layer_macs(m, out)))
            for m in network.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
        ]
        try:
            fn()
        finally:
            for handle in handles:
                handle.remove()
        counts[name] = total[0]

    with torch.no_grad():
        image = torch.zeros(1, 3, side, side)
        levels: list = []
        measured("backbone", lambda: levels.extend(network.backbone(image).values()))
        measured("rpn", lambda: network.rpn.head(levels))
        box = torch.zeros(4, channels, *_size(heads.box_roi_pool.output_size))
        measured("box_head", lambda: heads.box_predictor(heads.box_head(box)))
        if getattr(heads, "mask_head", None) is not None:
            mask = torch.zeros(4, channels, *_size(heads.mask_roi_pool.output_size))
            measured("mask_head", lambda: heads.mask_predictor(heads.mask_head(mask)))
    pixels = side * side
    return {"backbone": counts["backbone"] / pixels, "rpn": counts["rpn"] / pixels,
            "box_head": counts["box_head"] / 4, "mask_head": counts.get("mask_head", 0) / 4}


def _size(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)
