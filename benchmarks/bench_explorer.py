"""The stage explorer's costs: a traced run against a plain run, a stage/object/level switch, and the
memory a session's trace holds on a 12 MP photo.

Run: python benchmarks/bench_explorer.py [--repeats 3] [--out benchmarks/results/explorer.md]
Uses the same random COCO-shaped v1 weights as bench_engine (timings do not depend on the weights).
Targets (issue 9): traced run ≤ 1.3× a plain run; a switch re-renders in ≤ 150 ms on a 1080p photo.
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_engine import _random_weights_home, photo_of_size, threshold_keeping  # noqa: E402
from bench_engine import median_time as median  # noqa: E402

SWITCHES = [  # (what the student does, stage, level, mode, rpn view)
    ("stage → Input", "Input", "P2", "Principal components (RGB)", "Anchors at a point"),
    ("stage → Backbone, P2 PCA", "Backbone + FPN", "P2", "Principal components (RGB)", "Anchors at a point"),
    ("level → P4 energy", "Backbone + FPN", "P4", "Energy", "Anchors at a point"),
    ("stage → Proposals, anchors", "Region proposals", "P2", "Energy", "Anchors at a point"),
    ("view → objectness P3", "Region proposals", "P3", "Energy", "Objectness"),
    ("view → proposals after NMS", "Region proposals", "P3", "Energy", "Proposals after NMS"),
    ("stage → RoIAlign + box head", "RoIAlign + box head", "P2", "Energy", "Anchors at a point"),
    ("stage → Mask head", "Mask head", "P2", "Energy", "Anchors at a point"),
    ("stage → Result", "Result", "P2", "Energy", "Anchors at a point"),
]


def encoded(values: dict) -> int:
    """Encode every picture the handler returned as Gradio sends them (WebP), like the page gets them."""
    total = 0
    for value in values.values():
        if isinstance(value, np.ndarray) and value.ndim == 3:
            buffer = io.BytesIO()
            Image.fromarray(value).save(buffer, format="webp")
            total += buffer.tell()
    return total


def run_section(segmenter, image: np.ndarray, threshold: float, repeats: int) -> list[str]:
    """Plain vs traced run, interleaved so a busy machine slows both alike."""
    from maskseg.engine.trace import trace_photo

    def plain():  # the Segment tab's run (app.session.run_network), whose objects the trace shows
        segmenter.predict_one(image, score_threshold=min(threshold, 0.05), max_detections=100, keep_features=True)

    def traced():
        trace_photo(segmenter, image, score_threshold=threshold)

    plain(), traced()  # warm-up
    plain_t, traced_t = [], []
    for _ in range(repeats):
        plain_t.append(median(plain, 1))
        traced_t.append(median(traced, 1))
    p, t = statistics.median(plain_t), statistics.median(traced_t)
    verdict = "met" if t / p <= 1.3 else "NOT met"
    return [f"| {segmenter.loaded.runtime_name} | {p:.2f} | {t:.2f} | **{t / p:.2f}×** | {verdict} |"]


def switch_section(segmenter, image: np.ndarray, threshold: float, repeats: int) -> list[str]:
    """Each switch: the handler draws its stage, and its pictures are encoded as the page gets them."""
    from maskseg.app.explorer_handlers import ExplorerState, stage_outputs
    from maskseg.engine.explain_report import summary
    from maskseg.engine.trace import trace_photo

    trace = trace_photo(segmenter, image, score_threshold=threshold)
    state = ExplorerState(trace=trace, facts=summary(trace), object_id=trace.view.instances[0].id)
    lines = ["| switch | handler ms | + encode ms | target ≤ 150 ms |", "| --- | ---: | ---: | --- |"]
    for name, stage, level, mode, rpn_view in SWITCHES:
        draw = lambda: stage_outputs(state, stage, level, mode, rpn_view, 0.5)  # noqa: E731
        both = lambda: encoded(draw())  # noqa: E731
        d, b = median(draw, repeats), median(both, repeats)
        lines.append(f"| {name} | {1000 * d:.0f} | {1000 * b:.0f} | {'met' if b <= 0.150 else 'NOT met'} |")
    return lines


def memory_section(segmenter) -> list[str]:
    """What a session's trace keeps on a 12 MP photo with 100 objects."""
    from maskseg.engine.trace import trace_photo

    image = photo_of_size(4000, 3000)
    threshold = threshold_keeping(segmenter, image, 100)
    trace = trace_photo(segmenter, image, score_threshold=threshold)
    photo_mb = trace.view.image.nbytes / 2**20
    total_mb = trace.nbytes() / 2**20
    return [
        f"- 4000×3000 photo, {len(trace.view.instances)} objects: the trace holds **{total_mb:.1f} MB** "
        f"({photo_mb:.1f} MB of it the photo itself, the rest level pictures, proposals, per-object crops, "
        "28×28 maps and pasted mask crops). The network's features are released when the trace is made.",
        f"- Stated bound: the photo's RGB bytes + 40 MB per session → {'met' if total_mb <= photo_mb + 40 else 'NOT met'}.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "explorer.md")
    args = parser.parse_args()
    _random_weights_home()
    from maskseg.engine.segmenter import Segmenter

    image = photo_of_size(1920, 1080)
    lines = [
        "# Stage explorer: traced run, stage switches, trace memory", "",
        f"`python benchmarks/bench_explorer.py --repeats {args.repeats}` on {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}; v1 with random COCO-shaped weights, 1920×1080 photo, 20 objects.", "",
        "## Traced run vs plain run (seconds, median)", "",
        "Plain = the Segment tab's run (every candidate down to the 0.05 floor, masks for up to 100 of them, "
        "features kept for later filters); traced = the same run with every stage recorded and condensed "
        "into the explorer's pictures, counts and crops.", "",
        "| runtime | plain | traced | traced / plain | target ≤ 1.3× |", "| --- | ---: | ---: | ---: | --- |",
    ]
    segmenters = [Segmenter(model="v1", device="cpu", backend=b) for b in ("auto", "torch")]
    threshold = threshold_keeping(segmenters[0], image, 20)
    for segmenter in segmenters:
        lines += run_section(segmenter, image, threshold, args.repeats)
        print(lines[-1], flush=True)
    lines += ["", f"## Switching stage, level or view ({segmenters[0].loaded.runtime_name} trace, median ms)", ""]
    lines += switch_section(segmenters[0], image, threshold, args.repeats * 2)
    lines += ["", "## Memory of a session's trace", ""] + memory_section(segmenters[0])
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
