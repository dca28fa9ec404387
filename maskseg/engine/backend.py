"""Which runtime executes the network's heavy parts: torch, or OpenVINO on CPU; and in which precision."""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from maskseg.errors import UsageError

if TYPE_CHECKING:
    from maskseg.engine.models import LoadedModel

BACKENDS = ("auto", "torch", "openvino")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
BACKEND_ENV = "MASKSEG_BACKEND"
PRECISION_ENV = "MASKSEG_PRECISION"


def default_backend() -> str:
    """The backend asked for by the environment (MASKSEG_BACKEND), else auto."""
    return os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"


def default_precision() -> str:
    """The precision asked for by the environment (MASKSEG_PRECISION), else auto."""
    return os.environ.get(PRECISION_ENV, "auto").strip().lower() or "auto"


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """--backend / --precision: what runs the network, in which precision."""
    parser.add_argument(
        "--backend", choices=BACKENDS, default=default_backend(),
        help="auto (OpenVINO on CPU, torch on CUDA), torch or openvino (default: $MASKSEG_BACKEND or auto)",
    )
    parser.add_argument(
        "--precision", choices=PRECISIONS, default=default_precision(),
        help="auto (fp32 on CPU, fp16 autocast on CUDA), fp32, fp16 (CUDA only) or bf16 (CPUs with bf16 "
        "support, or CUDA): faster, slightly different answers (default: $MASKSEG_PRECISION or auto)",
    )


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """auto → OpenVINO on CPU, torch on CUDA; a name that is not a backend is a user error."""
    name = (backend or "auto").strip().lower()
    if name not in BACKENDS:
        raise UsageError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if name == "auto":
        return "openvino" if device.type == "cpu" else "torch"
    if name == "openvino" and device.type != "cpu":
        raise UsageError("The OpenVINO backend runs on the CPU; use --device cpu, or --backend torch on CUDA.")
    return name


def check_precision(precision: str | None, device: torch.device | None = None) -> str:
    """auto → fp16 on CUDA (autocast), fp32 on the CPU; fp16 only on CUDA; else a user error."""
    name = (precision or "auto").strip().lower()
    if name not in PRECISIONS:
        raise UsageError(f"Unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
    on_cuda = device is not None and device.type == "cuda"
    if name == "auto":
        return "fp16" if on_cuda else "fp32"
    if name == "fp16" and not on_cuda:
        raise UsageError("fp16 runs on CUDA only; on the CPU use --precision fp32 or bf16.")
    if name == "bf16" and on_cuda and not torch.cuda.is_bf16_supported():
        raise UsageError("This GPU has no bf16 support; use --precision fp16 or fp32.")
    return name


def weights_fingerprint(network: torch.nn.Module, source: str) -> str:
    """A short key for compiled-model caches: changes whenever the weights change."""
    digest = hashlib.sha1(source.encode())
    path = Path(source)
    if path.is_file():
        stat = path.stat()
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    else:
        # Weights from memory: a few parameter sums identify them well enough for a cache key.
        for parameter in list(network.parameters())[:: max(1, len(list(network.parameters())) // 16)]:
            digest.update(f"{float(parameter.detach().double().sum()):.10e}".encode())
    return digest.hexdigest()[:16]


def apply_backend(
    loaded: "LoadedModel", backend: str, precision: str, log: Callable[[str], None] | None = None
) -> None:
    """Move the loaded model's heavy parts onto `backend`; on any OpenVINO failure stay on torch
    and say why in one line."""
    say = log or (lambda line: print(line, file=sys.stderr))
    loaded.backend, loaded.precision = "torch", precision
    if backend != "openvino":
        return
    try:
        from maskseg.engine.openvino_parts import OpenVinoUnavailable, install_openvino
    except ImportError as exc:  # pragma: no cover - the module ships with maskseg
        loaded.backend_note = f"OpenVINO backend unavailable ({exc}); running on torch."
        say(loaded.backend_note)
        return
    from maskseg.engine.openvino_parts import openvino_status
    from maskseg.engine.trace_hooks import mac_rates

    if openvino_status() is None:  # the explorer's operation counts: compiled parts hide their layers
        loaded.info["mac_rates"] = mac_rates(loaded.network)
    try:
        info = install_openvino(
            loaded.network, precision=precision, fingerprint=weights_fingerprint(loaded.network, loaded.source), log=say
        )
    except OpenVinoUnavailable as exc:
        loaded.backend_note = f"{exc} Running on torch instead."
        say(loaded.backend_note)
        return
    loaded.backend = "openvino"
    loaded.info["openvino_parts"] = list(info.parts)
