"""maskseg: Mask R-CNN instance segmentation as a library, a CLI and a web app."""

__version__ = "0.1.0"

from maskseg.errors import MaskSegError  # noqa: E402

__all__ = ["MaskSegError", "__version__"]
