"""Command line: `python -m maskseg predict|video|models|synth|train|eval ...`."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator, Sequence

from maskseg.errors import MaskSegError, UsageError
from maskseg.engine.backend import add_backend_arguments
from maskseg.engine.images import DEFAULT_MAX_PIXELS, LoadedImage
from maskseg.engine.sources import Source, expand_listings, expand_sources, read_sources

# Modules that add their own subcommand through add_cli(subparsers).
PLUGIN_COMMANDS = ("maskseg.training.synth", "maskseg.training.train", "maskseg.training.evaluate")


def fraction(text: str) -> float:
    """argparse type for a number between 0 and 1 (a bad value is a usage error, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 1")
    return value


def positive_int(text: str) -> int:
    """argparse type for an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1")
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model / --checkpoint / --device, shared by every command that loads a model."""
    parser.add_argument(
        "--model", default="auto",
        help="auto (v2 on GPU, v1 on CPU), v1, v2, maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2, "
        "or shapes-demo (offline)",
    )
    parser.add_argument("--checkpoint", type=Path, help="a local checkpoint saved by `maskseg train`")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    add_backend_arguments(parser)


def add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    """--engine and the Ray engine's flags (maskseg.scale; Ray from requirements-scale.txt)."""
    group = parser.add_argument_group("scale-out (--engine ray)")
    group.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local: this process (default); ray: a Ray Data actor pool, each actor with its own model")
    group.add_argument("--address", help="join the Ray cluster at this address (default: start a local Ray)")
    group.add_argument("--actors", type=positive_int, help="actors, one model each (default 1)")
    group.add_argument("--gpus-per-actor", type=float, help="GPUs each actor reserves (e.g. 1, or 0.5 to share one)")
    group.add_argument("--cpus-per-actor", type=float,
                       help="CPUs each actor reserves (default: the local machine's cores shared out; 1 on a cluster)")
    group.add_argument("--format", choices=("bundles", "coco"), default="bundles", dest="output_format",
                       help="bundles: a folder per image (default); coco: one merged coco.json and objects.parquet")


def add_filter_arguments(parser: argparse.ArgumentParser, per: str) -> None:
    """--threshold, --mask-threshold, --classes, --max-detections: which objects are kept, the
    same controls as the app's, for `predict` (per image) and `video` (per frame)."""
    parser.add_argument("--threshold", type=fraction, default=0.5, help="score threshold (default 0.5)")
    parser.add_argument("--mask-threshold", type=fraction, default=0.5, help="mask probability cut (default 0.5)")
    parser.add_argument("--classes", default="", help="comma-separated class names to keep, e.g. person,car")
    parser.add_argument("--max-detections", type=positive_int, default=100, help=f"most objects per {per}")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, including subcommands contributed by other modules."""
    parser = argparse.ArgumentParser(prog="python -m maskseg", description="Mask R-CNN instance segmentation.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    predict = subparsers.add_parser(
        "predict", help="segment images and write one bundle folder per image",
        description="Segment images (files, zips of images, or folders of images) and write DIR/<image stem>/ "
        "bundles: overlay.png, masks/NN_<class>.png, cutouts/NN_<class>.png, label_map.png, "
        "instances.json (COCO RLE), objects.csv.",
    )
    predict.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE_ZIP_OR_DIR")
    predict.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the bundles")
    add_model_arguments(predict)
    add_filter_arguments(predict, per="image")
    predict.add_argument("--batch-size", type=positive_int, default=2, help="images per network run")
    predict.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                         help="refuse images larger than this many pixels (default 40 million)")
    predict.add_argument("--opacity", type=fraction, default=0.5, help="mask fill opacity in the overlay")
    for layer in ("masks", "contours", "boxes", "labels"):
        predict.add_argument(f"--no-{layer}", action="store_true", help=f"do not draw {layer} on the overlay")
    add_scale_arguments(predict)
    predict.set_defaults(handler=run_predict)

    add_video_command(subparsers)

    models = subparsers.add_parser("models", help="list models, their COCO accuracy and whether weights are here")
    models.set_defaults(handler=run_models)

    for module_name in PLUGIN_COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        if hasattr(module, "add_cli"):
            module.add_cli(subparsers)
    return parser


def expand_inputs(inputs: Sequence[Path]) -> tuple[list[Source], list[tuple[str, str]]]:
    """Files named directly, zips as their members, image files inside named folders (sorted), glob
    patterns and .txt/.csv manifests as the files they name; and the misses."""
    paths, unlisted = expand_listings(inputs)
    # No member cap: the command line streams one image at a time, so a big zip costs no memory.
    sources, refused = expand_sources(paths, walk_folders=True, max_members=None)
    return sources, [(source.full_name, reason) for source, reason in [*unlisted, *refused]]


def image_batches(
    sources: Sequence[Source], max_pixels: int, batch_size: int, on_failure: Callable[[str, str], None]
) -> Iterator[tuple[list[str], list[LoadedImage]]]:
    """Up to batch_size decoded images at a time with their bundle folder names, decoding as it goes;
    each unreadable input goes to on_failure. Folders are named in input order, a failed input keeping
    its name too, so `--engine ray` (which names them before anything is read) gives the same names."""
    from maskseg.engine.export import FolderNamer

    namer = FolderNamer()
    readings = zip([namer.name(source.stem) for source in sources], read_sources(sources, max_pixels))
    while chunk := list(islice(readings, batch_size)):
        for _folder, (source, _image, reason) in chunk:
            if reason:
                on_failure(source.full_name, reason)
        kept = [(folder, image) for folder, (_source, image, _reason) in chunk if image is not None]
        if kept:
            yield [folder for folder, _image in kept], [image for _folder, image in kept]


def run_predict_ray(args: argparse.Namespace) -> int:
    """`predict --engine ray`: the same inputs and settings, run by maskseg.scale on Ray."""
    from maskseg.scale.plan import JobSettings
    from maskseg.scale.ray_job import RayOptions, import_ray, run_ray_predict

    import_ray()  # without Ray, say how to install it before listing any input
    sources, refused = expand_inputs(args.inputs)
    if not sources and not refused:
        print("error: no images to segment.", file=sys.stderr)
        return 1
    settings = JobSettings(
        out=str(args.out), model=args.model, checkpoint=str(args.checkpoint) if args.checkpoint else None,
        device=args.device, backend=args.backend, precision=args.precision, max_pixels=args.max_pixels,
        score_threshold=args.threshold, mask_threshold=args.mask_threshold,
        classes=tuple(c.strip() for c in args.classes.split(",") if c.strip()), max_detections=args.max_detections,
        batch_size=args.batch_size, opacity=args.opacity,
        layers=(not args.no_masks, not args.no_contours, not args.no_boxes, not args.no_labels),
        output_format=args.output_format,
    )
    options = RayOptions(address=args.address, actors=args.actors or 1,
                         gpus_per_actor=args.gpus_per_actor or 0.0, cpus_per_actor=args.cpus_per_actor)
    return run_ray_predict(sources, refused, settings, options)


def run_predict(args: argparse.Namespace) -> int:
    """Segment every input, write bundles, name each failure; exit 1 if any input failed."""
    from tqdm import tqdm

    if args.engine == "ray":
        return run_predict_ray(args)
    ray_only = [flag for flag, value in (("--address", args.address), ("--actors", args.actors),
                ("--gpus-per-actor", args.gpus_per_actor), ("--cpus-per-actor", args.cpus_per_actor),
                ("--format coco", args.output_format == "coco")) if value]
    if ray_only:
        raise UsageError(f"{', '.join(ray_only)} only apply with --engine ray.")

    from maskseg.engine.export import write_bundle
    from maskseg.engine.render import RenderOptions
    from maskseg.engine.segmenter import Segmenter

    sources, failures = expand_inputs(args.inputs)
    for name, reason in failures:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    if not sources:
        print("error: no images to segment.", file=sys.stderr)
        return 1
    segmenter = Segmenter(model=args.model, checkpoint=args.checkpoint, device=args.device,
                          max_pixels=args.max_pixels, backend=args.backend, precision=args.precision)
    options = RenderOptions(
        opacity=args.opacity, masks=not args.no_masks, contours=not args.no_contours,
        boxes=not args.no_boxes, labels=not args.no_labels,
    )
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    objects = written = 0
    started = time.perf_counter()
    bar = tqdm(total=len(sources), unit="image", disable=len(sources) < 2, file=sys.stderr)

    def failed(name: str, reason: str) -> None:
        failures.append((name, reason))
        tqdm.write(f"failed {name}: {reason}", file=sys.stderr)
        bar.update(1)

    for folders, batch in image_batches(sources, args.max_pixels, args.batch_size, failed):
        predictions = segmenter.predict(
            batch, score_threshold=args.threshold, mask_threshold=args.mask_threshold,
            classes=classes or None, max_detections=args.max_detections, batch_size=len(batch),
        )
        for folder, prediction in zip(folders, predictions):
            write_bundle(prediction, args.out / folder, options)
            objects += len(prediction.instances)
            written += 1
            if len(sources) == 1:
                print(f"{prediction.image_name}: {prediction.summary()}")
            bar.update(1)
    bar.close()
    elapsed = time.perf_counter() - started
    summary = (
        f"Segmented {written} of {written + len(failures)} inputs: {objects} objects above "
        f"{args.threshold:.2f}, bundles in {args.out} ({elapsed:.1f} s, {segmenter.loaded.title} "
        f"on {segmenter.loaded.device_name})."
    )
    print(summary)
    if failures:
        print(f"{len(failures)} failed:", file=sys.stderr)
        for name, reason in failures:
            print(f"  {name}: {reason}", file=sys.stderr)
        return 1
    return 0


def add_video_command(subparsers: argparse._SubParsersAction) -> None:
    """`video IN... --out DIR`: an overlay MP4, COCO JSON and CSV per clip."""
    from maskseg.engine.video import DEFAULT_VIDEO_MAX_PIXELS

    video = subparsers.add_parser(
        "video", help="segment and track objects in video clips",
        description="Segment every frame (or every Nth) of each clip and write DIR/<clip>_maskseg.mp4 (H.264 "
        "overlay, one colour per tracked object, the clip's audio), <clip>_objects.json (COCO, one image per "
        "frame, track_id per object) and <clip>_objects.csv (frame, time, then the predict columns).",
    )
    video.add_argument("inputs", nargs="+", type=Path, metavar="CLIP_OR_DIR")
    video.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the outputs")
    add_model_arguments(video)
    add_filter_arguments(video, per="frame")
    video.add_argument("--stride", type=positive_int, default=1, help="segment every Nth frame (default 1: all)")
    video.add_argument("--max-seconds", type=float, default=None, help="segment only the first S seconds")
    video.add_argument("--max-pixels", type=positive_int, default=DEFAULT_VIDEO_MAX_PIXELS,
                       help="refuse clips with larger frames (default 3840×2160)")
    video.add_argument("--opacity", type=fraction, default=0.5, help="mask fill opacity in the overlay")
    for layer in ("masks", "contours", "boxes", "labels"):
        video.add_argument(f"--no-{layer}", action="store_true", help=f"do not draw {layer} on the overlay")
    video.set_defaults(handler=run_video)


def run_video(args: argparse.Namespace) -> int:
    """Segment each clip with a progress bar; a bad clip is named with its reason; exit 1 if any failed."""
    from tqdm import tqdm

    from maskseg.engine.render import RenderOptions
    from maskseg.engine.segmenter import Segmenter
    from maskseg.engine.video import VideoSettings, segment_video, video_inputs

    clips = video_inputs(args.inputs)
    if not clips:
        print("error: no video clips to segment.", file=sys.stderr)
        return 1
    segmenter = Segmenter(model=args.model, checkpoint=args.checkpoint, device=args.device,
                          backend=args.backend, precision=args.precision)
    settings = VideoSettings(
        score_threshold=args.threshold, mask_threshold=args.mask_threshold,
        classes=tuple(c.strip() for c in args.classes.split(",") if c.strip()), max_detections=args.max_detections,
        render=RenderOptions(opacity=args.opacity, masks=not args.no_masks, contours=not args.no_contours,
                             boxes=not args.no_boxes, labels=not args.no_labels),
        frame_stride=args.stride, max_seconds=args.max_seconds, max_pixels=args.max_pixels,
    )
    failures = []
    for clip in clips:
        with tqdm(unit="frame", desc=clip.name, file=sys.stderr) as bar:
            def report(progress) -> None:
                bar.total = progress.total
                bar.update(progress.done - bar.n)
            try:
                result = segment_video(segmenter, clip, args.out, settings, progress=report)
            except MaskSegError as exc:
                if isinstance(exc, UsageError):
                    raise
                failures.append((clip.name, str(exc)))
                continue
        print(result.summary())
        print(f"  {result.video_path}\n  {result.json_path}\n  {result.csv_path}")
    for name, reason in failures:
        print(f"failed {name}: {reason}", file=sys.stderr)
    return 1 if failures else 0


def run_models(_args: argparse.Namespace) -> int:
    """Print every known model with its COCO accuracy, size and whether its weights are here."""
    from maskseg.engine.models import list_models

    header = f"{'name':<26} {'box AP':>6} {'mask AP':>7} {'params':>7} {'size':>8}  weights"
    print(header)
    print("-" * len(header))
    for row in list_models():
        box = f"{row['box_ap']:.1f}" if row["box_ap"] is not None else "-"
        mask = f"{row['mask_ap']:.1f}" if row["mask_ap"] is not None else "-"
        params = f"{row['params_m']:.1f}M" if row["params_m"] is not None else "-"
        size = f"{row['size_mb']:.1f} MB" if row["size_mb"] is not None else "-"
        where = f"here ({row['path']})" if row["available"] else f"missing (expected at {row['path']})"
        print(f"{row['name']:<26} {box:>6} {mask:>7} {params:>7} {size:>8}  {where}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run, turn user errors into one line and an exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UsageError as exc:  # a wrong setting, like argparse's own usage errors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MaskSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
