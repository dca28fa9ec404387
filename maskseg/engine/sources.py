"""Inputs as images: files, folders and zips of images expanded into LoadedImages, with a reason for each skip."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from maskseg.engine.images import LoadedImage, load_image
from maskseg.errors import MaskSegError

MAX_ZIP_MEMBERS = 500

MAX_MEMBER_BYTES = 200 * 1024 * 1024

SKIP_NAMES = ("__MACOSX/", ".DS_Store", "Thumbs.db")

@dataclass
class BatchInputs:
    images: list[LoadedImage]
    skipped: list[tuple[str, str]]  # (file name, reason)

def collect_batch_images(paths: Sequence[str | Path], max_pixels: int) -> BatchInputs:
    """Read every upload (images, or zips of images); whatever is not an image is skipped with a reason."""
    images: list[LoadedImage] = []
    skipped: list[tuple[str, str]] = []
    for raw in paths:
        path = Path(raw)
        if zipfile.is_zipfile(path):
            _collect_from_zip(path, max_pixels, images, skipped)
            continue
        try:
            images.append(load_image(path, name=path.name, max_pixels=max_pixels))
        except MaskSegError as exc:
            skipped.append((path.name, str(exc)))
    return BatchInputs(images, skipped)

def _collect_from_zip(path: Path, max_pixels: int, images: list, skipped: list) -> None:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        skipped.append((path.name, f"{path.name} is not a readable zip ({exc})."))
        return
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir() and not any(s in m.filename for s in SKIP_NAMES)]
        if len(members) > MAX_ZIP_MEMBERS:
            skipped.append((path.name, f"{path.name} holds {len(members)} files; at most {MAX_ZIP_MEMBERS} are read."))
            members = members[:MAX_ZIP_MEMBERS]
        for member in members:
            name = f"{path.name}/{member.filename}"
            base = Path(member.filename).name
            if member.file_size > MAX_MEMBER_BYTES:
                skipped.append((name, f"{base} is {member.file_size / 1e6:.0f} MB unpacked; too large to read."))
                continue
            try:
                images.append(load_image(archive.read(member), name=base, max_pixels=max_pixels))
            except (MaskSegError, zipfile.BadZipFile, OSError, RuntimeError) as exc:
                reason = str(exc) if isinstance(exc, MaskSegError) else f"{base} could not be unpacked ({exc})."
                skipped.append((name, reason))
