"""The About tab: how Mask R-CNN works in plain words, then the loaded model, device and versions."""

from __future__ import annotations

import platform
from importlib import metadata

import gradio as gr

from maskseg import __version__
from maskseg.app.config import AppConfig
from maskseg.app.model_menu import make_segmenter
from maskseg.errors import MaskSegError

ABOUT_TEXT = """
# How Mask R-CNN finds objects

Mask R-CNN answers three questions for every object in a photo: *what is it*, *where is it*
(a box) and *which pixels belong to it* (a mask). It does this in stages:

1. **Backbone and FPN.** A ResNet-50 network turns the photo into feature maps: grids of numbers
   that describe edges, textures and parts. The *Feature Pyramid Network* combines them at several
   scales, so small and large objects are both described well.
2. **Region proposals.** The *Region Proposal Network* slides over the feature maps and suggests
   about a thousand boxes that might contain *something*, without yet saying what.
3. **RoIAlign.** Each proposed box is cut out of the feature maps and resampled to a small fixed
   grid (7×7 for boxes, 14×14 for masks), with careful interpolation so the cut-out lines up
   with the real pixels.
4. **Box and class head.** A small network looks at each cut-out and says which class it is
   (person, dog, car, ... or background) with a confidence *score*, and nudges the box to fit.
5. **Mask head.** Another small network paints a 28×28 mask inside each kept box: the
   probability that each spot belongs to the object.
6. **Post-processing.** Overlapping boxes of the same class are merged (*non-maximum
   suppression*), boxes below the **score threshold** are dropped, and each 28×28 mask is resized
   to its box in the full photo and cut at the **mask threshold** to give the final pixels.

The sliders in the Segment tab act on step 6 only: that is why moving them is instant, while a
new photo or model runs all six steps again.
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
