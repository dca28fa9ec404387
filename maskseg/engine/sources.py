"""Inputs as images: files, folders and zips of images expanded into LoadedImages, with a reason for each skip."""

from __future__ import annotations

import csv
import glob
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from maskseg.engine.images import LoadedImage, is_image_path, load_image
from maskseg.errors import MaskSegError

MAX_ZIP_MEMBERS = 500

MAX_MEMBER_BYTES = 200 * 1024 * 1024

SKIP_NAMES = ("__MACOSX/", ".DS_Store", "Thumbs.db")

# What a damaged or unusual zip member raises while it is unpacked: bad CRC or header, a lying
# size, an encrypted member (RuntimeError), a compression method zipfile lacks, corrupt deflate data.
UNPACK_ERRORS = (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError, zlib.error)


@dataclass(frozen=True)
class Source:
    """One thing that may be an image: a file, or member number `index` of a zip file."""

    path: Path
    member: str | None = None  # the file's name inside the zip at `path`
    index: int = -1  # its position in the zip's directory (a zip may hold one name twice)

    @property
    def short_name(self) -> str:
        """The name a person sees in the app: file name, or zip name/member name."""
        return self.path.name if self.member is None else f"{self.path.name}/{self.member}"

    @property
    def stem(self) -> str:
        """The image's name without folders or extension, as its Prediction's image_stem will be."""
        return Path(self.member or self.path.name).stem or "image"

    @property
    def full_name(self) -> str:
        """The name the command line prints: the path as given, or zip path/member name."""
        return str(self.path) if self.member is None else f"{self.path}/{self.member}"


@dataclass
class BatchInputs:
    """What a batch upload held: the images read, and (name, reason) for each file skipped."""

    images: list[LoadedImage]
    skipped: list[tuple[str, str]]  # (file name, reason)


def is_zip_input(path: Path) -> bool:
    """Whether a file is read as a zip of images (a file named like an image is always read as one)."""
    return path.is_file() and not is_image_path(path) and zipfile.is_zipfile(path)


def expand_sources(
    paths: Iterable[str | Path], walk_folders: bool = False, max_members: int | None = MAX_ZIP_MEMBERS
) -> tuple[list[Source], list[tuple[Source, str]]]:
    """Files to try, in order, none decoded (zips as members, folders as image files); and inputs refused."""
    sources: list[Source] = []
    refused: list[tuple[Source, str]] = []
    for raw in paths:
        path = Path(raw)
        if walk_folders and path.is_dir():
            # Only image files: a zip or document lying in a folder is not expanded by surprise.
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_path(p))
            if not found:
                refused.append((Source(path), "folder holds no image files"))
            sources.extend(Source(p) for p in found)
        elif is_zip_input(path):
            _expand_zip(path, max_members, sources, refused)
        elif walk_folders and not path.exists():
            refused.append((Source(path), "does not exist"))
        else:
            sources.append(Source(path))  # load_image names whatever is wrong with it
    return sources, refused


MANIFEST_SUFFIXES = (".txt", ".csv")
# The column of a CSV manifest that names the image, in order of preference (else the first column).
MANIFEST_COLUMNS = ("path", "file", "file_name", "filename", "image", "image_path")


def expand_listings(inputs: Iterable[str | Path]) -> tuple[list[Path], list[tuple[Source, str]]]:
    """Command-line inputs with globs and manifests opened: a pattern ("photos/**/*.jpg", quoted so
    the shell leaves it alone) becomes its sorted matches, a .txt or .csv manifest the paths it lists
    (relative to the manifest's folder); anything else passes through. Also (input, reason) misses."""
    paths: list[Path] = []
    refused: list[tuple[Source, str]] = []
    for raw in inputs:
        text = str(raw)
        path = Path(text)
        if not path.exists() and glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not found:
                refused.append((Source(path), "no files match this pattern"))
            paths.extend(found)
        elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            paths.extend(_manifest_paths(path, refused))
        else:
            paths.append(path)
    return paths, refused


