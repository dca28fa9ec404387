"""Training: the loss falls, checkpoints carry their classes, interrupted runs resume, COCO weights are used when present."""

from __future__ import annotations

import argparse
import csv
import threading
from pathlib import Path

import pytest
import torch

from maskseg.engine.checkpoint import load_checkpoint
from maskseg.training.synth import SHAPE_CLASSES, SynthOptions, generate_dataset
from maskseg.training.train import TrainConfig, TrainEvent, add_cli, build_training_network, train


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shapes")
    return {
        "train": generate_dataset(root / "train", SynthOptions(num_images=8, seed=1, size=96)),
        "val": generate_dataset(root / "val", SynthOptions(num_images=3, seed=2, size=96)),
    }


def _losses(run_dir: Path) -> list[float]:
    with open(run_dir / "losses.csv") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def test_a_few_steps_lower_the_loss_and_the_checkpoint_round_trips(shapes, tmp_path):
    config = TrainConfig(
        data=str(shapes["train"]), val=str(shapes["val"]), out=str(tmp_path / "ck" / "shapes.pt"), epochs=6,
        batch_size=4, warmup_steps=3, run_dir=str(tmp_path / "run"), vertical_flip=True, half=True, title="Test shapes",
        threads=1,  # one thread: two would stall behind anything else running on a small CPU
    )
    result = train(config, log=lambda _m: None, show_progress=False)
    losses = _losses(tmp_path / "run")
    assert result.steps == len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3

    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.architecture == "tiny"
    assert ckpt.class_names == ["__background__", *SHAPE_CLASSES]
    assert ckpt.settings["epochs"] == 6 and ckpt.settings["title"] == "Test shapes"
    assert {"mask_ap", "mask_ap50", "box_ap", "box_ap50"} <= set(ckpt.metrics)
    raw = torch.load(result.checkpoint, weights_only=True)
    assert all(v.dtype != torch.float32 for v in raw["state_dict"].values())  # --half stored fp16

    from maskseg.engine.models import load_model

    loaded = load_model(checkpoint=result.checkpoint, device="cpu")
    assert loaded.class_names == ckpt.class_names and loaded.architecture == "tiny"


def test_stop_saves_a_resumable_state_that_continues(shapes, tmp_path):
    stop = threading.Event()

    def stop_after_three(event: TrainEvent) -> None:
        if event.kind == "step" and event.step == 3:
            stop.set()  # what Ctrl-C or the app's Stop button does

    common = dict(data=str(shapes["train"]), out=str(tmp_path / "r.pt"), epochs=2, batch_size=4, run_dir=str(tmp_path / "run"), warmup_steps=2, threads=1)
    first = train(TrainConfig(**common), callback=stop_after_three, stop=stop, log=lambda _m: None, show_progress=False)
    assert first.interrupted and first.steps == 3
    assert (tmp_path / "run" / "resume.pt").is_file()
    second = train(TrainConfig(**common, resume="auto"), log=lambda _m: None, show_progress=False)
    assert not second.interrupted and second.steps == 4
    with open(tmp_path / "run" / "losses.csv") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == [1, 2, 3, 4]


def test_cli_reports_bad_data_as_a_user_error(tmp_path):
    from maskseg.errors import MaskSegError

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    args = parser.parse_args(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x.pt")])
    with pytest.raises(MaskSegError, match="does not exist"):
        args.handler(args)


def test_transfer_learning_only_when_coco_weights_are_on_disk(tmp_path, monkeypatch):
    from tests.conftest import write_random_zoo_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    messages: list[str] = []
    _, message = build_training_network("maskrcnn_resnet50_fpn", 6, log=messages.append)
    assert "from scratch" in message and messages == [message]

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    write_random_zoo_weights(tmp_path / "home")
    network, message = build_training_network("maskrcnn_resnet50_fpn", 6, log=lambda _m: None)
    assert message.startswith("transfer learning")
    assert network.roi_heads.box_predictor.cls_score.out_features == 6
    assert network.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 6
    reference = torch.load(next((tmp_path / "home").rglob("*.pth")), weights_only=True)
    key = "backbone.body.layer1.0.conv1.weight"
    assert torch.equal(network.state_dict()[key], reference[key])  # the COCO trunk was loaded


def test_train_tab_session_saves_a_checkpoint_the_app_can_list(tmp_path):
    from maskseg.training.session import run_training_session

    torch.set_num_threads(1)
    updates = list(
        run_training_session(minutes=0.05, train_images=8, val_images=2, work_dir=tmp_path / "w", checkpoints_dir=tmp_path / "ck", update_every_s=0.5, preview_every_s=0.5)
    )
    status, frame, preview, report, plot = updates[-1]
    assert status.startswith("Done") and "Segment tab" in status
    saved = list((tmp_path / "ck").glob("*.pt"))
    assert len(saved) == 1 and saved[0].name in status
    assert preview is not None and preview.shape == (256, 256, 3)
    assert "mask" in report and Path(plot).is_file()
    assert set(frame.columns) == {"step", "loss", "series"}
    assert load_checkpoint(saved[0]).settings["title"].startswith("Shapes, tiny")


def test_init_from_copies_only_the_chosen_layers(tmp_path):
    from maskseg.engine.checkpoint import Checkpoint, save_checkpoint
    from maskseg.engine.models import build_architecture
    from maskseg.training.train import _initialise_from

    torch.manual_seed(1)
    source = build_architecture("tiny", 6)
    path = save_checkpoint(Checkpoint("tiny", ["__background__", *SHAPE_CLASSES], source.state_dict()), tmp_path / "src.pt")
    torch.manual_seed(2)
    target = build_architecture("tiny", 6)
    config = TrainConfig(data="unused", out="unused", init_from=str(path), init_prefixes=("backbone.",))
    message = _initialise_from(target, config, log=lambda _m: None)
    assert "backbone." in message
    mine, theirs = target.state_dict(), source.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine if k.startswith("backbone."))
    assert not torch.equal(mine["roi_heads.box_predictor.cls_score.weight"], theirs["roi_heads.box_predictor.cls_score.weight"])
