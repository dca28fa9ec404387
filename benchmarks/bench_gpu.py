"""maskseg on a CUDA GPU against the seed notebook's pipeline on the same GPU and weights: images per
second for v1 and v2 at batch 1/4/8, fp32 and fp16, network only and end to end (decode → overlay →
bundle), peak GPU memory, and fp16's box/mask AP change on the Shapes set.

Run (on a machine with an NVIDIA GPU): python benchmarks/bench_gpu.py [--out benchmarks/results/gpu.md]
Without CUDA it says so and exits 2; `--smoke` runs every step on the CPU with tiny sizes, only to
check that the script works (its numbers mean nothing).
Uses random COCO-shaped v1 and v2 weights (as bench_engine.py): speed does not depend on what the
weights learned; thresholds are chosen so every pipeline keeps 20 objects per photo.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import REPO, _random_weights_home, photo_of_size, seed_pipeline, threshold_keeping  # noqa: E402

TARGETS = {"maskrcnn_resnet50_fpn": 40.0, "maskrcnn_resnet50_fpn_v2": 20.0}  # img/s end to end, fp16, batched


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu.md")
    parser.add_argument("--photos", type=int, default=32, help="1080p photos per measurement")
    parser.add_argument("--smoke", action="store_true", help="run on the CPU with tiny sizes (checks the script only)")
    return parser.parse_args()


def _photos(count: int, smoke: bool) -> list[Path]:
    """`count` distinct 1080p JPEG files (shifted crops of the example photo), written once."""
    folder = Path(tempfile.mkdtemp(prefix="bench_gpu_photos_"))
    width, height = (320, 180) if smoke else (1920, 1080)
    base = photo_of_size(width + 64, height + 64)
    paths = []
    for index in range(count):
        dx, dy = (index * 7) % 64, (index * 13) % 64
        path = folder / f"photo_{index:03d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(base[dy : dy + height, dx : dx + width], cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn, images: int, device: torch.device) -> tuple[float, float]:
    """(images per second, peak GPU MB) of one call of `fn` after a warm-up call."""
    fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    fn()
    _sync(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return images / seconds, peak


def _maskseg_end_to_end(segmenter, paths: list[Path], threshold: float, batch: int) -> None:
    """Decode → network → overlay → bundle for every photo, `batch` photos per forward."""
    from maskseg.engine.export import write_bundle
    from maskseg.engine.render import render_overlay

    with tempfile.TemporaryDirectory() as tmp:
        for start in range(0, len(paths), batch):
            for prediction in segmenter.predict(paths[start : start + batch], score_threshold=threshold, batch_size=batch):
                render_overlay(prediction)
                write_bundle(prediction, Path(tmp) / prediction.image_stem)


def _maskseg_network_only(segmenter, photos: list[np.ndarray], threshold: float, batch: int) -> None:
    """The Segmenter on decoded photos, masks of the kept objects computed, nothing drawn or written."""
    segmenter.predict(photos, score_threshold=threshold, batch_size=batch)


def _seed_run(segmenter, paths: list[Path], threshold: float) -> None:
    """The seed notebook per photo on the GPU: decode, standard forward, every mask pasted, drawn."""
    net, names = segmenter.loaded.network, segmenter.loaded.class_names
    device = segmenter.loaded.device
    net.roi_heads.score_thresh, net.roi_heads.detections_per_img = 0.05, 100
    for path in paths:
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        tensor = torch.from_numpy(image).permute(2, 0, 1).float().div(255).to(device)
        with torch.inference_mode():
            pred = net([tensor])[0]
        seed_pipeline_outputs(pred, image, threshold, names)


def seed_pipeline_outputs(pred: dict, image: np.ndarray, threshold: float, names: list[str]) -> None:
    """The seed's drawing on a prediction it made on the GPU (copied back as the notebook does)."""
    cpu = {k: v.detach().cpu() for k, v in pred.items()}

    class _Done(torch.nn.Module):
        def forward(self, _):
            return [cpu]

    seed_pipeline(_Done(), image, threshold, names)


