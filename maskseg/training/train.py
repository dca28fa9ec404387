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
    """The random state a resumed run restores."""
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}


def _seed_everything(seed: int) -> None:
    """Seed Python's and torch's generators."""
    random.seed(seed)
    torch.manual_seed(seed)


def _make_checkpoint(network: nn.Module, config: TrainConfig, class_names: list[str], metrics: dict, extra: dict | None = None) -> Checkpoint:
    """A copy of the current weights with the run's settings, ready to save."""
    settings = {k: v for k, v in asdict(config).items() if v is not None}
    if config.title:
        settings["title"] = config.title
    state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    return Checkpoint(config.model, list(class_names), state, settings, dict(metrics), extra or {})


@dataclass
class _Run:
    """One run's network, optimiser, data and counters: what its loop, validation and resume file share."""

    config: TrainConfig
    network: nn.Module
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    loader: torch.utils.data.DataLoader
    val_set: InstanceDataset | None
    class_names: list[str]
    device: torch.device
    init_message: str
    step: int = 0
    epoch: int = 0
    elapsed_before: float = 0.0  # seconds spent before a resume
    best: dict[str, float] = field(default_factory=dict)
    running: dict[str, float] = field(default_factory=dict)  # smoothed losses for the bar and the callback
    start: float = field(default_factory=time.monotonic)

    @property
    def steps_per_epoch(self) -> int:
        """Batches in one pass over the training set."""
        return len(self.loader)

    @property
    def total_steps(self) -> int:
        """Steps in the whole step budget (a time budget may end the run sooner)."""
        return self.steps_per_epoch * self.config.epochs

    @property
    def resume_path(self) -> Path:
        """The resumable state Ctrl-C, `stop` and each epoch's end write."""
        return self.config.run_path / "resume.pt"

    @property
    def out_path(self) -> Path:
        """Where the best checkpoint goes."""
        return Path(self.config.out)

    def elapsed(self) -> float:
        """Training seconds, including those before a resume."""
        return self.elapsed_before + time.monotonic() - self.start

    def progress_fraction(self) -> float:
        """How much of the step or time budget is spent (whichever is further), 0..1+."""
        fraction = self.step / max(1, self.total_steps)
        if self.config.max_minutes:
            fraction = max(fraction, self.elapsed() / (self.config.max_minutes * 60))
        return fraction

    def checkpoint(self, metrics: dict, extra: dict | None = None) -> Checkpoint:
        """The current weights as a checkpoint."""
        return _make_checkpoint(self.network, self.config, self.class_names, metrics, extra)


def _prepare_process(config: TrainConfig) -> torch.device:
    """Threads, denormals and seeds for this process; the device to train on."""
    from maskseg.engine.models import resolve_device

    if config.threads:
        torch.set_num_threads(config.threads)
    torch.set_flush_denormal(True)  # denormal floats made some CPU steps many times slower
    _seed_everything(config.seed)
    return resolve_device(config.device)


def _open_datasets(config: TrainConfig) -> tuple[InstanceDataset, InstanceDataset | None]:
    """The training set (with augmentation) and the optional validation set, with matching classes."""
    train_set = open_dataset(config.data, config.data_format)
    if len(train_set) == 0:
        raise MaskSegError(f"Dataset {config.data} holds no images.")
    train_set.transforms = default_transforms(True, config.image_size, config.vertical_flip)
    val_set: InstanceDataset | None = None
    if config.val:
        val_set = open_dataset(config.val, config.data_format)
        if val_set.class_names != train_set.class_names:
            raise MaskSegError("The --val dataset's classes differ from the training dataset's.")
    return train_set, val_set


def _setup_run(config: TrainConfig, log: Callable[[str], None]) -> _Run:
    """Data, network (with its starting weights), optimiser and loader for a new or resumed run."""
    device = _prepare_process(config)
    train_set, val_set = _open_datasets(config)
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
    config.run_path.mkdir(parents=True, exist_ok=True)
    return _Run(config, network, params, optimizer, generator, loader, val_set, class_names, device, init_message)


def _save_resume(run: _Run) -> None:
    """Write the resumable state: weights, optimiser, counters, best metrics, random state."""
    extra = {"optimizer": run.optimizer.state_dict(), "step": run.step, "epoch": run.epoch, "elapsed_s": run.elapsed(), "best": run.best, "rng": _rng_state()}
    save_checkpoint(run.checkpoint(run.best, extra), run.resume_path)


