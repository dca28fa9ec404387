"""What bf16 changes: the Shapes demo's box and mask AP on a synthetic set, per backend and precision.

Run: python benchmarks/bench_precision.py [--num 40] [--size 1024] [--out benchmarks/results/precision.md]
Every run goes through the same Segmenter `predict` uses (maskseg.training.evaluate.predict_dataset),
scored by pycocotools' COCOeval against the set's own annotations.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RUNS = (("torch", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"))


def measure(data: Path, backend: str, precision: str) -> tuple[str, float, float, float]:
    """(runtime actually used, box AP, mask AP, seconds per image) of the Shapes demo on `data`."""
    from maskseg.engine.segmenter import Segmenter
    from maskseg.training.datasets import open_dataset
    from maskseg.training.evaluate import coco_metrics, predict_dataset

    dataset = open_dataset(data)
    segmenter = Segmenter(model="shapes-demo", device="cpu", backend=backend, precision=precision)
    started = time.perf_counter()
    detections = predict_dataset(segmenter, dataset)
    seconds = (time.perf_counter() - started) / len(dataset)
    result = coco_metrics(dataset.to_coco(), detections)
    return segmenter.loaded.runtime_name, result.box.ap, result.mask.ap, seconds


def main() -> None:
    """Write a synthetic set, score every backend/precision on it, print and save the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--num", type=int, default=40)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "precision.md")
    args = parser.parse_args()
    from maskseg.training.synth import SynthOptions, generate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = generate_dataset(Path(tmp) / "shapes", SynthOptions(num_images=args.num, seed=7, size=args.size))
        rows = [measure(data, backend, precision) for backend, precision in RUNS]
    base_box, base_mask = rows[0][1], rows[0][2]
    lines = [
        "# Precision: what bf16 changes on the Shapes demo",
        "",
        f"Command: `python benchmarks/bench_precision.py --num {args.num} --size {args.size}` · "
        f"{platform.machine()}, synthetic shapes set (seed 7, {args.num} images of {args.size} px), "
        "scored with pycocotools COCOeval; every row runs the same Segmenter `predict` uses.",
        "",
        "| runtime | box AP | mask AP | Δ box AP vs torch fp32 | Δ mask AP | s/image |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *[f"| {name} | {box:.4f} | {mask:.4f} | {box - base_box:+.4f} | {mask - base_mask:+.4f} | {sec:.2f} |"
          for name, box, mask, sec in rows],
    ]
    print("\n".join(lines))
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
