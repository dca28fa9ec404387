"""The Segment tab's live controls: what they are, and the cached prediction seen through them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from maskseg.engine.prediction import Prediction
from maskseg.engine.render import RenderOptions


@dataclass
class Controls:
    """Everything that changes the view but not the network's output."""

    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    classes: list[str] = field(default_factory=list)
    max_detections: int = 100
    opacity: float = 0.5
    masks: bool = True
    contours: bool = True
    boxes: bool = True
    labels: bool = True

    @property
    def render_options(self) -> RenderOptions:
        return RenderOptions(
            opacity=float(self.opacity), masks=bool(self.masks), contours=bool(self.contours),
            boxes=bool(self.boxes), labels=bool(self.labels),
        )

def apply_controls(base: Prediction, controls: Controls) -> Prediction:
    """The cached prediction seen through the controls: milliseconds, no network."""
    return base.filter(
        score_threshold=float(controls.score_threshold),
        classes=list(controls.classes or []),  # empty: every class
        max_detections=max(1, int(controls.max_detections or 1)),
        mask_threshold=float(controls.mask_threshold),
    )

def clamp_to_floor(base: Prediction, controls: Controls) -> tuple[Controls, str | None]:
    """Controls a cached prediction can serve, and a note when the threshold had to be raised.

    Live controls never run the network (that would bypass the one-at-a-time network queue):
    below the floor the photo was run at, they show the floor and say how to go lower.
    """
    if base.can_filter(controls.score_threshold):
        return controls, None
    note = (
        f"Showing objects above {base.score_floor:.2f}, the lowest this photo was run at; "
        f"press Segment to run it again at {controls.score_threshold:.2f}."
    )
    return replace(controls, score_threshold=base.score_floor), note
