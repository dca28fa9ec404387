"""Model zoo: names -> architecture, weights and class names; device choice; cached loading."""

from __future__ import annotations

import gc
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torchvision.models import detection

from maskseg.engine.backend import apply_backend, check_precision, resolve_backend
from maskseg.engine.checkpoint import load_checkpoint
from maskseg.errors import CheckpointError, UsageError, WeightsMissingError

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
DEMO_CHECKPOINT = ASSETS_DIR / "shapes-demo.pt"
DEMO_MODEL_NAME = "shapes-demo"


@dataclass(frozen=True)
class ZooEntry:
    """A torchvision COCO model maskseg knows by name."""

    name: str
    title: str
    builder: Callable[..., nn.Module]
    weights: Any  # a torchvision WeightsEnum member

    @property
    def file_name(self) -> str:
        """The file name torchvision caches the weights under (last part of the enum's url)."""
        return self.weights.url.rsplit("/", 1)[-1]

    @property
    def weights_path(self) -> Path:
        """Where torchvision reads (and downloads) this model's weights."""
        return Path(torch.hub.get_dir()) / "checkpoints" / self.file_name

    @property
    def box_ap(self) -> float:
        return float(self.weights.meta["_metrics"]["COCO-val2017"]["box_map"])

    @property
    def mask_ap(self) -> float:
        return float(self.weights.meta["_metrics"]["COCO-val2017"]["mask_map"])

    @property
    def num_params(self) -> int:
        return int(self.weights.meta["num_params"])

    @property
    def file_size_mb(self) -> float:
        return float(self.weights.meta["_file_size"])

    @property
    def gflops(self) -> float:
        return float(self.weights.meta["_ops"])


ZOO: dict[str, ZooEntry] = {
    "maskrcnn_resnet50_fpn": ZooEntry(
        "maskrcnn_resnet50_fpn",
        "Mask R-CNN ResNet-50 FPN (v1, COCO)",
        detection.maskrcnn_resnet50_fpn,
        detection.MaskRCNN_ResNet50_FPN_Weights.COCO_V1,
    ),
    "maskrcnn_resnet50_fpn_v2": ZooEntry(
        "maskrcnn_resnet50_fpn_v2",
        "Mask R-CNN ResNet-50 FPN v2 (COCO)",
        detection.maskrcnn_resnet50_fpn_v2,
        detection.MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1,
    ),
}
ALIASES = {"v1": "maskrcnn_resnet50_fpn", "v2": "maskrcnn_resnet50_fpn_v2"}
ARCHITECTURES = ("tiny", "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2")


@dataclass
class LoadedModel:
    """A network ready for inference, with the names of its classes and where it came from."""

    key: str
    title: str
    architecture: str
    network: nn.Module
    class_names: list[str]  # index = label id the network outputs; 0 is background
    device: torch.device
    source: str
    info: dict[str, Any] = field(default_factory=dict)
    # Re-entrant: the stage explorer holds it around a whole traced run, which takes it again inside.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    backend: str = "torch"  # what runs the backbone and heads: "torch" or "openvino"
    precision: str = "fp32"  # "fp32", "fp16" (CUDA autocast) or "bf16"
    backend_note: str = ""  # why the asked-for backend is not the one running, if it is not
    # Parameters per stage, counted on the torch modules before a backend may swap them out.
    stage_parameters: dict[str, int] = field(default_factory=dict)

    @property
    def real_class_names(self) -> list[str]:
        """Class names a person can pick: no background, no COCO 'N/A' gaps."""
        return [n for n in self.class_names[1:] if n not in ("N/A", "__background__")]

    @property
    def device_name(self) -> str:
        """'CPU' or the GPU's name, for status lines."""
        if self.device.type == "cuda":
            return f"{torch.cuda.get_device_name(self.device)} · {self.runtime_name}"
        return f"CPU · {self.runtime_name}"

    @property
    def runtime_name(self) -> str:
        """The backend and precision in words, e.g. 'OpenVINO fp32' or 'torch bf16'."""
        return f"{'OpenVINO' if self.backend == 'openvino' else 'torch'} {self.precision}"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """auto -> CUDA when available, else CPU; an explicit 'cuda' without a GPU is a user error."""
    if isinstance(device, torch.device):
        return device
    device = (device or "auto").lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but no CUDA GPU is available; use --device cpu.")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"Unknown device '{device}'; use auto, cpu or cuda.") from exc


def resolve_model_name(model: str | None, device: torch.device) -> str:
    """Turn 'auto', 'v1', 'v2' or a full name into a zoo name or the demo model's name."""
    model = (model or "auto").strip()
    if model == "auto":
        return "maskrcnn_resnet50_fpn_v2" if device.type == "cuda" else "maskrcnn_resnet50_fpn"
    model = ALIASES.get(model, model)
    if model in ZOO or model == DEMO_MODEL_NAME:
        return model
    choices = ", ".join(["auto", *ALIASES, *ZOO, DEMO_MODEL_NAME])
    raise UsageError(f"Unknown model '{model}'; choose one of: {choices} (or pass --checkpoint PATH).")


