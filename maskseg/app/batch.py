"""The Batch tab's logic: one table and status for many photos, and Gradio progress for the engine."""

from __future__ import annotations

from typing import Callable, Sequence

from maskseg.engine.prediction import TABLE_COLUMNS, Prediction

BATCH_COLUMNS = ["image", *TABLE_COLUMNS]

def batch_rows(preds: Sequence[Prediction], names: Sequence[str]) -> list[list]:
    """One combined table: the image's bundle folder name, then the usual columns."""
    rows = []
    for name, pred in zip(names, preds):
        rows.extend([name, *row] for row in pred.table_rows())
    return rows

def batch_status(preds: Sequence[Prediction], skipped: Sequence[tuple[str, str]], seconds: float) -> str:
    done = len(preds)
    objects = sum(len(p.instances) for p in preds)
    lines = [f"Segmented {done} image{'s' if done != 1 else ''} ({objects} objects) in {seconds:.1f} s."]
    if preds:
        lines[0] += f" Model: {preds[0].model_title} · Device: {preds[0].device_name}."
    if skipped:
        lines.append(f"Skipped {len(skipped)}:")
        lines.extend(f"- {name}: {reason}" for name, reason in skipped)
    return "\n".join(lines)

def progress_adapter(progress: Callable | None, total_label: str = "Segmenting") -> Callable[[int, int], None] | None:
    """Turn Gradio's Progress into the engine's progress(done, total) callback."""
    if progress is None:
        return None

    def report(done: int, total: int) -> None:
        progress(done / max(total, 1), desc=f"{total_label} {done}/{total}")

    return report
