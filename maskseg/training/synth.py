"""Synthetic shapes in COCO format: a seeded, byte-reproducible dataset for training and tests."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pycocotools import mask as mask_utils

from maskseg.errors import MaskSegError

SHAPE_CLASSES: tuple[str, ...] = ("circle", "rectangle", "triangle", "star", "cross")
MIN_VISIBLE_FRACTION = 0.45  # shapes hidden more than this are dropped: no one could label them
MIN_VISIBLE_PIXELS = 40


@dataclass(frozen=True)
class SynthOptions:
    """How many images, how large, and how busy each one is."""

    num_images: int = 100
    seed: int = 0
    size: int = 256
    min_objects: int = 1
    max_objects: int = 6


@dataclass
class SynthInstance:
    """One visible shape: its class index (1-based), visible mask and pixel area."""

    category_id: int
    mask: np.ndarray  # HxW bool, after occlusion by shapes drawn later


def _shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float, aspect: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape centred at (cx, cy) with outer radius r, rotated by angle."""
    if kind == "rectangle":
        half_w, half_h = r, r * aspect
        pts = [(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)]
    elif kind == "triangle":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif kind == "star":
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * 0.45
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    elif kind == "cross":
        t = r * 0.36  # half the arm width
        pts = [(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t), (-r, -t), (-t, -t)]
    else:
        raise ValueError(kind)
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    return [(cx + x * cos_a - y * sin_a, cy + x * sin_a + y * cos_a) for x, y in pts]


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A textured or noisy background so the model cannot just threshold on flat colour."""
    kind = rng.integers(0, 4)
    base = rng.integers(0, 256, size=3).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:  # linear gradient between two colours plus noise
        other = rng.integers(0, 256, size=3).astype(np.float32)
        t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1))[..., None]
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
        img = base * (1 - t) + other * t
    elif kind == 1:  # stripes
        freq = rng.uniform(4, 16)
        angle = rng.uniform(0, math.pi)
        wave = np.sin(2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle)))[..., None]
        img = base + wave * rng.uniform(15, 45)
    elif kind == 2:  # blurred blobs (low-frequency texture)
        coarse = rng.integers(0, 256, size=(8, 8, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR), dtype=np.float32)
        img = img * 0.5 + base * 0.5
    else:  # flat colour with strong noise
        img = np.broadcast_to(base, (size, size, 3)).copy()
    img = img + rng.normal(0, rng.uniform(4, 20), size=(size, size, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _shape_colour(rng: np.random.Generator, background: np.ndarray, cx: int, cy: int) -> tuple[int, int, int]:
    """A random colour that differs visibly from the background under the shape's centre."""
    under = background[cy, cx].astype(np.int32)
    for _ in range(20):
        colour = rng.integers(0, 256, size=3)
        if np.abs(colour - under).sum() > 120:
            break
    return int(colour[0]), int(colour[1]), int(colour[2])


def render_image(rng: np.random.Generator, options: SynthOptions) -> tuple[Image.Image, list[SynthInstance]]:
    """Draw one image: background, then shapes in order; later shapes occlude earlier ones."""
    size = options.size
    image = _background(rng, size)
    bg_pixels = np.asarray(image)
    draw = ImageDraw.Draw(image)
    count = int(rng.integers(options.min_objects, options.max_objects + 1))
    drawn: list[tuple[int, np.ndarray, int]] = []  # (category, visible mask, unoccluded area)
    for _ in range(count):
        class_index = int(rng.integers(0, len(SHAPE_CLASSES)))
        kind = SHAPE_CLASSES[class_index]
        # log-uniform radius: many small shapes, some large ones
        radius = float(math.exp(rng.uniform(math.log(size * 0.05), math.log(size * 0.25))))
        cx = float(rng.uniform(radius * 0.6, size - radius * 0.6))
        cy = float(rng.uniform(radius * 0.6, size - radius * 0.6))
        angle = float(rng.uniform(0, 2 * math.pi))
        aspect = float(rng.uniform(0.45, 1.0))
        colour = _shape_colour(rng, bg_pixels, min(int(cx), size - 1), min(int(cy), size - 1))
        shape_mask = Image.new("L", (size, size), 0)
        mask_draw = ImageDraw.Draw(shape_mask)
        if kind == "circle":
            box = [cx - radius, cy - radius, cx + radius, cy + radius]
            draw.ellipse(box, fill=colour)
            mask_draw.ellipse(box, fill=255)
        else:
            poly = _shape_polygon(kind, cx, cy, radius, angle, aspect)
            draw.polygon(poly, fill=colour)
            mask_draw.polygon(poly, fill=255)
        full = np.asarray(shape_mask) > 0
        for _, earlier, _ in drawn:
            earlier &= ~full  # the new shape hides what it covers
        drawn.append((class_index + 1, full.copy(), int(full.sum())))
    # a light blur softens the hard polygon edges like a camera would; masks stay binary
    if rng.uniform() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.0))))
    instances = []
    for category_id, mask, full_area in drawn:
        visible = int(mask.sum())
        if visible >= MIN_VISIBLE_PIXELS and visible >= MIN_VISIBLE_FRACTION * full_area:
            instances.append(SynthInstance(category_id, mask))
    return image, instances


def encode_mask(mask: np.ndarray) -> dict:
    """COCO compressed RLE with `counts` as str (json-serialisable)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def generate_dataset(out_dir: str | Path, options: SynthOptions) -> Path:
    """Write images/*.png and annotations.json; the same options always give the same bytes."""
    if options.num_images < 1:
        raise MaskSegError("--num must be at least 1.")
    if options.size < 64:
        raise MaskSegError("--size must be at least 64 pixels.")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(options.num_images):
        # one generator per image, keyed by (seed, index): image k is the same whatever --num is
        rng = np.random.default_rng([options.seed, index])
        image, instances = render_image(rng, options)
        file_name = f"shape_{options.seed}_{index:05d}.png"
        image.save(out / "images" / file_name, format="PNG", optimize=False)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": options.size, "height": options.size})
        for inst in instances:
            ys, xs = np.nonzero(inst.mask)
            x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": inst.category_id,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": int(inst.mask.sum()),
                    "iscrowd": 0,
                    "segmentation": encode_mask(inst.mask),
                }
            )
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPE_CLASSES)]
    coco = {
        "info": {"description": "maskseg synthetic shapes", "seed": options.seed, "size": options.size},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    (out / "annotations.json").write_text(json.dumps(coco, separators=(",", ":")))
    return out


def _run(args: argparse.Namespace) -> int:
    options = SynthOptions(num_images=args.num, seed=args.seed, size=args.size)
    out = generate_dataset(args.out, options)
    print(f"wrote {options.num_images} images of {options.size}px to {out} (seed {options.seed})")
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register `maskseg synth`."""
    parser = subparsers.add_parser("synth", help="write a synthetic COCO-format shapes dataset")
    parser.add_argument("--out", required=True, help="output folder (images/ and annotations.json)")
    parser.add_argument("--num", type=int, default=100, help="number of images (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.set_defaults(handler=_run)