def build_architecture(architecture: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """An untrained Mask R-CNN of the named architecture with `num_classes` (background included)."""
    if architecture == "tiny":
        from maskseg.engine.tiny import build_tiny_maskrcnn

        return build_tiny_maskrcnn(num_classes=num_classes, **kwargs)
    if architecture in ZOO:
        return ZOO[architecture].builder(
            weights=None, weights_backbone=None, num_classes=num_classes, **kwargs
        )
    raise CheckpointError(f"Unknown architecture '{architecture}'; known: {', '.join(ARCHITECTURES)}.")


def weights_available(name: str) -> bool:
    """Whether a zoo model's weights (or the demo checkpoint) are already on this machine."""
    name = ALIASES.get(name, name)
    if name == DEMO_MODEL_NAME:
        return DEMO_CHECKPOINT.is_file()
    return ZOO[name].weights_path.is_file()


def missing_weights_message(entry: ZooEntry) -> str:
    """The one sentence a person reads when COCO weights are absent and cannot be downloaded."""
    return (
        f"Weights for {entry.name} are not on this machine and could not be downloaded: "
        f"put {entry.file_name} in {entry.weights_path.parent} (or set TORCH_HOME), "
        f"or pass --checkpoint PATH to use a local checkpoint."
    )


def _load_zoo_network(entry: ZooEntry) -> nn.Module:
    """Build a zoo model through torchvision's own weights path (cache first, download if missing)."""
    cached = entry.weights_path.is_file()
    try:
        return entry.builder(weights=entry.weights, weights_backbone=None, progress=True)
    except Exception as exc:  # download failures come as URLError, HTTPError, OSError, RuntimeError
        if not cached:
            raise WeightsMissingError(missing_weights_message(entry)) from exc
        raise CheckpointError(
            f"Weights file {entry.weights_path} exists but could not be loaded "
            f"({type(exc).__name__}); delete it to download it again, or replace it."
        ) from exc


def _zoo_info(entry: ZooEntry) -> dict[str, Any]:
    return {
        "box_ap": entry.box_ap,  # percent, as torchvision's weights enum states it
        "mask_ap": entry.mask_ap,
        "ap_measured_on": "COCO val2017",
        "num_params": entry.num_params,
        "file_size_mb": entry.file_size_mb,
        "gflops": entry.gflops,
    }


def _load_checkpoint_model(path: Path, title: str | None = None) -> LoadedModel:
    ckpt = load_checkpoint(path)
    network = build_architecture(ckpt.architecture, num_classes=len(ckpt.class_names))
    try:
        network.load_state_dict(ckpt.state_dict)
    except RuntimeError as exc:
        raise CheckpointError(
            f"Checkpoint {path} does not match its declared architecture '{ckpt.architecture}'."
        ) from exc
    info = {
        "num_params": sum(p.numel() for p in network.parameters()),
        "file_size_mb": round(path.stat().st_size / 1e6, 2),
        "metrics": ckpt.metrics,
        "settings": ckpt.settings,
    }
    # Checkpoints store COCOeval's fractions; the app shows every AP in percent, like the zoo's.
    for key in ("box_ap", "mask_ap"):
        if key in ckpt.metrics:
            info[key] = round(100.0 * float(ckpt.metrics[key]), 1)
    if "box_ap" in info or "mask_ap" in info:
        val = (ckpt.settings or {}).get("val")
        info["ap_measured_on"] = f"its validation set ({Path(str(val)).name})" if val else "its validation set"
    return LoadedModel(
        key=str(path),
        title=title or f"{path.name} ({ckpt.architecture}, {len(ckpt.class_names) - 1} classes)",
        architecture=ckpt.architecture,
        network=network,
        class_names=ckpt.class_names,
        device=torch.device("cpu"),
        source=str(path),
        info=info,
    )


_CACHE: dict[tuple[str, str, str, str], LoadedModel] = {}
_CACHE_LOCK = threading.Lock()  # guards the dicts only; never held while a model is built
_BUILD_LOCKS: dict[tuple[str, str, str, str], threading.Lock] = {}


def load_model(
    model: str | None = "auto",
    checkpoint: str | Path | None = None,
    device: str | torch.device = "auto",
    backend: str = "torch",
    precision: str = "auto",
) -> LoadedModel:
    """The model for these settings, built once per process and shared by every caller.

    `backend` is auto, torch or openvino (auto: OpenVINO on CPU, torch on CUDA); training uses torch.

    Building (perhaps a 170 MB download) holds only that model's own lock, so requests for
    models already loaded never wait behind it.
    """
    dev = resolve_device(device)
    key = str(Path(checkpoint).resolve()) if checkpoint is not None else resolve_model_name(model, dev)
    runtime = resolve_backend(backend, dev)
    precision = check_precision(precision, dev)
    cache_key = (key, str(dev), runtime, precision)
    with _CACHE_LOCK:
        cached = _CACHE.get(cache_key)
        if cached is not None:
            return cached
        build_lock = _BUILD_LOCKS.setdefault(cache_key, threading.Lock())
    with build_lock:
        with _CACHE_LOCK:
            cached = _CACHE.get(cache_key)  # built by another caller while we waited
        if cached is not None:
            return cached
        loaded = _build_model(key, checkpoint, dev)
        apply_backend(loaded, runtime, precision)
        with _CACHE_LOCK:
            _CACHE[cache_key] = loaded
        return loaded


def _build_model(key: str, checkpoint: str | Path | None, dev: torch.device) -> LoadedModel:
    if checkpoint is not None:
        loaded = _load_checkpoint_model(Path(checkpoint))
    elif key == DEMO_MODEL_NAME:
        if not DEMO_CHECKPOINT.is_file():
            raise CheckpointError(f"The offline demo model {DEMO_CHECKPOINT} is missing.")
        loaded = _load_checkpoint_model(DEMO_CHECKPOINT, title="Shapes demo (offline)")
        loaded.key = DEMO_MODEL_NAME
    else:
        entry = ZOO[key]
        loaded = LoadedModel(
            key=key,
            title=entry.title,
            architecture=key,
            network=_load_zoo_network(entry),
            class_names=list(entry.weights.meta["categories"]),
            device=dev,
            source=str(entry.weights_path),
            info=_zoo_info(entry),
        )
    loaded.network.eval().to(dev)
    loaded.device = dev
    loaded.stage_parameters = count_stage_parameters(loaded.network)
    return loaded


def count_stage_parameters(network: nn.Module) -> dict[str, int]:
    """Parameters of each stage the explorer shows: backbone + FPN, RPN, box head, mask head."""
    heads = network.roi_heads
    stages = {
        "backbone": [network.backbone],
        "rpn": [network.rpn],
        "box_head": [heads.box_head, heads.box_predictor],
        "mask_head": [getattr(heads, "mask_head", None), getattr(heads, "mask_predictor", None)],
    }
    return {
        stage: sum(p.numel() for m in modules if m is not None for p in m.parameters())
        for stage, modules in stages.items()
    }


_FORK_HOOK = []


def one_cpu_thread_in_forked_children() -> None:
    """Make forked children (ZeroGPU runs every GPU call in one) use one CPU thread: the parent's
    OpenMP thread pool does not survive a fork, and the child's first parallel CPU operation would
    wait for it forever. PyTorch's own DataLoader workers do the same. Registered once."""
    if not _FORK_HOOK:
        os.register_at_fork(after_in_child=lambda: torch.set_num_threads(1))
        _FORK_HOOK.append(True)


def release_device_memory(device: torch.device) -> None:
    """Hand a GPU's cached blocks back to the driver (after a model is dropped or a batch ran out
    of memory), so other processes and the next model can use them; nothing to do on the CPU."""
    if device.type == "cuda":
        gc.collect()  # the dropped network's tensors go only when nothing refers to them
        torch.cuda.empty_cache()


def _drop(keys: list[tuple[str, str, str, str]]) -> None:
    """Forget these cached models and free the GPU memory they held."""
    with _CACHE_LOCK:
        dropped = [_CACHE.pop(key) for key in keys if key in _CACHE]
    devices = {loaded.device for loaded in dropped}
    del dropped  # a Segmenter still holding one keeps it alive (and working) until it goes too
    for device in devices:
        release_device_memory(device)


def forget_model(checkpoint: str | Path) -> None:
    """Drop a checkpoint's models (on every device) from the cache: after it is overwritten, or
    when a short-lived one such as the Train tab's preview is done."""
    path = str(Path(checkpoint).resolve())
    with _CACHE_LOCK:
        keys = [k for k in _CACHE if k[0] == path]
    _drop(keys)


def loaded_models() -> list[LoadedModel]:
    """Every model this process has in memory (the cache), in loading order."""
    with _CACHE_LOCK:
        return list(_CACHE.values())


def clear_model_cache() -> None:
    """Forget every loaded model and free the GPU memory they held."""
    with _CACHE_LOCK:
        keys = list(_CACHE)
    _drop(keys)


def list_models() -> list[dict[str, Any]]:
    """One row per known model: name, title, COCO box/mask AP, size and whether it is on disk."""
    rows = []
    for entry in ZOO.values():
        rows.append(
            {
                "name": entry.name,
                "title": entry.title,
                "box_ap": entry.box_ap,
                "mask_ap": entry.mask_ap,
                "params_m": round(entry.num_params / 1e6, 1),
                "size_mb": round(entry.file_size_mb, 1),
                "available": entry.weights_path.is_file(),
                "path": str(entry.weights_path),
            }
        )
    rows.append(
        {
            "name": DEMO_MODEL_NAME,
            "title": "Shapes demo (offline, synthetic shapes)",
            "box_ap": None,
            "mask_ap": None,
            "params_m": None,
            "size_mb": round(DEMO_CHECKPOINT.stat().st_size / 1e6, 1) if DEMO_CHECKPOINT.is_file() else None,
            "available": DEMO_CHECKPOINT.is_file(),
            "path": str(DEMO_CHECKPOINT),
        }
    )
    return rows
