"""Files the app hands to browsers, bounded: by age, by total size, and removed when their session ends.

The app's zips and Gradio's own cache (uploads, overlays it saved, copies of our zips) live under
one root, so one pruner keeps the whole footprint of a long-running server under its bound.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any, Callable

DEFAULT_ROOT = Path(tempfile.gettempdir()) / "maskseg-app"
DEFAULT_MAX_MB = 500.0
DEFAULT_MAX_AGE_S = 3600.0
MIN_AGE_S = 10.0  # never remove a file younger than this for size: a browser may be about to fetch it
PRUNE_TO = 0.8  # prune below the bound, so the files of the next few requests still fit under it
KEEP_PER_SESSION = 2  # a session's newest zips; older ones are superseded by what is on screen
PRUNE_EVERY_S = 5.0


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    try:
        return float(value) if value not in (None, "") else default
    except ValueError:
        return default


class TempFiles:
    """A bounded temp folder: fresh paths for downloads, pruned by age and size, dropped per session."""

    def __init__(self, root: Path, max_bytes: int, max_age_s: float, extra_roots: tuple[Path, ...] = ()) -> None:
        self.root = Path(root)
        self.extra_roots = tuple(Path(p) for p in extra_roots)
        self.max_bytes = int(max_bytes)
        self.max_age_s = float(max_age_s)
        self._lock = threading.Lock()
        self._by_session: dict[str, deque[Path]] = defaultdict(deque)
        self._last_prune = 0.0
        self.min_age_s = MIN_AGE_S
        self._protected: list[Callable[[], set[str]]] = []

    def protect(self, paths: Callable[[], set[str]]) -> None:
        """Never prune these files (Gradio's cached examples and default values, which it serves for good)."""
        self._protected.append(paths)

    def _protected_paths(self) -> set[str]:
        found: set[str] = set()
        for source in self._protected:
            found.update(str(Path(p).resolve()) for p in source())
        return found

    def new_path(self, stem: str, suffix: str = ".zip", request: Any = None) -> Path:
        """A new file path in its own folder; the session's older files beyond the newest few go."""
        self.prune()
        (self.root / "files").mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=self.root / "files"))
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or "maskseg"
        path = folder / f"{safe}{suffix}"
        session = getattr(request, "session_hash", None)
        if session:
            with self._lock:
                owned = self._by_session[session]
                owned.append(path)
                while len(owned) > KEEP_PER_SESSION:
                    _remove_tree(owned.popleft().parent)
        return path

    def drop_session(self, session_hash: str | None) -> None:
        """The session ended (its tab closed): remove every file it was given."""
        with self._lock:
            owned = self._by_session.pop(session_hash or "", deque())
        for path in owned:
            _remove_tree(path.parent)

    def roots(self) -> list[Path]:
        return [self.root, *[p for p in self.extra_roots if not _is_within(p, self.root)]]

    def total_bytes(self) -> int:
        """Bytes under every root the app writes to."""
        return sum(size for _path, size, _mtime in self._files())

    def maybe_prune(self) -> None:
        """Prune at most every few seconds (cheap to call on every slider move)."""
        if time.monotonic() - self._last_prune >= PRUNE_EVERY_S:
            self.prune()

    def prune(self) -> None:
        """Remove files past the age limit, then the oldest until the total is under the size limit."""
        with self._lock:
            self._last_prune = time.monotonic()
            now = time.time()
            keep = self._protected_paths()
            files = sorted(self._files(), key=lambda item: item[2])
            total = sum(size for _p, size, _m in files)
            soft_limit = PRUNE_TO * self.max_bytes  # headroom for what arrives before the next prune
            for path, size, mtime in files:
                age = now - mtime
                too_old = age > self.max_age_s
                too_big = total > soft_limit and age >= self.min_age_s
                if not (too_old or too_big) or str(path.resolve()) in keep:
                    continue
                try:
                    path.unlink()
                    total -= size
                    _remove_empty_parents(path.parent, self.roots())
                except OSError:
                    pass

    def _files(self) -> list[tuple[Path, int, float]]:
        found = []
        for root in self.roots():
            for dirpath, _dirs, names in os.walk(root):
                for name in names:
                    path = Path(dirpath) / name
                    try:
                        stat = path.stat()
                    except OSError:
                        continue
                    found.append((path, stat.st_size, stat.st_mtime))
        return found

    def start_background_pruning(self, every_s: float = 60.0) -> None:
        """Prune on a timer too, so an idle server also lets old files go."""

        def loop() -> None:
            while True:
                time.sleep(every_s)
                self.prune()

        threading.Thread(target=loop, name="maskseg-temp-pruner", daemon=True).start()


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _remove_tree(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _remove_empty_parents(folder: Path, roots: list[Path]) -> None:
    stops = {r.resolve() for r in roots}
    while folder.resolve() not in stops and any(_is_within(folder, r) for r in roots):
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def gradio_cache_dir(root: Path = DEFAULT_ROOT) -> Path:
    """Where Gradio keeps uploads and outputs: under the app's root unless GRADIO_TEMP_DIR says otherwise."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or root / "gradio")


def _default_store() -> TempFiles:
    root = Path(os.environ.get("MASKSEG_TEMP_DIR") or DEFAULT_ROOT)
    os.environ.setdefault("GRADIO_TEMP_DIR", str(root / "gradio"))
    return TempFiles(
        root,
        max_bytes=int(_env_float("MASKSEG_TEMP_MAX_MB", DEFAULT_MAX_MB) * 1024 * 1024),
        max_age_s=_env_float("MASKSEG_TEMP_MAX_AGE_S", DEFAULT_MAX_AGE_S),
        extra_roots=(gradio_cache_dir(root),),
    )


TEMP_FILES = _default_store()


def fresh_output_path(stem: str, suffix: str = ".zip") -> Path:
    """A new download path with no session (batch runs, scripts)."""
    return TEMP_FILES.new_path(stem, suffix)