def _load_resume(run: _Run, log: Callable[[str], None]) -> None:
    """Continue from a resumable state (runs/<out name>/resume.pt, or the path given)."""
    config = run.config
    source = run.resume_path if config.resume in ("auto", "True", "1") else Path(str(config.resume))
    state = load_checkpoint(source)
    if state.class_names != run.class_names or state.architecture != config.model:
        raise MaskSegError(f"{source} was trained on other classes or another architecture; it cannot be resumed here.")
    run.network.load_state_dict(state.state_dict)
    run.optimizer.load_state_dict(state.extra["optimizer"])
    run.step, run.epoch = int(state.extra["step"]), int(state.extra["epoch"])
    run.elapsed_before = float(state.extra.get("elapsed_s", 0.0))
    run.best = dict(state.extra.get("best", {}))
    torch.set_rng_state(state.extra["rng"]["torch"])
    run.generator.manual_seed(config.seed + run.epoch)
    log(f"resumed from {source} at step {run.step}, epoch {run.epoch}")


def _validate(run: _Run) -> dict[str, float]:
    """Score the current weights on the validation set with the Segmenter's own evaluation ({} without one)."""
    from maskseg.training.evaluate import evaluate_network

    if run.val_set is None:
        return {}
    result = evaluate_network(run.network, run.val_set, run.class_names, run.device)
    return {k: round(v, 4) for k, v in result.summary().items()}


def _keep_if_best(run: _Run, metrics: dict[str, float]) -> None:
    """Save the weights as the best checkpoint when their mask AP beats the best so far."""
    # without a validation set the latest weights are the best we know
    if not metrics or not run.best or metrics.get("mask_ap", -1) > run.best.get("mask_ap", -1):
        run.best = dict(metrics)
        checkpoint = run.checkpoint(metrics, {"step": run.step, "epoch": run.epoch})
        save_checkpoint(checkpoint, run.out_path, half=run.config.half)


class _LossLog:
    """losses.csv: one row of raw losses per step, flushed often so the curve can be watched."""

    def __init__(self, path: Path, append: bool) -> None:
        self.file = open(path, "a" if append else "w", newline="")
        self.writer = csv.writer(self.file)
        if not append:
            self.writer.writerow(["step", "epoch", "lr", "elapsed_s", "loss", *LOSS_KEYS])

    def write(self, run: _Run, lr: float, values: dict[str, float]) -> None:
        """One step's row (flushed every 20 steps)."""
        losses = (f"{values.get(k, 0):.5f}" for k in LOSS_KEYS)
        self.writer.writerow([run.step, run.epoch, f"{lr:.6g}", f"{run.elapsed():.1f}", f"{values['loss']:.5f}", *losses])
        if run.step % 20 == 0:
            self.flush()

    def flush(self) -> None:
        """Make the rows so far readable by others."""
        self.file.flush()

    def close(self) -> None:
        """Close the file."""
        self.file.close()


def _progress_bar(show: bool, run: _Run) -> Any:
    """A tqdm bar over the step budget, or None."""
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=run.total_steps, initial=run.step, unit="step", dynamic_ncols=True)  # a time budget may end it sooner


def _train_step(run: _Run, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> tuple[float, dict[str, float]]:
    """One optimiser step on one batch at the scheduled learning rate; the rate and the raw losses."""
    lr = learning_rate_at(run.config, run.step, run.progress_fraction())
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    images = [im.to(run.device) for im in images]
    targets = [{k: v.to(run.device) for k, v in t.items()} for t in targets]
    loss_dict = run.network(images, targets)
    loss = sum(loss_dict.values())
    if not torch.isfinite(loss):
        raise MaskSegError(f"Training diverged at step {run.step} (loss {loss.item()}); try a lower --lr.")
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.params, 10.0)
    run.optimizer.step()
    run.step += 1
    values = {k: float(loss_dict[k].detach()) for k in LOSS_KEYS if k in loss_dict}
    values["loss"] = float(loss.detach())
    return lr, values


def _report_step(run: _Run, lr: float, values: dict[str, float], loss_log: _LossLog, bar: Any, callback: Callable[[TrainEvent], None] | None) -> None:
    """Log a step: the CSV row (raw), the bar and the callback (smoothed)."""
    for k, v in values.items():  # smoothed for the bar; the CSV keeps the raw values
        run.running[k] = v if k not in run.running else 0.9 * run.running[k] + 0.1 * v
    loss_log.write(run, lr, values)
    running = run.running
    if bar is not None:
        bar.update(1)
        bar.set_postfix(loss=f"{running['loss']:.3f}", cls=f"{running.get('loss_classifier', 0):.3f}", mask=f"{running.get('loss_mask', 0):.3f}", ep=run.epoch)
    if callback:
        callback(TrainEvent("step", run.step, run.epoch, run.total_steps, run.elapsed(), dict(running), snapshot=lambda: run.checkpoint({})))


