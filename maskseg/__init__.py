"""maskseg: Mask R-CNN instance segmentation as a library, a CLI and a web app.

The library's public names are importable from here (`from maskseg import Segmenter`); they are
loaded on first use, so `import maskseg` stays cheap and the CLI starts fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

from maskseg.errors import MaskSegError  # noqa: E402

# public name -> the engine module that defines it
_PUBLIC = {
    "Segmenter": "maskseg.engine.segmenter",
    "Prediction": "maskseg.engine.prediction",
    "Instance": "maskseg.engine.prediction",
    "load_image": "maskseg.engine.images",
    "RenderOptions": "maskseg.engine.render",
    "render_overlay": "maskseg.engine.render",
    "write_bundle": "maskseg.engine.export",
    "write_bundle_zip": "maskseg.engine.export",
    "write_batch_zip": "maskseg.engine.export",
    "cutout_rgba": "maskseg.engine.cutouts",
    "check_bundle": "maskseg.engine.verify",
    "segment_video": "maskseg.engine.video",
    "VideoSettings": "maskseg.engine.video",
    "IouTracker": "maskseg.engine.tracker",
}

__all__ = ["MaskSegError", "__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'maskseg' has no attribute {name!r}")
