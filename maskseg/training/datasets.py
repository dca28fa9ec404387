"""Instance-segmentation datasets: COCO json, COCO panoptic, YOLO-seg polygons, mask-PNG folders."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision import tv_tensors
from torchvision.transforms import v2

from maskseg.errors import MaskSegError

BACKGROUND = "__background__"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
FORMATS = ("auto", "coco", "panoptic", "yolo", "masks")

# The contiguous COCO-80 order YOLO-seg label files use (Ultralytics coco128-seg), used when a
# YOLO dataset ships no yaml with its class names.
COCO80_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)


@dataclass
class ImageRecord:
    """One image of a dataset and where its annotations live (format-specific `source`)."""

    image_id: int
    path: Path
    file_name: str
    width: int
    height: int
    source: Any = None


@dataclass
class Instances:
    """Ground truth of one image: masks (N,H,W bool), labels (index into class_names), crowd flags."""

    masks: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def boxes(self) -> np.ndarray:
        """Tight xyxy boxes around each mask (exclusive right/bottom edge, like COCO)."""
        out = np.zeros((len(self.masks), 4), dtype=np.float32)
        for i, mask in enumerate(self.masks):
            ys, xs = np.nonzero(mask)
            if len(xs):
                out[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        return out


def _empty_instances(height: int, width: int) -> Instances:
    return Instances(np.zeros((0, height, width), bool), np.zeros(0, np.int64), np.zeros(0, np.int64))


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, RLE or compressed RLE) as an HxW bool mask."""
    if isinstance(segmentation, list):  # polygons
        polys = [p for p in segmentation if len(p) >= 6]
        if not polys:
            return np.zeros((height, width), bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    return mask_utils.decode(rle).astype(bool)


class InstanceDataset(torch.utils.data.Dataset):
    """Images with instance masks; `class_names[0]` is background and labels index this list."""

    format_name = "base"

    def __init__(self, records: list[ImageRecord], class_names: list[str], root: Path) -> None:
        self.records = records
        self.class_names = class_names
        self.root = root
        self.transforms: Callable | None = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        """Classes including background: the count the network's predictors need."""
        return len(self.class_names)

    def load_instances(self, index: int) -> Instances:
        """The ground truth of image `index` at its full resolution."""
        raise NotImplementedError

    def load_image(self, index: int) -> np.ndarray:
        """HxWx3 uint8 RGB pixels of image `index`."""
        record = self.records[index]
        try:
            with Image.open(record.path) as img:
                return np.array(img.convert("RGB"))  # a writable copy: torch refuses read-only arrays
        except OSError as exc:
            raise MaskSegError(f"Image {record.path} could not be read ({exc}).") from exc

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(float image CxHxW in [0,1], torchvision detection target) with crowd regions dropped."""
        pixels = self.load_image(index)
        inst = self.load_instances(index)
        keep = inst.iscrowd == 0  # torchvision's Mask R-CNN cannot learn from crowd regions
        height, width = pixels.shape[:2]
        image = tv_tensors.Image(torch.from_numpy(pixels).permute(2, 0, 1).contiguous())
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(inst.boxes[keep]).reshape(-1, 4), format="XYXY", canvas_size=(height, width)
            ),
            "masks": tv_tensors.Mask(torch.from_numpy(inst.masks[keep]).to(torch.uint8)),
            "labels": torch.from_numpy(inst.labels[keep]).to(torch.int64),
        }
        transform = self.transforms or default_transforms(train=False)
        image, target = transform(image, target)
        target["image_id"] = torch.tensor(self.records[index].image_id)
        return image, {k: (v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v) for k, v in target.items()}

    def to_coco(self) -> dict[str, Any]:
        """The ground truth as a COCO instances dict (category id = label index) for COCOeval."""
        images, annotations = [], []
        for index, record in enumerate(self.records):
            images.append({"id": record.image_id, "file_name": record.file_name, "width": record.width, "height": record.height})
            inst = self.load_instances(index)
            boxes = inst.boxes
            for mask, label, crowd, box in zip(inst.masks, inst.labels, inst.iscrowd, boxes):
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                x1, y1, x2, y2 = (float(v) for v in box)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": record.image_id,
                        "category_id": int(label),
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": float(mask.sum()),
                        "iscrowd": int(crowd),
                        "segmentation": rle,
                    }
                )
        categories = [{"id": i, "name": name} for i, name in enumerate(self.class_names) if i > 0]
        return {"images": images, "annotations": annotations, "categories": categories}


def _find_image(folders: list[Path], file_name: str) -> Path | None:
    for folder in folders:
        candidate = folder / file_name
        if candidate.is_file():
            return candidate
    return None


class CocoDataset(InstanceDataset):
    """A COCO instances json (polygons or RLE) with its image folder."""

    format_name = "coco"

    def __init__(self, json_path: Path, image_dir: Path | None = None) -> None:
        data = _read_json(json_path)
        if "annotations" not in data or "images" not in data:
            raise MaskSegError(f"{json_path} is not a COCO instances file (it needs 'images' and 'annotations').")
        categories = sorted(data.get("categories", []), key=lambda c: c["id"])
        self.category_to_label = {c["id"]: i + 1 for i, c in enumerate(categories)}
        class_names = [BACKGROUND] + [c["name"] for c in categories]
        folders = [image_dir] if image_dir else [json_path.parent / "images", json_path.parent, json_path.parent.parent / "images"]
        by_image: dict[int, list[dict]] = {}
        for ann in data["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        records = []
        for img in data["images"]:
            path = _find_image(folders, img["file_name"])
            if path is None:
                raise MaskSegError(f"Image {img['file_name']} listed in {json_path} is not in {folders[0]}.")
            records.append(ImageRecord(img["id"], path, Path(img["file_name"]).name, img["width"], img["height"], by_image.get(img["id"], [])))
        super().__init__(records, class_names, json_path.parent)

    def load_instances(self, index: int) -> Instances:
        record = self.records[index]
        anns = [a for a in record.source if a["category_id"] in self.category_to_label and a.get("segmentation")]
        if not anns:
            return _empty_instances(record.height, record.width)
        masks = np.stack([decode_segmentation(a["segmentation"], record.height, record.width) for a in anns])
        labels = np.array([self.category_to_label[a["category_id"]] for a in anns], np.int64)
        crowd = np.array([int(a.get("iscrowd", 0)) for a in anns], np.int64)
        return Instances(masks, labels, crowd)


class PanopticDataset(InstanceDataset):
    """COCO panoptic: json + PNG id maps; only thing classes become instances, crowd kept as flags."""

    format_name = "panoptic"

    def __init__(self, json_path: Path, image_dir: Path | None = None, mask_dir: Path | None = None) -> None:
        data = _read_json(json_path)
        if not data.get("annotations") or "segments_info" not in data["annotations"][0]:
            raise MaskSegError(f"{json_path} is not a COCO panoptic file (no 'segments_info').")
        things = sorted((c for c in data["categories"] if c.get("isthing", 1)), key=lambda c: c["id"])
        self.category_to_label = {c["id"]: i + 1 for i, c in enumerate(things)}
        class_names = [BACKGROUND] + [c["name"] for c in things]
        mask_folders = [mask_dir] if mask_dir else [json_path.parent / "masks", json_path.parent / json_path.stem]
        image_folders = [image_dir] if image_dir else [json_path.parent.parent / "images", json_path.parent / "images", json_path.parent]
        images = {img["id"]: img for img in data["images"]}
        records = []
        for ann in data["annotations"]:
            img = images[ann["image_id"]]
            path = _find_image(image_folders, img["file_name"])
            mask_path = _find_image(mask_folders, ann["file_name"])
            if path is None or mask_path is None:
                missing = img["file_name"] if path is None else ann["file_name"]
                raise MaskSegError(f"{missing} named in {json_path} was not found next to it.")
            records.append(ImageRecord(img["id"], path, Path(img["file_name"]).name, img["width"], img["height"], (mask_path, ann["segments_info"])))
        super().__init__(records, class_names, json_path.parent)

    def load_instances(self, index: int) -> Instances:
        record = self.records[index]
        mask_path, segments = record.source
        segments = [s for s in segments if s["category_id"] in self.category_to_label]
        if not segments:
            return _empty_instances(record.height, record.width)
        rgb = np.asarray(Image.open(mask_path).convert("RGB"), dtype=np.uint32)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]  # COCO panoptic id encoding
        masks = np.stack([ids == s["id"] for s in segments])
        labels = np.array([self.category_to_label[s["category_id"]] for s in segments], np.int64)
        crowd = np.array([int(s.get("iscrowd", 0)) for s in segments], np.int64)
        return Instances(masks, labels, crowd)


def _parse_names_yaml(path: Path) -> dict[int, str]:
    """Class ids -> names from a YOLO data yaml (`names:` as a list or an id mapping)."""
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    names = data.get("names")
    if isinstance(names, list):
        return dict(enumerate(str(n) for n in names))
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    raise MaskSegError(f"{path} has no 'names' list or mapping.")


class YoloSegDataset(InstanceDataset):
    """YOLO-seg: images/…/x.jpg with labels/…/x.txt lines `class x1 y1 x2 y2 …` (normalised)."""

    format_name = "yolo"

    def __init__(self, root: Path, names: dict[int, str] | None = None) -> None:
        if names is None:
            yamls = sorted(root.glob("*.yaml")) + sorted(root.glob("*.yml"))
            names = _parse_names_yaml(yamls[0]) if yamls else dict(enumerate(COCO80_NAMES))
        ids = sorted(names)
        self.id_to_label = {cid: i + 1 for i, cid in enumerate(ids)}
        class_names = [BACKGROUND] + [names[cid] for cid in ids]
        image_root = root / "images"
        image_paths = sorted(p for p in image_root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not image_paths:
            raise MaskSegError(f"No images under {image_root}.")
        records = []
        for index, path in enumerate(image_paths):
            label_path = (root / "labels" / path.relative_to(image_root)).with_suffix(".txt")
            with Image.open(path) as img:
                width, height = img.size
            records.append(ImageRecord(index + 1, path, path.name, width, height, label_path))
        super().__init__(records, class_names, root)

    def read_polygons(self, index: int) -> list[tuple[int, np.ndarray]]:
        """(class id, polygon as Kx2 pixel coordinates) per label line."""
        record = self.records[index]
        if not record.source.is_file():
            return []  # YOLO convention: an image without a label file is pure background
        polygons = []
        for line_no, line in enumerate(record.source.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 7 or len(parts) % 2 == 0:
                raise MaskSegError(f"{record.source}:{line_no} is not a YOLO-seg polygon line.")
            class_id = int(parts[0])
            if class_id not in self.id_to_label:
                raise MaskSegError(f"{record.source}:{line_no} uses class {class_id}, which has no name.")
            xy = np.array(parts[1:], dtype=np.float64).reshape(-1, 2) * (record.width, record.height)
            polygons.append((class_id, xy))
        return polygons

    def load_instances(self, index: int) -> Instances:
        record = self.records[index]
        polygons = self.read_polygons(index)
        if not polygons:
            return _empty_instances(record.height, record.width)
        masks = np.stack([decode_segmentation([xy.ravel().tolist()], record.height, record.width) for _, xy in polygons])
        labels = np.array([self.id_to_label[c] for c, _ in polygons], np.int64)
        return Instances(masks, labels, np.zeros(len(polygons), np.int64))


class MaskFolderDataset(InstanceDataset):
    """images/x.* with masks/x.png instance-id maps (0 = background); classes from masks/x.json."""

    format_name = "masks"

    def __init__(self, root: Path) -> None:
        image_paths = sorted(p for p in (root / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        names: set[str] = set()
        records = []
        for index, path in enumerate(image_paths):
            mask_path = root / "masks" / (path.stem + ".png")
            if not mask_path.is_file():
                raise MaskSegError(f"{path.name} has no instance mask {mask_path}.")
            sidecar = mask_path.with_suffix(".json")
            classes = {int(k): str(v) for k, v in json.loads(sidecar.read_text()).items()} if sidecar.is_file() else {}
            names.update(classes.values())
            with Image.open(path) as img:
                width, height = img.size
            records.append(ImageRecord(index + 1, path, path.name, width, height, (mask_path, classes)))
        classes_file = root / "classes.txt"
        if classes_file.is_file():
            ordered = [line.strip() for line in classes_file.read_text().splitlines() if line.strip()]
        else:
            ordered = sorted(names) or ["object"]
        super().__init__(records, [BACKGROUND, *ordered], root)

    def load_instances(self, index: int) -> Instances:
        record = self.records[index]
        mask_path, classes = record.source
        ids = np.asarray(Image.open(mask_path))
        if ids.ndim == 3:  # an RGB id map: same encoding as COCO panoptic
            ids = ids[..., 0].astype(np.uint32) + 256 * ids[..., 1] + 65536 * ids[..., 2].astype(np.uint32)
        instance_ids = [int(v) for v in np.unique(ids) if v != 0]
        if not instance_ids:
            return _empty_instances(record.height, record.width)
        masks = np.stack([ids == v for v in instance_ids])
        default = self.class_names[1]
        labels = np.array([self.class_names.index(classes.get(v, default)) for v in instance_ids], np.int64)
        return Instances(masks, labels, np.zeros(len(instance_ids), np.int64))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MaskSegError(f"{path} could not be read as json ({exc}).") from exc


def detect_format(path: Path) -> str:
    """Guess the dataset format from what is on disk."""
    if path.is_file() and path.suffix == ".json":
        head = _read_json(path)
        anns = head.get("annotations") or [{}]
        return "panoptic" if "segments_info" in anns[0] else "coco"
    if (path / "annotations.json").is_file():
        return "coco"
    if (path / "panoptic").is_dir() and any((path / "panoptic").glob("*.json")):
        return "panoptic"
    if (path / "labels").is_dir() and (path / "images").is_dir():
        return "yolo"
    if (path / "masks").is_dir() and (path / "images").is_dir():
        return "masks"
    raise MaskSegError(
        f"{path} is not a dataset maskseg can read: expected a COCO json, annotations.json, "
        "panoptic/*.json, labels/ + images/ (YOLO-seg) or masks/ + images/."
    )


def open_dataset(path: str | Path, format: str = "auto") -> InstanceDataset:
    """Open any supported dataset; `format` is one of FORMATS ('auto' looks at the files)."""
    path = Path(path)
    if not path.exists():
        raise MaskSegError(f"Dataset {path} does not exist.")
    if format not in FORMATS:
        raise MaskSegError(f"Unknown dataset format '{format}'; choose one of {', '.join(FORMATS)}.")
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "coco":
        return CocoDataset(path if path.is_file() else path / "annotations.json")
    if fmt == "panoptic":
        json_path = path if path.is_file() else sorted((path / "panoptic").glob("*.json"))[0]
        return PanopticDataset(json_path)
    if fmt == "yolo":
        return YoloSegDataset(path)
    return MaskFolderDataset(path)


def default_transforms(train: bool, max_side: int | None = None, vertical_flip: bool = False) -> v2.Compose:
    """transforms.v2 pipeline: boxes and masks move with the image; float output in [0, 1]."""
    steps: list[Any] = []
    if max_side:
        steps.append(v2.Resize(size=None, max_size=max_side, antialias=True))
    if train:
        steps.append(v2.RandomHorizontalFlip(0.5))
        if vertical_flip:  # fine for shapes, wrong for photos (people are not upside down)
            steps.append(v2.RandomVerticalFlip(0.5))
        steps.append(v2.RandomApply([v2.ColorJitter(0.3, 0.3, 0.3, 0.05)], p=0.5))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.SanitizeBoundingBoxes(min_size=2)]
    return v2.Compose(steps)


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Detection batches are lists: images differ in size and object count."""
    images, targets = zip(*batch)
    return list(images), list(targets)
