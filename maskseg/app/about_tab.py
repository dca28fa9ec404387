"""The About tab: what maskseg is (the stages themselves are in the explorer tab), then the loaded model, device and versions."""

from __future__ import annotations

import platform
from importlib import metadata

import gradio as gr

from maskseg import __version__
from maskseg.app.config import AppConfig
from maskseg.app.model_menu import make_segmenter
from maskseg.errors import MaskSegError

ABOUT_TEXT = """
# About maskseg

maskseg finds every object in a photo with Mask R-CNN: *what it is*, *where it is* (a box) and
*which pixels belong to it* (a mask). To see **how** the network does that, stage by stage on your
own photo (the input resize, the feature pyramid, the anchors and proposals, RoIAlign, the box and
mask heads), open the **Inside Mask R-CNN** tab: each stage has a short explanation in plain words,
and *Lesson mode* steps through them one screen at a time for a projector.

The sliders in the Segment tab act on the last step only (which objects are shown and how their
masks are cut): that is why moving them is instant, while a new photo or model runs the network again.
"""


def accuracy_line(info: dict) -> str:
    """The model's AP in percent, with the data it was measured on."""
    box, mask = info.get("box_ap"), info.get("mask_ap")
    if box is None or mask is None:
        return "no measured accuracy stored with it"
    where = info.get("ap_measured_on") or "an unnamed dataset"
    return f"box AP **{float(box):.1f} %**, mask AP **{float(mask):.1f} %** (measured on {where})"


def about_markdown(model_value: str, config: AppConfig) -> str:
    """The method in plain words, then the loaded model, device and library versions."""
    try:
        loaded = make_segmenter(model_value, config).loaded
        info = loaded.info
        params = f"{info.get('num_params', 0) / 1e6:.1f} M parameters" if info.get("num_params") else ""
        size = f"{info.get('file_size_mb', 0):.1f} MB of weights" if info.get("file_size_mb") else ""
        model_lines = (
            f"- **{loaded.title}**: {accuracy_line(info)}; {', '.join(x for x in (params, size) if x)}\n"
            f"- Classes: {len(loaded.real_class_names)}\n- Device: **{loaded.device_name}**"
            f"\n- Runtime: **{loaded.runtime_name}**"
            + (f" ({', '.join(info['openvino_parts'])} in OpenVINO)" if info.get("openvino_parts") else "")
            + (f". {loaded.backend_note}" if loaded.backend_note else "")
        )
    except MaskSegError:
        model_lines = "- No model is loaded yet: pick one in the Segment tab."
    versions = []
    for package in ("torch", "torchvision", "openvino", "gradio", "numpy", "opencv-python-headless"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    return ABOUT_TEXT + f"""
## This app right now
{model_lines}
- maskseg {__version__}, Python {platform.python_version()}, {", ".join(versions)}
"""


def build_about_tab(config: AppConfig, default_model: str, model_ready: bool) -> gr.Markdown:
    """The About tab's text (inside the caller's gr.Tab); returned so a model change can refresh it."""
    text = about_markdown(default_model, config) if model_ready else ABOUT_TEXT
    return gr.Markdown(text, elem_id="about-text")
