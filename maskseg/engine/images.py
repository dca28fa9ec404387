"""Turn anything a person calls an image (path, bytes, PIL image, array) into an RGB uint8 array."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from maskseg.errors import ImageLoadError

DEFAULT_MAX_PIXELS = 40_000_000
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".jfif"}

ImageSource = Union[str, Path, bytes, bytearray, Image.Image, np.ndarray, "LoadedImage"]


@dataclass
class LoadedImage:
    """An image ready for the model: H×W×3 uint8 RGB pixels and a name for messages and exports."""

    pixels: np.ndarray
    name: str

    @property
    def stem(self) -> str:
        """The name without its extension: the bundle folder name."""
        return Path(self.name).stem or "image"

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def load_image(
    source: ImageSource, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> LoadedImage:
    """Read `source` as an upright RGB image, or raise ImageLoadError with one clear sentence."""
    if isinstance(source, LoadedImage):
        return source
    if isinstance(source, np.ndarray):
        label = name or "array"
        _check_pixel_count(source.shape[1] if source.ndim >= 2 else 0, source.shape[0], label, max_pixels)
        return LoadedImage(array_to_rgb(source, label), label)
    if isinstance(source, Image.Image):
        label = name or getattr(source, "filename", "") or "image"
        return LoadedImage(_pil_to_rgb(source, Path(label).name, max_pixels), Path(label).name)
    if isinstance(source, (bytes, bytearray)):
        label = name or "upload"
        if len(source) == 0:
            raise ImageLoadError(f"{label} is empty (0 bytes), so it is not an image.")
        return LoadedImage(_open_and_convert(io.BytesIO(source), label, max_pixels), label)
    if isinstance(source, (str, Path)):
        path = Path(source)
        label = name or path.name
        if not path.exists():
            raise ImageLoadError(f"{path} does not exist.")
        if path.is_dir():
            raise ImageLoadError(f"{path} is a folder, not an image file.")
        if path.stat().st_size == 0:
            raise ImageLoadError(f"{label} is empty (0 bytes), so it is not an image.")
        with open(path, "rb") as handle:
            return LoadedImage(_open_and_convert(handle, label, max_pixels), label)
    raise ImageLoadError(f"Cannot read an image from a {type(source).__name__}.")


def _check_pixel_count(width: int, height: int, label: str, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageLoadError(
            f"{label} is {width}×{height} ({width * height / 1e6:.1f} megapixels), over the "
            f"{max_pixels / 1e6:.0f}-megapixel limit; shrink it or raise the limit (--max-pixels)."
        )
    if width == 0 or height == 0:
        raise ImageLoadError(f"{label} has no pixels ({width}×{height}).")


def _open_and_convert(handle: Any, label: str, max_pixels: int) -> np.ndarray:
    # Our own configurable limit is checked on the header, before a pixel is decoded; Pillow's
    # global guard stays as it is (changing it would race between threads) and only speaks for
    # images past twice its own limit, which are over ours too unless the limit was raised.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(handle)
        except Image.DecompressionBombError:
            raise ImageLoadError(
                f"{label} is larger than Pillow will open ({2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels); "
                "shrink it first."
            ) from None
        except UnidentifiedImageError:
            raise ImageLoadError(f"{label} is not an image file Pillow can read.") from None
        except OSError as exc:
            raise ImageLoadError(f"{label} could not be opened as an image ({exc}).") from None
        return _pil_to_rgb(image, label, max_pixels)


def _pil_to_rgb(image: Image.Image, label: str, max_pixels: int) -> np.ndarray:
    _check_pixel_count(image.width, image.height, label, max_pixels)
    try:
        if getattr(image, "is_animated", False):
            image.seek(0)  # an animated GIF/WebP/APNG gives its first frame
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError) as exc:
        # Truncated and corrupt files surface here, when pixels are first decoded.
        raise ImageLoadError(f"{label} is damaged or truncated and cannot be decoded ({exc}).") from None
    return pil_to_rgb_array(image)


def pil_to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any Pillow mode (1, L, P, RGBA, LA, I;16, I, F, CMYK, YCbCr...) as H×W×3 uint8 RGB."""
    mode = image.mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        # Composite on white: transparent areas of logos and cut-outs should not turn black.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode.startswith("I;16"):
        # 16-bit grayscale: scale the full 0..65535 range, not clip at 255 as convert("RGB") does.
        return array_to_rgb(np.asarray(image).astype(np.float32) / 65535.0, "image")
    if mode.startswith("I") or mode == "F":
        return array_to_rgb(np.asarray(image), "image")
    if mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def array_to_rgb(array: np.ndarray, label: str = "array") -> np.ndarray:
    """H×W, H×W×1, H×W×3 or H×W×4 arrays of uint8, 16-bit ints, or floats as H×W×3 uint8 RGB."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ImageLoadError(f"{label} has shape {array.shape}; expected H×W, H×W×3 or H×W×4.")
    if array.shape[2] == 4:
        full = _full_scale(array)
        alpha = array[:, :, 3:4].astype(np.float32) / full
        rgb = array[:, :, :3].astype(np.float32) / full
        array = rgb * alpha + (1.0 - alpha)  # composite on white, in 0..1
    return np.ascontiguousarray(_to_uint8(array))


def _full_scale(array: np.ndarray) -> float:
    if array.dtype == np.uint8:
        return 255.0
    if np.issubdtype(array.dtype, np.integer):
        return 65535.0 if array.max(initial=0) > 255 else 255.0
    return 1.0 if array.max(initial=0) <= 1.0 else 255.0


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    scale = 255.0 / _full_scale(array)
    return np.clip(np.rint(array.astype(np.float32) * scale), 0, 255).astype(np.uint8)


def is_image_path(path: Path) -> bool:
    """Whether a file name looks like an image we would try to read when walking a folder."""
    return path.suffix.lower() in IMAGE_SUFFIXES
