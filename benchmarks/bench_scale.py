"""`predict --engine ray` with 1 and 2 actors against the local CLI, paired in one run: images/s, the
fixed start-up cost, and Ray's overhead per image.

Run: python benchmarks/bench_scale.py [--small 20] [--large 160] [--size 256] [--repeats 4]
     [--out benchmarks/results/scale.md]
Each command runs as a user runs it (`python -m maskseg predict ...` in a fresh process, so every
engine pays its own model load, and Ray its own start), on synthetic shapes with the offline
Shapes demo model. Two dataset sizes separate the fixed cost from the cost per image: per-image
seconds = (t_large - t_small) / (large - small), start-up = what remains. Commands alternate within
each repeat; each reported time is the fastest of the repeats, because other work on a shared
machine only ever adds time (medians on a loaded 2-core machine gave negative slopes).
"""

from __future__ import annotations

import argparse
import os
import platform
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
    """The results as Markdown lines: the fastest run of each (engine, size), since other work on a
    shared machine only ever adds time; then every run, so the spread is on record too."""
    import ray

    fastest = {key: min(values) for key, values in times.items()}
    per_image = {name: (fastest[(name, large)] - fastest[(name, small)]) / (large - small) for name in ENGINES}
    local = per_image["local CLI"]
    lines = [
        "# Scale-out benchmark: `predict --engine ray` vs the local CLI",
        "",
        f"Command: `python benchmarks/bench_scale.py --small {small} --large {large} --size {size} --repeats {repeats}` · "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, Ray {ray.__version__} · "
        f"synthetic shapes {size}×{size} px, Shapes demo model, default backend (OpenVINO fp32), batch size 2 · "
        "each command a fresh process, as a user runs it (model load, and Ray's start, included) · "
        f"fastest of {repeats} repeats, the engines alternating.",
        "",
        f"Load average at the end (1/5/15 min): {' / '.join(f'{v:.1f}' for v in os.getloadavg())} on "
        f"{os.cpu_count()} cores. Other work on the machine only adds time, hence the fastest run.",
        "",
        f"Two dataset sizes ({small} and {large} images) separate the fixed cost from the cost per image: "
        "per image = (t_large − t_small) / (large − small); start-up = t_small − small × per image. "
        "Ray's start-up holds starting Ray, its actors and their model loads; its overhead per image is "
        "its per-image cost minus the local CLI's.",
        "",
        f"| engine | {small} images (s) | {large} images (s) | images/s, {large} images | images/s after start-up | "
        "s per image | start-up (s) | overhead per image vs local |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ENGINES:
        startup = fastest[(name, small)] - small * per_image[name]
        overhead = "—" if name == "local CLI" else f"{1000 * (per_image[name] - local):+.1f} ms"
        steady = f"{1 / per_image[name]:.2f}" if per_image[name] > 0 else "—"
        lines.append(
            f"| {name} | {fastest[(name, small)]:.1f} | {fastest[(name, large)]:.1f} | "
            f"{large / fastest[(name, large)]:.2f} | {steady} | {per_image[name]:.3f} | {startup:.1f} | {overhead} |"
        )
    lines += ["", "Every run (seconds, in the order they ran):", "", "| engine | images | runs |", "| --- | ---: | --- |"]
    lines += [f"| {name} | {count} | {', '.join(f'{t:.1f}' for t in values)} |" for (name, count), values in times.items()]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=20)
    parser.add_argument("--large", type=int, default=160)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=4)
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
