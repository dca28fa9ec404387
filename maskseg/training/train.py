"""Fine-tune or train a Mask R-CNN on a dataset: losses to CSV, validation each epoch, best checkpoint kept."""

from __future__ import annotations

import argparse
import csv
import math
import os
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from maskseg.engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from maskseg.training.datasets import InstanceDataset, collate, default_transforms, open_dataset
from maskseg.errors import MaskSegError

LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
DEFAULT_LR = {"tiny": 2e-3, "maskrcnn_resnet50_fpn": 1e-4, "maskrcnn_resnet50_fpn_v2": 1e-4}


@dataclass
class TrainConfig:
    """Every setting of one training run (stored in the checkpoint's `settings`)."""

    data: str
    out: str
    val: str | None = None
    model: str = "tiny"
    epochs: int = 10
    batch_size: int = 4
    lr: float | None = None
    image_size: int | None = None
    device: str = "auto"
    resume: str | None = None
    threads: int | None = None
    seed: int = 0
    warmup_steps: int = 50
    max_minutes: float | None = None
    half: bool = False
    vertical_flip: bool = False
    data_format: str = "auto"
    run_dir: str | None = None
    title: str | None = None
    model_options: dict[str, Any] | None = None  # extra MaskRCNN kwargs for the tiny model (sampling sizes)
    init_from: str | None = None  # a maskseg checkpoint to start from (same architecture)
    init_prefixes: tuple[str, ...] = ()  # only weights under these names ("backbone."); empty = all that fit

    @property
    def learning_rate(self) -> float:
        """The chosen or the architecture's default learning rate."""
        return self.lr if self.lr is not None else DEFAULT_LR.get(self.model, 1e-4)

    @property
    def run_path(self) -> Path:
        """Where losses.csv and the resumable checkpoint go (gitignored runs/ by default)."""
        return Path(self.run_dir) if self.run_dir else Path("runs") / Path(self.out).stem


@dataclass
class TrainEvent:
    """What a progress callback sees after each step or validation."""

    kind: str  # "step", "val" or "done"
    step: int
    epoch: int
    total_steps: int
    elapsed_s: float
    losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    snapshot: Callable[[], Checkpoint] | None = None


@dataclass
class TrainResult:
    """How a run ended: where the best checkpoint is and its validation metrics."""

    checkpoint: Path
    steps: int
    epochs_done: float
    elapsed_s: float
    metrics: dict[str, float]
    initialisation: str
    interrupted: bool = False


def build_training_network(
    architecture: str, num_classes: int, log: Callable[[str], None] = print, **options: Any
) -> tuple[nn.Module, str]:
    """The network to train: COCO weights with new predictors when on disk, else from scratch (said once)."""
    from maskseg.engine.models import ZOO, build_architecture

    if architecture in ZOO:
        entry = ZOO[architecture]
        if entry.weights_path.is_file():
            from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
            from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

            network = entry.builder(weights=entry.weights, weights_backbone=None)
            box_in = network.roi_heads.box_predictor.cls_score.in_features
            network.roi_heads.box_predictor = FastRCNNPredictor(box_in, num_classes)
            mask_in = network.roi_heads.mask_predictor.conv5_mask.in_channels
            network.roi_heads.mask_predictor = MaskRCNNPredictor(mask_in, 256, num_classes)
            message = f"transfer learning from COCO weights {entry.weights_path.name} (new box and mask predictors)"
            log(message)
            return network, message
        message = f"COCO weights for {architecture} are not on this machine ({entry.weights_path}): training from scratch"
        log(message)
        return build_architecture(architecture, num_classes), message
    if architecture == "tiny":
        message = "training the tiny architecture from scratch"
        log(message)
        return build_architecture("tiny", num_classes, **options), message
    raise MaskSegError(f"Unknown model '{architecture}'; choose tiny, maskrcnn_resnet50_fpn or maskrcnn_resnet50_fpn_v2.")


def _initialise_from(network: nn.Module, config: TrainConfig, log: Callable[[str], None]) -> str:
    """Copy the weights of another checkpoint whose names and shapes fit (transfer learning)."""
    source = load_checkpoint(config.init_from)
    if source.architecture != config.model:
        raise MaskSegError(f"--init-from {config.init_from} is a '{source.architecture}' model, not '{config.model}'.")
    own = network.state_dict()
    taken = {
        k: v for k, v in source.state_dict.items()
        if k in own and own[k].shape == v.shape and (not config.init_prefixes or k.startswith(config.init_prefixes))
    }
    network.load_state_dict(taken, strict=False)
    what = ", ".join(config.init_prefixes) if config.init_prefixes else "every layer that fits"
    message = f"starting from {Path(config.init_from).name} ({len(taken)} tensors: {what}); the rest is new"
    log(message)
    return message


