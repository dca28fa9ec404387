"""maskseg web app: the entry point Hugging Face Spaces runs (`python app.py --help` for flags).

Every flag can also come from the environment, which is how Spaces passes settings:
MASKSEG_HOST, MASKSEG_PORT (or PORT / GRADIO_SERVER_PORT), MASKSEG_MODEL, MASKSEG_CHECKPOINT,
MASKSEG_DEVICE, MASKSEG_SHARE, MASKSEG_MAX_PIXELS, MASKSEG_QUEUE_SIZE, MASKSEG_CHECKPOINTS_DIR,
MASKSEG_TRAIN, MASKSEG_MAX_TRAIN_MINUTES, MASKSEG_VIDEO_MAX_SECONDS.
"""

from __future__ import annotations

import os

# Off unless someone turns them on: no usage analytics, no telemetry from a classroom laptop.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def _env(*names: str, default: str | None = None) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return value
    return default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    on_spaces = bool(os.environ.get("SPACE_ID"))
    parser = argparse.ArgumentParser(description="maskseg: Mask R-CNN instance segmentation in the browser.")
    parser.add_argument("--host", default=_env("MASKSEG_HOST", "GRADIO_SERVER_NAME",
                                               default="0.0.0.0" if on_spaces else "127.0.0.1"),
                        help="address to listen on (0.0.0.0 to serve your network)")
    parser.add_argument("--port", type=int, default=int(_env("MASKSEG_PORT", "GRADIO_SERVER_PORT", "PORT", default="7860")))
    parser.add_argument("--model", default=_env("MASKSEG_MODEL", default="auto"),
                        help="auto, v1, v2, maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2 or shapes-demo")
    parser.add_argument("--checkpoint", default=_env("MASKSEG_CHECKPOINT"),
                        help="a checkpoint saved by `maskseg train` (listed in the model menu and loaded first)")
    parser.add_argument("--device", default=_env("MASKSEG_DEVICE", default="auto"), help="auto, cpu or cuda")
    parser.add_argument("--backend", choices=("auto", "torch", "openvino"), default=_env("MASKSEG_BACKEND", default="auto"),
                        help="what runs the network: auto (OpenVINO on CPU, torch on CUDA), torch or openvino")
    parser.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), default=_env("MASKSEG_PRECISION", default="auto"),
                        help="auto (fp32 on CPU, fp16 on CUDA), fp32, fp16 (CUDA) or bf16 (faster, slightly different answers)")
    parser.add_argument("--share", action="store_true",
                        default=_env("MASKSEG_SHARE", default="0").lower() in ("1", "true", "yes"),
                        help="also serve through a temporary public gradio.live link")
    parser.add_argument("--checkpoints-dir", default=_env("MASKSEG_CHECKPOINTS_DIR", default="checkpoints"),
                        help="folder whose *.pt files appear in the model menu")
    parser.add_argument("--max-pixels", type=int, default=int(_env("MASKSEG_MAX_PIXELS", default="40000000")),
                        help="refuse images with more pixels than this")
    parser.add_argument("--queue-size", type=int, default=int(_env("MASKSEG_QUEUE_SIZE", default="16")),
                        help="how many requests may wait; more get a 'queue is full' message")
    # Training takes every core for minutes: a teacher's tool, off by default on a shared Space.
    parser.add_argument("--train", choices=("on", "off"), default=_env("MASKSEG_TRAIN", default="off" if on_spaces else "on"),
                        help="show the Train tab and its API (default: on, off on Hugging Face Spaces)")
    parser.add_argument("--max-train-minutes", type=float, default=float(_env("MASKSEG_MAX_TRAIN_MINUTES", default="30")),
                        help="the longest training run the Train tab allows")
    parser.add_argument("--video-max-seconds", type=float, default=float(_env("MASKSEG_VIDEO_MAX_SECONDS", default="600")),
                        help="the longest stretch of video the Video tab and /video segment (longer clips get a sentence)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from maskseg.errors import MaskSegError
    from maskseg.app.config import AppConfig
    from maskseg.app.launch import build_app, launch

    config = AppConfig(
        model=args.model,
        checkpoint=args.checkpoint,
        device=args.device,
        backend=args.backend,
        precision=args.precision,
        checkpoints_dir=Path(args.checkpoints_dir),
        max_pixels=args.max_pixels,
        queue_size=args.queue_size,
        train_enabled=args.train == "on",
        max_train_minutes=args.max_train_minutes,
        video_max_seconds=args.video_max_seconds,
    )
    try:
        demo = build_app(config)
    except MaskSegError as exc:  # a bad flag: one sentence, no traceback
        print(f"maskseg: {exc}", file=sys.stderr)
        return 2
    launch(demo, host=args.host, port=args.port, share=args.share, queue_size=args.queue_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
