"""OpenVINO runs the network's heavy pure-tensor parts on the CPU: backbone + FPN, the RPN's head, the
box head and the mask head. torchvision keeps the rest (anchors, proposal NMS, RoIAlign, box
decoding, per-class NMS, mask paste), so the answer stays torchvision's."""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from maskseg.errors import MaskSegError, UsageError

PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}


class OpenVinoUnavailable(MaskSegError):
    """OpenVINO cannot import or convert this model; the caller falls back to torch."""


@dataclass
class OpenVinoInfo:
    """What runs in OpenVINO, in which precision, and what the compile cost this start."""

    precision: str
    parts: list[str] = field(default_factory=list)
    compile_seconds: float = 0.0
    cached: bool = True  # every part came from the disk cache (a warm start)
    backend: str = "openvino"


def default_cache_dir() -> Path:
    """$MASKSEG_CACHE_DIR, else $XDG_CACHE_HOME/maskseg/openvino, else ~/.cache/maskseg/openvino."""
    if os.environ.get("MASKSEG_CACHE_DIR"):
        return Path(os.environ["MASKSEG_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "maskseg" / "openvino"


def openvino_status() -> str | None:
    """None when OpenVINO imports, else the one-line reason it does not."""
    try:
        import openvino  # noqa: F401
    except Exception as exc:  # any import failure means "not usable here"
        return f"OpenVINO is not usable here ({type(exc).__name__}: {exc})."
    return None


class _Compiled:
    """One compiled OpenVINO model called with torch tensors; outputs are copied out, because
    the infer request reuses its buffers and the engine keeps features across calls."""

    def __init__(self, compiled) -> None:
        self._request = compiled.create_infer_request()
        self._outputs = compiled.outputs
        self._lock = threading.Lock()

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        arrays = [np.ascontiguousarray(t.detach().float().cpu().numpy()) for t in inputs]
        with self._lock:
            results = self._request.infer(arrays, share_inputs=True)
            return [torch.from_numpy(np.array(results[output], copy=True)) for output in self._outputs]


class _FlatBackbone(nn.Module):
    """The backbone with a tuple out instead of an OrderedDict, for conversion."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor):
        return tuple(self.backbone(images).values())


class _FlatRpnHead(nn.Module):
    """The RPN head over five separate levels, outputs flattened, for conversion."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, *levels: torch.Tensor):
        logits, deltas = self.head(list(levels))
        return (*logits, *deltas)


class _MaskHeadAndPredictor(nn.Module):
    """mask_head then mask_predictor: one OpenVINO model, 14×14 features → 28×28 logits."""

    def __init__(self, head: nn.Module, predictor: nn.Module) -> None:
        super().__init__()
        self.head, self.predictor = head, predictor

    def forward(self, pooled: torch.Tensor):
        return self.predictor(self.head(pooled))


class BackboneOnOpenVino(nn.Module):
    """Stands in for `network.backbone`: same input, same OrderedDict of levels, same out_channels."""

    def __init__(self, compiled: _Compiled, names: list[str], out_channels: int) -> None:
        super().__init__()
        self.compiled, self.names, self.out_channels = compiled, names, out_channels

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return OrderedDict(zip(self.names, self.compiled(images)))


class RpnHeadOnOpenVino(nn.Module):
    """Stands in for `network.rpn.head`: levels in, (objectness per level, box deltas per level) out."""

    def __init__(self, compiled: _Compiled) -> None:
        super().__init__()
        self.compiled = compiled

    def forward(self, levels: list[torch.Tensor]):
        outputs = self.compiled(*levels)
        return outputs[: len(levels)], outputs[len(levels) :]


class RoiHeadOnOpenVino(nn.Module):
    """Stands in for a head over pooled RoIs (box head, or mask head + predictor); 0 RoIs skip OpenVINO."""

    def __init__(self, compiled: _Compiled, empty_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.compiled, self.empty_shape = compiled, empty_shape

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        if pooled.shape[0] == 0:
            return pooled.new_zeros((0, *self.empty_shape))
        return self.compiled(pooled)[0]


@dataclass
class _Part:
    """One piece of the network to convert: a traceable module, example inputs and dynamic shapes."""

    name: str
    module: nn.Module
    examples: tuple[torch.Tensor, ...]
    shapes: list[list[int]]  # -1 = dynamic


def _parts(network: nn.Module) -> list[_Part]:
    """The four parts worth running in OpenVINO, with example inputs traced through torch."""
    channels = network.backbone.out_channels
    image = torch.zeros(1, 3, 256, 320)
    with torch.no_grad():
        levels = tuple(network.backbone(image).values())
    heads = network.roi_heads
    parts = [
        _Part("backbone", _FlatBackbone(network.backbone), (image,), [[-1, 3, -1, -1]]),
        _Part("rpn_head", _FlatRpnHead(network.rpn.head), levels, [[-1, channels, -1, -1]] * len(levels)),
        _Part("box_head", heads.box_head, (torch.zeros(4, channels, *_pool_size(heads.box_roi_pool)),),
              [[-1, channels, *_pool_size(heads.box_roi_pool)]]),
    ]
    if getattr(heads, "mask_head", None) is not None:
        size = _pool_size(heads.mask_roi_pool)
        parts.append(_Part("mask_head", _MaskHeadAndPredictor(heads.mask_head, heads.mask_predictor),
                           (torch.zeros(4, channels, *size),), [[-1, channels, *size]]))
    return parts


def _pool_size(pool: nn.Module) -> tuple[int, int]:
    size = pool.output_size
    return (size, size) if isinstance(size, int) else tuple(size)


def _ir_path(cache_dir: Path, fingerprint: str, part: str, version: str) -> Path:
    return cache_dir / "models" / f"{fingerprint}-{part}-ov{version}.xml"


def _convert(ov, part: _Part, path: Path) -> None:
    """Trace one part to OpenVINO IR on disk, weights kept in fp32 (fp16 compression would change answers)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing warnings about constants say nothing to a user
        model = ov.convert_model(
            part.module.eval(), example_input=part.examples, input=[ov.PartialShape(s) for s in part.shapes]
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".partial.xml")
    ov.save_model(model, temporary, compress_to_fp16=False)
    temporary.with_suffix(".bin").replace(path.with_suffix(".bin"))
    temporary.replace(path)  # the .xml last: its presence means the pair is complete


def _compile_parts(network, precision, cache_dir, fingerprint) -> tuple[dict[str, _Compiled], bool]:
    """Every part compiled for the CPU, converting those not cached yet; and whether all were cached."""
    import openvino as ov

    core = ov.Core()
    if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise UsageError("This CPU has no bf16 support (AVX512-BF16 or AMX); use --precision fp32.")
    core.set_property({"CACHE_DIR": str(cache_dir / "compiled")})
    config = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
    version = ov.__version__.split("-")[0]
    compiled, cached = {}, True
    for part in _parts(network):
        path = _ir_path(cache_dir, fingerprint, part.name, version)
        if not path.is_file():
            cached = False
            _convert(ov, part, path)
        compiled[part.name] = _Compiled(core.compile_model(str(path), "CPU", config))
    if not cached:
        _prune(cache_dir / "models", "*.xml", lambda xml: (xml, xml.with_suffix(".bin")))
        _prune(cache_dir / "compiled", "*.blob", lambda blob: (blob,))
    return compiled, cached


def _prune(folder: Path, pattern: str, files, keep: int = 8 * 4) -> None:
    """Keep the newest few entries (four parts for each of the last eight weights and precisions):
    retrained checkpoints would otherwise pile up converted models and compiled blobs."""
    entries = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        for file in files(old):
            file.unlink(missing_ok=True)


def _output_shape(module: nn.Module, example: torch.Tensor) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(module(example).shape[1:])


def install_openvino(
    network: nn.Module, *, precision: str = "fp32", cache_dir: Path | None = None, fingerprint: str,
    log: Callable[[str], None] = print,
) -> OpenVinoInfo:
    """Swap the network's backbone, RPN head, box head and mask head for OpenVINO-compiled ones.

    Converted models are kept on disk under `cache_dir` by `fingerprint` (the weights), and compiled
    blobs in OpenVINO's own cache beside them, so only the first start pays; it says so once.
    """
    if precision not in PRECISION_HINTS:
        raise UsageError(f"Unknown precision {precision!r}; choose one of {', '.join(PRECISION_HINTS)}.")
    reason = openvino_status()
    if reason:
        raise OpenVinoUnavailable(reason)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    started = time.perf_counter()
    heads = network.roi_heads
    shapes = {"box_head": _output_shape(heads.box_head, torch.zeros(1, network.backbone.out_channels, *_pool_size(heads.box_roi_pool)))}
    if getattr(heads, "mask_head", None) is not None:
        example = torch.zeros(1, network.backbone.out_channels, *_pool_size(heads.mask_roi_pool))
        shapes["mask_head"] = _output_shape(nn.Sequential(heads.mask_head, heads.mask_predictor), example)
    try:
        names = _level_names(network)
        compiled, cached = _compile_parts(network.eval(), precision, cache_dir, fingerprint)
    except UsageError:
        raise
    except Exception as exc:  # conversion failures come in many types; all mean "use torch"
        raise OpenVinoUnavailable(f"OpenVINO could not convert this model ({type(exc).__name__}: {exc}).") from exc
    seconds = time.perf_counter() - started
    network.backbone = BackboneOnOpenVino(compiled["backbone"], names, network.backbone.out_channels)
    network.rpn.head = RpnHeadOnOpenVino(compiled["rpn_head"])
    heads.box_head = RoiHeadOnOpenVino(compiled["box_head"], shapes["box_head"])
    if "mask_head" in compiled:
        heads.mask_head = RoiHeadOnOpenVino(compiled["mask_head"], shapes["mask_head"])
        heads.mask_predictor = nn.Identity()  # folded into the mask head's OpenVINO model
    if not cached:
        log(f"Compiled the model for OpenVINO {precision} in {seconds:.1f} s (first start only; cached in {cache_dir}).")
    return OpenVinoInfo(precision=precision, parts=list(compiled), compile_seconds=seconds, cached=cached)


def _level_names(network: nn.Module) -> list[str]:
    """The backbone's output level names ('0'..'3', 'pool'), in order."""
    with torch.no_grad():
        return list(network.backbone(torch.zeros(1, 3, 64, 64)).keys())