def _manifest_paths(manifest: Path, refused: list[tuple[Source, str]]) -> list[Path]:
    """The paths a manifest lists: one per line (.txt, '#' comments), or a CSV column with a header."""
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        refused.append((Source(manifest), f"{manifest.name} is not a readable text manifest ({exc})."))
        return []
    if manifest.suffix.lower() == ".csv":
        rows = list(csv.reader(text.splitlines()))
        header = [cell.strip().lower() for cell in rows[0]] if rows else []
        column = next((header.index(name) for name in MANIFEST_COLUMNS if name in header), 0)
        names = [row[column] for row in rows[1:] if len(row) > column]
    else:
        names = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    names = [name.strip() for name in names if name.strip()]
    if not names:
        refused.append((Source(manifest), f"{manifest.name} lists no image paths."))
    return [manifest.parent / name for name in names]  # an absolute name stays absolute


def _expand_zip(path: Path, max_members: int | None, sources: list, refused: list) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            entries = list(enumerate(archive.infolist()))
    except (zipfile.BadZipFile, OSError) as exc:
        refused.append((Source(path), f"{path.name} is not a readable zip ({exc})."))
        return
    members = [(i, m) for i, m in entries if not m.is_dir() and not any(s in m.filename for s in SKIP_NAMES)]
    if max_members is not None and len(members) > max_members:
        refused.append((Source(path), f"{path.name} holds {len(members)} files; at most {max_members} are read."))
        members = members[:max_members]
    for index, member in members:
        source = Source(path, member.filename, index)
        if member.file_size > MAX_MEMBER_BYTES:
            base = Path(member.filename).name
            refused.append((source, f"{base} is {member.file_size / 1e6:.0f} MB unpacked; too large to read."))
        else:
            sources.append(source)


def read_sources(sources: Iterable[Source], max_pixels: int) -> Iterator[tuple[Source, LoadedImage | None, str]]:
    """(source, image, "") or (source, None, reason) per source, decoding one image per step."""
    archive: zipfile.ZipFile | None = None
    archive_path: Path | None = None
    reason = ""
    try:
        for source in sources:
            if source.member is None:
                try:
                    yield source, load_image(source.path, name=source.path.name, max_pixels=max_pixels), ""
                except MaskSegError as exc:
                    yield source, None, str(exc)
                continue
            # Keep a zip open while its members follow each other, so each zip is opened once.
            if archive_path != source.path:
                if archive is not None:
                    archive.close()
                archive, archive_path = None, source.path
                try:
                    archive = zipfile.ZipFile(source.path)
                except UNPACK_ERRORS as exc:  # changed or removed since it was listed
                    reason = f"{source.path.name} is not a readable zip ({exc})."
            if archive is None:
                yield source, None, reason
            else:
                yield source, *_read_member(archive, source, max_pixels)
    finally:
        if archive is not None:
            archive.close()


def _read_member(archive: zipfile.ZipFile, source: Source, max_pixels: int) -> tuple[LoadedImage | None, str]:
    base = Path(source.member or "").name
    try:
        return load_image(archive.read(archive.infolist()[source.index]), name=base, max_pixels=max_pixels), ""
    except MaskSegError as exc:
        return None, str(exc)
    except (*UNPACK_ERRORS, IndexError) as exc:  # IndexError: the zip changed since it was listed
        return None, f"{base} could not be unpacked ({exc})."


def collect_batch_images(paths: Sequence[str | Path], max_pixels: int) -> BatchInputs:
    """Read every upload (images, or zips of images); whatever is not an image is skipped with a reason."""
    sources, refused = expand_sources(paths)
    images: list[LoadedImage] = []
    skipped = [(source.short_name, reason) for source, reason in refused]
    for source, image, reason in read_sources(sources, max_pixels):
        if image is None:
            skipped.append((source.short_name, reason))
        else:
            images.append(image)
    return BatchInputs(images, skipped)