def learning_rate_at(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up, then cosine decay over `progress` (0..1 of the step or time budget)."""
    warm = min(1.0, (step + 1) / max(1, config.warmup_steps))
    return config.learning_rate * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _make_checkpoint(network: nn.Module, config: TrainConfig, class_names: list[str], metrics: dict, extra: dict | None = None) -> Checkpoint:
    settings = {k: v for k, v in asdict(config).items() if v is not None}
    if config.title:
        settings["title"] = config.title
    state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    return Checkpoint(config.model, list(class_names), state, settings, dict(metrics), extra or {})


def train(
    config: TrainConfig,
    callback: Callable[[TrainEvent], None] | None = None,
    stop: threading.Event | None = None,
    log: Callable[[str], None] = print,
    show_progress: bool = True,
) -> TrainResult:
    """Train per `config`; returns where the best checkpoint went. Ctrl-C or `stop` saves a resumable state."""
    from maskseg.training.evaluate import evaluate_network
    from maskseg.engine.models import resolve_device

    if config.threads:
        torch.set_num_threads(config.threads)
    torch.set_flush_denormal(True)  # denormal floats made some CPU steps many times slower
    _seed_everything(config.seed)
    device = resolve_device(config.device)
    train_set = open_dataset(config.data, config.data_format)
    if len(train_set) == 0:
        raise MaskSegError(f"Dataset {config.data} holds no images.")
    train_set.transforms = default_transforms(True, config.image_size, config.vertical_flip)
    val_set: InstanceDataset | None = None
    if config.val:
        val_set = open_dataset(config.val, config.data_format)
        if val_set.class_names != train_set.class_names:
            raise MaskSegError("The --val dataset's classes differ from the training dataset's.")
    class_names = train_set.class_names

    network, init_message = build_training_network(config.model, len(class_names), log, **(config.model_options or {}))
    if config.init_from and not config.resume:
        init_message = _initialise_from(network, config, log)
    network.to(device)
    params = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(config.seed)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=config.batch_size, shuffle=True, collate_fn=collate, generator=generator, num_workers=0, drop_last=len(train_set) > config.batch_size
    )
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * config.epochs
    run_path = config.run_path
    run_path.mkdir(parents=True, exist_ok=True)
    resume_path = run_path / "resume.pt"

    step, epoch, elapsed_before = 0, 0, 0.0
    best: dict[str, float] = {}
    if config.resume:
        source = resume_path if config.resume in ("auto", "True", "1") else Path(config.resume)
        state = load_checkpoint(source)
        if state.class_names != class_names or state.architecture != config.model:
            raise MaskSegError(f"{source} was trained on other classes or another architecture; it cannot be resumed here.")
        network.load_state_dict(state.state_dict)
        optimizer.load_state_dict(state.extra["optimizer"])
        step, epoch = int(state.extra["step"]), int(state.extra["epoch"])
        elapsed_before = float(state.extra.get("elapsed_s", 0.0))
        best = dict(state.extra.get("best", {}))
        torch.set_rng_state(state.extra["rng"]["torch"])
        generator.manual_seed(config.seed + epoch)
        log(f"resumed from {source} at step {step}, epoch {epoch}")

    csv_path = run_path / "losses.csv"
    csv_file = open(csv_path, "a" if config.resume else "w", newline="")
    writer = csv.writer(csv_file)
    if not config.resume:
        writer.writerow(["step", "epoch", "lr", "elapsed_s", "loss", *LOSS_KEYS])
    out_path = Path(config.out)
    start = time.monotonic()
    running: dict[str, float] = {}
    interrupted = False

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - start

    def progress_fraction() -> float:
        frac = step / max(1, total_steps)
        if config.max_minutes:
            frac = max(frac, elapsed() / (config.max_minutes * 60))
        return frac

    def save_resume() -> None:
        ckpt = _make_checkpoint(
            network, config, class_names, best,
            {"optimizer": optimizer.state_dict(), "step": step, "epoch": epoch, "elapsed_s": elapsed(), "best": best, "rng": _rng_state()},
        )
        save_checkpoint(ckpt, resume_path)

    def validate() -> dict[str, float]:
        if val_set is None:
            return {}
        result = evaluate_network(network, val_set, class_names, device)
        return {k: round(v, 4) for k, v in result.summary().items()}

    def keep_if_best(metrics: dict[str, float]) -> None:
        nonlocal best
        # without a validation set the latest weights are the best we know
        if not metrics or not best or metrics.get("mask_ap", -1) > best.get("mask_ap", -1):
            best = dict(metrics)
            save_checkpoint(_make_checkpoint(network, config, class_names, metrics, {"step": step, "epoch": epoch}), out_path, half=config.half)

    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True)  # a time budget may end it sooner
    network.train()
    try:
        while epoch < config.epochs and progress_fraction() < 1.0:
            generator.manual_seed(config.seed + epoch)  # the shuffle order of an epoch survives a resume
            skip = step - epoch * steps_per_epoch  # steps of this epoch already done before a resume
            for batch_index, (images, targets) in enumerate(loader):
                if batch_index < skip:
                    continue
                if progress_fraction() >= 1.0 or (stop is not None and stop.is_set()):
                    break
                lr = learning_rate_at(config, step, progress_fraction())
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images = [im.to(device) for im in images]
                targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
                loss_dict = network(images, targets)
                loss = sum(loss_dict.values())
                if not torch.isfinite(loss):
                    raise MaskSegError(f"Training diverged at step {step} (loss {loss.item()}); try a lower --lr.")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 10.0)
                optimizer.step()
                step += 1
                values = {k: float(loss_dict[k].detach()) for k in LOSS_KEYS if k in loss_dict}
                values["loss"] = float(loss.detach())
                for k, v in values.items():  # smoothed for the bar; the CSV keeps the raw values
                    running[k] = v if k not in running else 0.9 * running[k] + 0.1 * v
                writer.writerow([step, epoch, f"{lr:.6g}", f"{elapsed():.1f}", f"{values['loss']:.5f}", *(f"{values.get(k, 0):.5f}" for k in LOSS_KEYS)])
                if step % 20 == 0:
                    csv_file.flush()  # so the curve can be watched while it trains
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{running['loss']:.3f}", cls=f"{running.get('loss_classifier', 0):.3f}", mask=f"{running.get('loss_mask', 0):.3f}", ep=epoch)
                if callback:
                    callback(TrainEvent("step", step, epoch, total_steps, elapsed(), dict(running), snapshot=lambda: _make_checkpoint(network, config, class_names, {})))
            else:
                epoch += 1
                csv_file.flush()
                metrics = validate()
                if metrics:
                    log(f"epoch {epoch}: mask AP {metrics['mask_ap']:.3f}, AP50 {metrics['mask_ap50']:.3f}, box AP {metrics['box_ap']:.3f}")
                keep_if_best(metrics)
                save_resume()
                if callback:
                    callback(TrainEvent("val", step, epoch, total_steps, elapsed(), dict(running), metrics))
                continue
            break  # time budget or stop request ended the epoch early
        if stop is not None and stop.is_set():
            interrupted = True
            save_resume()
        elif step > 0 and (epoch * steps_per_epoch != step or not best):
            # a time budget ended mid-epoch: validate what we have
            metrics = validate()
            if metrics:
                log(f"final: mask AP {metrics['mask_ap']:.3f}, AP50 {metrics['mask_ap50']:.3f}, box AP {metrics['box_ap']:.3f}")
            keep_if_best(metrics)
    except KeyboardInterrupt:
        interrupted = True
        save_resume()
        log(f"\ninterrupted: resumable state saved to {resume_path}; continue with --resume")
    finally:
        csv_file.close()
        if bar is not None:
            bar.close()
    if not out_path.is_file():
        keep_if_best({})
    if callback:
        callback(TrainEvent("done", step, epoch, total_steps, elapsed(), dict(running), dict(best)))
    return TrainResult(out_path, step, step / max(1, steps_per_epoch), elapsed(), dict(best), init_message, interrupted)


def _run(args: argparse.Namespace) -> int:
    config = TrainConfig(
        data=args.data,
        out=args.out,
        val=args.val,
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        image_size=args.image_size,
        device=args.device,
        resume=args.resume,
        threads=args.threads,
        seed=args.seed,
        warmup_steps=args.warmup_steps,
        max_minutes=args.max_minutes,
        half=args.half,
        vertical_flip=args.vertical_flip,
        data_format=args.format,
        run_dir=args.run_dir,
        title=args.title,
        init_from=args.init_from,
    )
    result = train(config)
    summary = ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items() if k.startswith(("mask_ap", "box_ap")))
    print(f"{'stopped' if result.interrupted else 'done'}: {result.steps} steps in {result.elapsed_s / 60:.1f} min; best checkpoint {result.checkpoint}" + (f" ({summary})" if summary else ""))
    return 130 if result.interrupted else 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register `maskseg train`."""
    parser = subparsers.add_parser("train", help="train or fine-tune a Mask R-CNN on a dataset")
    parser.add_argument("--data", required=True, help="training dataset (COCO, panoptic, YOLO-seg or mask folder)")
    parser.add_argument("--out", required=True, help="where the best checkpoint goes (e.g. checkpoints/shapes.pt)")
    parser.add_argument("--val", help="validation dataset, evaluated each epoch; the best mask AP is kept")
    parser.add_argument("--model", default="tiny", choices=["tiny", "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"])
    parser.add_argument("--format", default="auto", help="dataset format: auto, coco, panoptic, yolo, masks")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, help="peak AdamW learning rate (default 2e-3 tiny, 1e-4 ResNet-50)")
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--image-size", type=int, help="resize training images so the longer side is at most this")
    parser.add_argument("--max-minutes", type=float, help="stop after this many minutes (the cosine schedule fits the budget)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for torch (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--half", action="store_true", help="store the best checkpoint in fp16 (half the size)")
    parser.add_argument("--vertical-flip", action="store_true", help="also flip vertically when augmenting (shapes, aerial views)")
    parser.add_argument("--run-dir", help="folder for losses.csv and resume.pt (default runs/<out name>)")
    parser.add_argument("--title", help="a name for the model, shown in the app's model list")
    parser.add_argument("--resume", nargs="?", const="auto", help="continue from runs/<out name>/resume.pt (or PATH)")
    parser.add_argument("--init-from", help="start from this checkpoint's weights where names and shapes fit (same architecture)")
    parser.set_defaults(handler=_run)
