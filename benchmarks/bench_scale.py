"""`predict --engine ray` with 1 and 2 actors against the local CLI, paired in one run: images/s, the
fixed start-up cost, and Ray's overhead per image.

Run: python benchmarks/bench_scale.py [--small 40] [--large 240] [--size 256] [--repeats 2]
     [--out benchmarks/results/scale.md]
Each command runs as a user runs it (`python -m maskseg predict ...` in a fresh process, so every
engine pays its own model load, and Ray its own start), on synthetic shapes with the offline
Shapes demo model. Two dataset sizes separate the fixed cost from the cost per image: per-image
seconds = (t_large - t_small) / (large - small), start-up = what remains. Commands alternate within
each repeat, so a busy machine slows them alike; the median over repeats is reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ENGINES = {
    "local CLI": [],
    "Ray, 1 actor": ["--engine", "ray", "--actors", "1"],
    "Ray, 2 actors": ["--engine", "ray", "--actors", "2"],
}


def make_images(root: Path, count: int, size: int) -> Path:
    """`count` synthetic shape images of `size` px (seeded: the same bytes every run)."""
    from maskseg.training.synth import SynthOptions, generate_dataset

    generate_dataset(root, SynthOptions(num_images=count, seed=7, size=size))
    return root / "images"


def timed_predict(images: Path, out: Path, extra: list[str]) -> float:
    """Wall seconds of one `python -m maskseg predict` command, start to exit."""
    command = [sys.executable, "-m", "maskseg", "predict", str(images), "--out", str(out), "--model", "shapes-demo", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_DISABLE_USAGE_STATS": "1"}
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - started
    if result.returncode != 0 or "Segmented" not in result.stdout:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return seconds


def measure(datasets: dict[int, Path], work: Path, repeats: int) -> dict[tuple[str, int], list[float]]:
    """Wall seconds per (engine, image count), one per repeat; every output folder is fresh (no skipping)."""
    times: dict[tuple[str, int], list[float]] = {}
    runs = 0
    for repeat in range(repeats):
        for count, images in datasets.items():
            for name, extra in ENGINES.items():
                runs += 1
                out = work / f"out-{runs}"  # a fresh folder: a rerun into an old one would skip everything
                seconds = timed_predict(images, out, extra)
                times.setdefault((name, count), []).append(seconds)
                print(f"  {name:<14} {count:>4} images: {seconds:6.1f} s", flush=True)
    return times


def report(times: dict[tuple[str, int], list[float]], small: int, large: int, size: int, repeats: int) -> list[str]:
    """The results as Markdown lines. Per-image cost is the median over repeats of each repeat's own
    slope (its two sizes ran back to back), which a machine whose load drifts disturbs least."""
    import ray

    medians = {key: statistics.median(values) for key, values in times.items()}
    per_image = {
        name: statistics.median((big - few) / (large - small) for few, big in zip(times[(name, small)], times[(name, large)]))
        for name in ENGINES
    }
    local = per_image["local CLI"]
    lines = [
        "# Scale-out benchmark: `predict --engine ray` vs the local CLI",
        "",
        f"Command: `python benchmarks/bench_scale.py --small {small} --large {large} --size {size} --repeats {repeats}` · "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, Ray {ray.__version__} · "
        f"synthetic shapes {size}×{size} px, Shapes demo model, default backend (OpenVINO fp32), batch size 2 · "
        f"each command a fresh process, as a user runs it (model load and Ray start included) · median of {repeats} "
        "repeats, the engines alternating.",
        "",
        f"Load average at the end (1/5/15 min): {' / '.join(f'{v:.1f}' for v in os.getloadavg())} on "
        f"{os.cpu_count()} cores: other work on the machine slows every engine alike, so compare within a row set.",
        "",
        f"Start-up and per-image cost come from two dataset sizes ({small} and {large} images): "
        "per image = (t_large − t_small) / (large − small) within each repeat, then the median; "
        "start-up = median t_small − small × per image. Ray's start-up holds starting Ray, its actors "
        "and their model loads; its overhead per image is the difference from the local CLI's per-image cost.",
        "",
        f"| engine | {small} images (s) | {large} images (s) | images/s at {large} | steady images/s | "
        "s per image | start-up (s) | overhead per image vs local |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ENGINES:
        startup = medians[(name, small)] - small * per_image[name]
        overhead = "—" if name == "local CLI" else f"{1000 * (per_image[name] - local):+.1f} ms"
        lines.append(
            f"| {name} | {medians[(name, small)]:.1f} | {medians[(name, large)]:.1f} | "
            f"{large / medians[(name, large)]:.2f} | {1 / per_image[name]:.2f} | {per_image[name]:.3f} | "
            f"{startup:.1f} | {overhead} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=40)
    parser.add_argument("--large", type=int, default=240)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scale.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        work = Path(tmp)
        datasets = {count: make_images(work / f"data-{count}", count, args.size) for count in (args.small, args.large)}
        times = measure(datasets, work, args.repeats)
    lines = report(times, args.small, args.large, args.size, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
