"""Example photos that follow the loaded model: COCO photos for COCO models, shapes for the Shapes demo."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from maskseg.training.synth import SHAPE_CLASSES

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def example_kind(class_names: list[str]) -> str:
    """'shapes' for a model of synthetic shapes, 'photos' for a model of real things (COCO or other)."""
    real = {name for name in class_names if name not in ("__background__", "N/A")}
    return "shapes" if real and real <= set(SHAPE_CLASSES) else "photos"


class ExampleSets:
    """Two rows of examples (real photos, synthetic shapes); the loaded model's row is shown."""

    def __init__(self, folder: str | Path) -> None:
        files = sorted(p for p in Path(folder).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        self.paths = {
            "shapes": [str(p) for p in files if p.name.startswith("shapes_")],
            "photos": [str(p) for p in files if not p.name.startswith("shapes_")],
        }

    def build(self, image_in: gr.Image, class_names: list[str], prefix: str = "") -> list[gr.Column]:
        """Both rows, inside columns whose visibility follows the model; returns the columns.
        `prefix` keeps element ids unique when another tab has its own rows."""
        shown = example_kind(class_names)
        columns = []
        for kind, label, elem_id in (
            ("photos", "Example photos (COCO)", "examples-photos"),
            ("shapes", "Example images for the Shapes demo", "examples-shapes"),
        ):
            with gr.Column(visible=kind == shown, elem_id=prefix + elem_id) as column:
                if self.paths[kind]:
                    gr.Examples(examples=[[p] for p in self.paths[kind]], inputs=[image_in], label=label)
            columns.append(column)
        return columns

    def updates_for(self, class_names: list[str]) -> list[gr.Column]:
        """Visibility updates for the columns `build` returned, for a newly chosen model."""
        shown = example_kind(class_names)
        return [gr.Column(visible=kind == shown) for kind in ("photos", "shapes")]