def _stop_requested(stop: threading.Event | None) -> bool:
    """Whether the caller asked the run to stop."""
    return stop is not None and stop.is_set()


def _run_epoch(run: _Run, loss_log: _LossLog, bar: Any, callback: Callable[[TrainEvent], None] | None, stop: threading.Event | None) -> bool:
    """One pass over the loader (skipping what a resumed run already did); False when the budget or `stop` cut it short."""
    run.generator.manual_seed(run.config.seed + run.epoch)  # the shuffle order of an epoch survives a resume
    skip = run.step - run.epoch * run.steps_per_epoch  # steps of this epoch already done before a resume
    for batch_index, (images, targets) in enumerate(run.loader):
        if batch_index < skip:
            continue
        if run.progress_fraction() >= 1.0 or _stop_requested(stop):
            return False
        lr, values = _train_step(run, images, targets)
        _report_step(run, lr, values, loss_log, bar, callback)
    return True


def _end_epoch(run: _Run, loss_log: _LossLog, callback: Callable[[TrainEvent], None] | None, log: Callable[[str], None]) -> None:
    """After a full epoch: validate, keep the best weights, write the resumable state, tell the callback."""
    run.epoch += 1
    loss_log.flush()
    metrics = _validate(run)
    if metrics:
        log(f"epoch {run.epoch}: mask AP {metrics['mask_ap']:.3f}, AP50 {metrics['mask_ap50']:.3f}, box AP {metrics['box_ap']:.3f}")
    _keep_if_best(run, metrics)
    _save_resume(run)
    if callback:
        callback(TrainEvent("val", run.step, run.epoch, run.total_steps, run.elapsed(), dict(run.running), metrics))


def _train_loop(run: _Run, loss_log: _LossLog, bar: Any, callback: Callable[[TrainEvent], None] | None, stop: threading.Event | None, log: Callable[[str], None]) -> bool:
    """Epochs until the step or time budget is spent or `stop` is set; True when stopped (state saved)."""
    while run.epoch < run.config.epochs and run.progress_fraction() < 1.0:
        if not _run_epoch(run, loss_log, bar, callback, stop):
            break  # time budget or stop request ended the epoch early
        _end_epoch(run, loss_log, callback, log)
    if _stop_requested(stop):
        _save_resume(run)
        return True
    if run.step > 0 and (run.epoch * run.steps_per_epoch != run.step or not run.best):
        # a time budget ended mid-epoch: validate what we have
        metrics = _validate(run)
        if metrics:
            log(f"final: mask AP {metrics['mask_ap']:.3f}, AP50 {metrics['mask_ap50']:.3f}, box AP {metrics['box_ap']:.3f}")
        _keep_if_best(run, metrics)
    return False


def train(
    config: TrainConfig,
    callback: Callable[[TrainEvent], None] | None = None,
    stop: threading.Event | None = None,
    log: Callable[[str], None] = print,
    show_progress: bool = True,
) -> TrainResult:
    """Train per `config`; returns where the best checkpoint went. Ctrl-C or `stop` saves a resumable state."""
    run = _setup_run(config, log)
    if config.resume:
        _load_resume(run, log)
    loss_log = _LossLog(config.run_path / "losses.csv", append=bool(config.resume))
    run.start = time.monotonic()
    interrupted = False
    bar = _progress_bar(show_progress, run)
    run.network.train()
    try:
        interrupted = _train_loop(run, loss_log, bar, callback, stop, log)
    except KeyboardInterrupt:
        interrupted = True
        _save_resume(run)
        log(f"\ninterrupted: resumable state saved to {run.resume_path}; continue with --resume")
    finally:
        loss_log.close()
        if bar is not None:
            bar.close()
    if not run.out_path.is_file():
        _keep_if_best(run, {})
    if callback:
        callback(TrainEvent("done", run.step, run.epoch, run.total_steps, run.elapsed(), dict(run.running), dict(run.best)))
    return TrainResult(run.out_path, run.step, run.step / max(1, run.steps_per_epoch), run.elapsed(), dict(run.best), run.init_message, interrupted)


def _run(args: argparse.Namespace) -> int:
    """`maskseg train`: train per the flags and print how it ended (exit 130 when stopped)."""
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
