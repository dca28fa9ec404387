"""The maskseg checkpoint file: weights plus everything needed to rebuild and label the model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from maskseg.errors import CheckpointError

CHECKPOINT_FORMAT = "maskseg-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class Checkpoint:
    """A saved Mask R-CNN: architecture name, class names (index 0 is background) and weights."""

    architecture: str
    class_names: list[str]
    state_dict: dict[str, torch.Tensor]
    settings: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The plain dict written by torch.save (only types weights_only=True can read)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "architecture": self.architecture,
            "class_names": list(self.class_names),
            "state_dict": self.state_dict,
            "settings": self.settings,
            "metrics": self.metrics,
            "extra": self.extra,
        }


def save_checkpoint(checkpoint: Checkpoint, path: str | Path, half: bool = False) -> Path:
    """Write a checkpoint atomically; `half` stores floating weights as fp16 to halve the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = checkpoint.to_dict()
    if half:
        data["state_dict"] = {
            k: (v.half() if v.is_floating_point() else v) for k, v in checkpoint.state_dict.items()
        }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(data, tmp)
    tmp.replace(path)  # a crash mid-write never leaves a half-written checkpoint behind
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint safely (weights_only: a checkpoint is untrusted input)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise CheckpointError(
            f"Checkpoint {path} could not be read as a safe PyTorch file ({type(exc).__name__})."
        ) from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a maskseg checkpoint (save one with `python -m maskseg train`)."
        )
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in data["state_dict"].items()}
    return Checkpoint(
        architecture=data["architecture"],
        class_names=list(data["class_names"]),
        state_dict=state,
        settings=dict(data.get("settings") or {}),
        metrics=dict(data.get("metrics") or {}),
        extra=dict(data.get("extra") or {}),
    )
