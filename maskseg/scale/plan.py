"""What a Ray job must do: the settings every actor uses, and which inputs a rerun can skip."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from maskseg.engine.export import FolderNamer
from maskseg.engine.images import DEFAULT_MAX_PIXELS
from maskseg.engine.sources import Source
from maskseg.scale.journal import Entry, bundle_is_complete

FORMATS = ("bundles", "coco")


@dataclass(frozen=True)
class JobSettings:
    """Everything an actor needs to give the local engine's answer; plain values, so Ray can ship it."""

    out: str
    model: str = "auto"
    checkpoint: str | None = None
    device: str = "auto"
    backend: str = "auto"
    precision: str = "fp32"
    max_pixels: int = DEFAULT_MAX_PIXELS
    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    classes: tuple[str, ...] = ()
    max_detections: int = 100
    batch_size: int = 2
    opacity: float = 0.5
    layers: tuple[bool, bool, bool, bool] = (True, True, True, True)  # masks, contours, boxes, labels
    output_format: str = "bundles"

    def key(self) -> str:
        """A short fingerprint of what decides the files (not where they go, nor the batch size, which
        never changes an answer): a rerun skips only work done with the same settings."""
        decisive = {k: v for k, v in asdict(self).items() if k not in ("out", "batch_size")}
        return hashlib.sha1(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class Plan:
    """The inputs to run (one row each, with its bundle folder), what is already done, what failed."""

    rows: list[dict] = field(default_factory=list)
    done: list[Entry] = field(default_factory=list)  # done earlier with the same settings: skipped
    known_failures: list[Entry] = field(default_factory=list)  # failed earlier and unchanged since
    order: dict[str, int] = field(default_factory=dict)  # input name -> position among the inputs


def signature(source: Source) -> str:
    """Size and modification time of the file (or zip) behind an input: a changed file is tried again."""
    try:
        stat = os.stat(source.path)
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def make_plan(sources: Sequence[Source], earlier: dict[str, Entry], settings: JobSettings) -> Plan:
    """Rows for the inputs not yet done. Bundle folders are named in input order, as the local
    engine names them; a rerun keeps every name the journal already gave out."""
    plan = Plan(order={source.full_name: index for index, source in enumerate(sources)})
    namer = FolderNamer()
    for entry in earlier.values():
        if entry.folder:
            namer.name(entry.folder)  # reserved: a new input never takes an earlier one's folder
    key, out = settings.key(), Path(settings.out)
    for index, source in enumerate(sources):
        entry = earlier.get(source.full_name)
        stamp = signature(source)
        if entry is not None and entry.settings == key:
            if entry.status == "done" and _still_there(entry, out, settings.output_format):
                plan.done.append(entry)
                continue
            if entry.status == "failed" and entry.signature == stamp:
                plan.known_failures.append(entry)
                continue
        folder = entry.folder if entry is not None and entry.folder else namer.name(source.stem)
        plan.rows.append(
            {"order": index, "input": source.full_name, "path": str(source.path), "member": source.member or "",
             "index": source.index, "folder": folder, "signature": stamp}
        )
    return plan


def _still_there(entry: Entry, out: Path, output_format: str) -> bool:
    if output_format == "coco":
        return entry.document is not None
    return bundle_is_complete(out / entry.folder)