def _model_rows(model: str, device: torch.device, paths: list[Path], lines: list[str], smoke: bool) -> None:
    """One table per model: seed, and maskseg fp32/fp16 at batch 1/4/8, network only and end to end."""
    from maskseg.engine.segmenter import Segmenter

    photos = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]
    precisions = ("fp32",) if smoke else ("fp32", "fp16")
    runs = {p: Segmenter(model=model, device=device, backend="torch", precision=p) for p in precisions}
    if smoke:  # a CPU only checks the script: let the network see the tiny photos at their own size
        for segmenter in runs.values():
            segmenter.loaded.network.transform.min_size, segmenter.loaded.network.transform.max_size = (180,), 320
    threshold = threshold_keeping(runs["fp32"], photos[0], 5 if smoke else 20)
    seed_rate, seed_peak = _rate(lambda: _seed_run(runs["fp32"], paths, threshold), len(paths), device)
    lines += ["", f"## {model}: images per second on {len(paths)} photos", "",
              "| pipeline | batch | network only img/s | end to end img/s | end to end / seed | peak GPU MB |",
              "| --- | ---: | ---: | ---: | ---: | ---: |",
              f"| seed notebook (fp32) | 1 | – | {seed_rate:.1f} | 1.00× | {seed_peak:.0f} |"]
    best = 0.0
    for precision, segmenter in runs.items():
        for batch in (1, 2) if smoke else (1, 4, 8):
            net_rate, _ = _rate(lambda: _maskseg_network_only(segmenter, photos, threshold, batch), len(photos), device)
            e2e_rate, peak = _rate(lambda: _maskseg_end_to_end(segmenter, paths, threshold, batch), len(paths), device)
            if precision == "fp16":
                best = max(best, e2e_rate)
            lines.append(f"| maskseg {precision} | {batch} | {net_rate:.1f} | {e2e_rate:.1f} | "
                         f"{e2e_rate / seed_rate:.2f}× | {peak:.0f} |")
            print(lines[-1], flush=True)
    target = TARGETS[model]
    lines += ["", f"Target: ≥ {target:.0f} img/s end to end with fp16 and batching, ≥ 3× the seed → best "
              f"{best:.1f} img/s ({best / seed_rate:.2f}× the seed): "
              f"{'met' if best >= target and best >= 3 * seed_rate else 'NOT met'}."]


def _shapes_ap_section(device: torch.device, smoke: bool) -> list[str]:
    """Box and mask AP of the Shapes demo in fp32 and fp16 on a synthetic set, through `predict`."""
    from maskseg.engine.segmenter import Segmenter
    from maskseg.training.datasets import open_dataset
    from maskseg.training.evaluate import coco_metrics, predict_dataset
    from maskseg.training.synth import SynthOptions, generate_dataset

    folder = generate_dataset(tempfile.mkdtemp(prefix="bench_gpu_shapes_"),
                              SynthOptions(num_images=8 if smoke else 100, size=256 if smoke else 1024, seed=3))
    dataset = open_dataset(folder, "auto")
    precisions = ("fp32",) if smoke else ("fp32", "fp16")
    metrics = {}
    for precision in precisions:
        segmenter = Segmenter(model="shapes-demo", device=device, backend="torch", precision=precision)
        metrics[precision] = coco_metrics(dataset.to_coco(), predict_dataset(segmenter, dataset))
    lines = ["", "## Shapes demo: COCO AP through predict, fp32 vs fp16", "",
             "| precision | box AP | mask AP |", "| --- | ---: | ---: |"]
    lines += [f"| {p} | {m.box.ap * 100:.2f} | {m.mask.ap * 100:.2f} |" for p, m in metrics.items()]
    if "fp16" in metrics:
        box = abs(metrics["fp16"].box.ap - metrics["fp32"].box.ap) * 100
        mask = abs(metrics["fp16"].mask.ap - metrics["fp32"].mask.ap) * 100
        lines += ["", f"Target: fp16 within 0.5 AP points of fp32 → box {box:.2f}, mask {mask:.2f}: "
                  f"{'met' if max(box, mask) <= 0.5 else 'NOT met'}."]
    return lines


def main() -> None:
    """Every section on one GPU in one run; writes the results file."""
    args = _parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        print("bench_gpu needs a CUDA GPU (torch.cuda.is_available() is False); --smoke checks the script on the CPU.")
        raise SystemExit(2)
    device = torch.device("cpu" if args.smoke else "cuda")
    _random_weights_home()
    paths = _photos(2 if args.smoke else args.photos, args.smoke)
    name = "CPU (smoke run: numbers mean nothing)" if args.smoke else torch.cuda.get_device_name(device)
    lines = ["# GPU benchmark: maskseg vs the seed notebook on the same GPU", "",
             f"Command: `python benchmarks/bench_gpu.py` · {name} · torch {torch.__version__} · random COCO-shaped "
             f"weights · {len(paths)} distinct {'tiny' if args.smoke else '1920×1080'} JPEG photos, 20 objects kept each."]
    for model in TARGETS:
        _model_rows(model, device, paths, lines, args.smoke)
    lines += _shapes_ap_section(device, args.smoke)
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.smoke:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
