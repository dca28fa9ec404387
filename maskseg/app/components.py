"""Small Gradio helpers every tab uses: upload paths, user errors, the GPU decorator, the styled table."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

import gradio as gr
import pandas as pd

from maskseg.engine.models import one_cpu_thread_in_forked_children
from maskseg.engine.prediction import TABLE_COLUMNS
from maskseg.engine.render import color_hex
from maskseg.errors import CheckpointError, MaskSegError, WeightsMissingError

try:  # ZeroGPU on Hugging Face Spaces: the function that runs the network asks for a GPU.
    import spaces  # type: ignore
except ImportError:  # everywhere else `gpu` is a no-op
    spaces = None

# On a ZeroGPU Space a decorated call runs in a forked GPU worker: its arguments and its answer are
# pickled across, so answers must not need the network afterwards (see Prediction.detached).
ZERO_GPU = spaces is not None and os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")
if ZERO_GPU:
    one_cpu_thread_in_forked_children()


def gpu(duration: int | Callable[..., int]):
    """spaces.GPU with an explicit duration in seconds (or a function of the call's arguments),
    as ZeroGPU's scheduler wants; without the `spaces` package, the function unchanged."""
    if spaces is None:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


NETWORK = "network"  # one network run at a time per process (the model is shared)
RENDER = "render"  # re-filtering and drawing are cheap and may run beside a network run


def pass_upload_path_through(component: Any) -> Any:
    """Make a gr.Image or gr.File hand the uploaded file's path on untouched.

    Gradio's own preprocessing opens the file with PIL and fails with a bare error on a non-image;
    passing the path on lets maskseg.engine.images.load_image give its one clear sentence instead.
    (An instance patch, not a subclass: a subclass makes Gradio write a .pyi file next to this one.)
    """
    original = component.preprocess

    def preprocess(payload):
        if payload is not None and getattr(payload, "path", None):
            return str(payload.path)
        return original(payload)

    component.preprocess = preprocess  # type: ignore[method-assign]
    return component


def user_error(exc: MaskSegError) -> gr.Error:
    """A MaskSegError as the one sentence the page shows (no traceback in the server log).

    Missing weights and unreadable checkpoints name files and folders on the server: the operator
    gets that sentence in the terminal, the visitor a plain one with nothing they cannot act on.
    """
    if isinstance(exc, WeightsMissingError):
        print(f"maskseg: {exc}", file=sys.stderr, flush=True)
        return gr.Error(
            "That model's weights are not on this server and could not be downloaded; pick another "
            "model (the operator's terminal says where the file goes).", print_exception=False,
        )
    if isinstance(exc, CheckpointError):
        print(f"maskseg: {exc}", file=sys.stderr, flush=True)
        return gr.Error(
            "That checkpoint could not be loaded on this server; pick another model (the operator's "
            "terminal says why).", print_exception=False,
        )
    return gr.Error(str(exc), print_exception=False)


def table_frame(rows: list[list], columns: list[str] = TABLE_COLUMNS):
    """A DataFrame whose '#' cells carry their object's overlay colour, so rows match objects."""
    frame = pd.DataFrame(rows, columns=columns)
    if frame.empty:
        return frame
    id_col = columns.index("#")

    def paint(row):
        styles = [""] * len(row)
        styles[id_col] = f"background-color: {color_hex(int(row.iloc[id_col]))}; font-weight: bold"
        return styles

    formats = {"score": "{:.3f}", "x1": "{:.1f}", "y1": "{:.1f}", "x2": "{:.1f}", "y2": "{:.1f}", "area_pct": "{:.2f}"}
    return frame.style.apply(paint, axis=1).format({k: v for k, v in formats.items() if k in frame.columns})
