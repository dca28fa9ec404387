"""The job's record in the output folder: one line per finished input (journal), and failures.csv."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

JOURNAL_NAME = "maskseg-journal.jsonl"
FAILURES_NAME = "failures.csv"
# write_bundle writes objects.csv last: a folder that has it holds the whole bundle.
LAST_BUNDLE_FILE = "objects.csv"


@dataclass
class Entry:
    """One input's outcome as the journal holds it."""

    input: str
    status: str  # "done" or "failed"
    settings: str  # JobSettings.key() of the run that wrote it
    folder: str = ""
    objects: int = 0
    reason: str = ""
    signature: str = ""  # the file's size and time when it failed
    document: dict | None = None  # the image's COCO document (--format coco)


def bundle_is_complete(folder: Path) -> bool:
    """Whether a bundle folder was written to the end."""
    return (folder / LAST_BUNDLE_FILE).is_file()


class Journal:
    """Append-only JSON lines in the output folder: the driver adds a line as each input finishes, so a
    job stopped at any point loses at most the images in flight, and a rerun knows what is done."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / JOURNAL_NAME
        self._handle = None

    def read(self) -> dict[str, Entry]:
        """The latest entry per input (a later line overrides an earlier one). Documents are not kept
        (an empty dict says one is there; `entry_at` reads it), so a big job's journal stays small in memory."""
        latest = {}
        for _offset, entry in self.entries():
            if entry.document is not None:
                entry.document = {}
            latest[entry.input] = entry
        return latest

    def entries(self) -> Iterator[tuple[int, Entry]]:
        """(byte offset, entry) for every complete line; a line cut off by a crash is ignored."""
        if not self.path.is_file():
            return
        with open(self.path, "rb") as handle:
            offset = 0
            for line in handle:
                start, offset = offset, offset + len(line)
                try:
                    yield start, Entry(**json.loads(line))
                except (ValueError, TypeError):
                    continue

    def entry_at(self, offset: int) -> Entry:
        """The entry whose line starts at `offset`."""
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            return Entry(**json.loads(handle.readline()))

    def append(self, entry: Entry) -> None:
        """Add one line and flush it to the file."""
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a", encoding="utf-8")
        record = {k: v for k, v in entry.__dict__.items() if v not in (None, "") or k in ("input", "status")}
        self._handle.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def write_failures(out: Path, failures: list[tuple[str, str]]) -> Path | None:
    """failures.csv (input, reason) for this run's failures; an earlier run's file goes when none failed."""
    path = Path(out) / FAILURES_NAME
    if not failures:
        path.unlink(missing_ok=True)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["input", "reason"])
        writer.writerows(failures)
    return path
