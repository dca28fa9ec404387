"""How the app was launched: its settings from flags or environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from maskseg.engine.images import DEFAULT_MAX_PIXELS

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = REPO_ROOT / "assets" / "examples"

@dataclass
class AppConfig:
    """How the app was launched (flags or environment variables)."""

    model: str = "auto"
    checkpoint: str | None = None
    device: str = "auto"
    backend: str = "auto"  # auto (OpenVINO on CPU, torch on CUDA), torch or openvino
    precision: str = "auto"  # auto (fp32 on CPU, fp16 autocast on CUDA), fp32, fp16 or bf16
    checkpoints_dir: Path = field(default_factory=lambda: Path("checkpoints"))
    max_pixels: int = DEFAULT_MAX_PIXELS
    score_threshold: float = 0.5
    queue_size: int = 16
    examples_dir: Path = EXAMPLES_DIR
    train_enabled: bool = True  # the Train tab and its API (`--train off` hides both)
    max_train_minutes: float = 30.0  # the longest run the Train tab allows
    video_max_seconds: float = 600.0  # the longest stretch of video the Video tab segments

def env_flag(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default
