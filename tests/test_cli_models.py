"""`python -m maskseg predict|models`: bundles, exit codes, failures named; weights and checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from maskseg.engine.checkpoint import Checkpoint, save_checkpoint
from maskseg.errors import CheckpointError, WeightsMissingError
from maskseg.engine.verify import check_bundle

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "assets" / "examples"


def run_cli(*args: str, torch_home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TORCH_HOME": str(torch_home), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "maskseg", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder with two small real photos and one file that is not an image."""
    folder = tmp_path_factory.mktemp("inputs")
    for name in ("bear.jpg", "street.jpg"):
        image = Image.open(EXAMPLES / name)
        image.thumbnail((256, 256))
        image.save(folder / name)
    (folder / "broken.jpg").write_text("not an image")
    return folder


def test_predict_writes_a_bundle_per_image_and_names_the_failure(inputs, random_weights_home, tmp_path) -> None:
    out = tmp_path / "out"
    result = run_cli("predict", str(inputs), "--out", str(out), "--threshold", "0", "--max-detections", "4",
                     torch_home=random_weights_home)
    assert result.returncode == 1, result.stderr
    assert "broken.jpg" in result.stderr and "is not an image" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Segmented 2 of 3 inputs" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["bear", "street"]
    for bundle in out.iterdir():
        assert check_bundle(bundle).num_instances == 4


def test_predict_all_good_exits_zero_with_class_filter(inputs, random_weights_home, tmp_path) -> None:
    photo = inputs / "bear.jpg"
    result = run_cli("predict", str(photo), "--out", str(tmp_path), "--threshold", "0", "--classes", "person,dog",
                     "--max-detections", "3", "--no-boxes", torch_home=random_weights_home)
    assert result.returncode == 0, result.stderr
    assert "bear.jpg:" in result.stdout
    assert set(check_bundle(tmp_path / "bear").class_names) <= {"person", "dog"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "x.jpg", "--out", "o", "--threshold", "2"], "not between 0 and 1"),
        (["predict", "x.jpg"], "--out"),
        (["predict", "x.jpg", "--out", "o", "--batch-size", "0"], "less than 1"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_usage_errors_exit_two(args, message, tmp_path) -> None:
    result = run_cli(*args, torch_home=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr


def test_missing_weights_give_one_sentence_and_exit_one(inputs, tmp_path) -> None:
    empty_home = tmp_path / "empty_home"
    result = run_cli("predict", str(inputs / "bear.jpg"), "--out", str(tmp_path / "o"), "--model", "v1",
                     torch_home=empty_home)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    line = error_lines[0]
    assert "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth" in line
    assert str(empty_home / "hub" / "checkpoints") in line
    assert "--checkpoint" in line


def test_missing_weights_raise_the_user_error_in_python(tmp_path, monkeypatch) -> None:
    from maskseg.engine.models import clear_model_cache, load_model

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    clear_model_cache()
    with pytest.raises(WeightsMissingError, match="maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth"):
        load_model("v2", device="cpu")
    clear_model_cache()


def test_models_lists_each_model_and_whether_its_weights_are_here(random_weights_home) -> None:
    result = run_cli("models", torch_home=random_weights_home)
    assert result.returncode == 0
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[2:]}
    assert "37.9" in lines["maskrcnn_resnet50_fpn"] and "34.6" in lines["maskrcnn_resnet50_fpn"]
    assert "here" in lines["maskrcnn_resnet50_fpn"]
    assert "47.4" in lines["maskrcnn_resnet50_fpn_v2"] and "missing" in lines["maskrcnn_resnet50_fpn_v2"]


def test_auto_picks_v1_on_cpu() -> None:
    from maskseg.engine.models import resolve_model_name

    assert resolve_model_name("auto", torch.device("cpu")) == "maskrcnn_resnet50_fpn"
    assert resolve_model_name("auto", torch.device("cuda")) == "maskrcnn_resnet50_fpn_v2"


def test_checkpoint_loads_with_its_class_names(tmp_path) -> None:
    from maskseg.engine.models import build_architecture
    from maskseg.engine.segmenter import Segmenter

    torch.manual_seed(0)
    network = build_architecture("maskrcnn_resnet50_fpn", num_classes=3)
    path = save_checkpoint(
        Checkpoint("maskrcnn_resnet50_fpn", ["__background__", "circle", "square"], network.state_dict()),
        tmp_path / "shapes.pt", half=True,
    )
    segmenter = Segmenter(checkpoint=path, device="cpu")
    assert segmenter.class_names == ["circle", "square"]
    image = torch.rand(3, 96, 128).mul(255).byte().permute(1, 2, 0).numpy()
    prediction = segmenter.predict_one(image, score_threshold=0.0, max_detections=5)
    assert {i.class_name for i in prediction.instances} <= {"circle", "square"}


def test_untrusted_or_foreign_checkpoints_are_refused_clearly(tmp_path) -> None:
    from maskseg.engine.models import load_model

    class Sneaky:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"x": Sneaky()}, evil)
    with pytest.raises(CheckpointError, match="could not be read as a safe PyTorch file"):
        load_model(checkpoint=evil, device="cpu")
    foreign = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="is not a maskseg checkpoint"):
        load_model(checkpoint=foreign, device="cpu")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(checkpoint=tmp_path / "nope.pt", device="cpu")


def test_wrong_settings_found_after_parsing_also_exit_two(inputs, random_weights_home, tmp_path) -> None:
    for extra, message in ((["--classes", "persn"], "Unknown class 'persn'"), (["--model", "v9"], "Unknown model 'v9'")):
        result = run_cli("predict", str(inputs / "bear.jpg"), "--out", str(tmp_path), *extra,
                         torch_home=random_weights_home)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr


def test_bundle_folders_never_collide(tmp_path, random_weights_home) -> None:
    photo = Image.open(EXAMPLES / "bear.jpg")
    photo.thumbnail((128, 128))
    folder = tmp_path / "in"
    (folder / "x").mkdir(parents=True)
    for name in ("a.jpg", "a.png", "a_2.jpg", "x/a.jpg"):
        photo.save(folder / name)
    out = tmp_path / "out"
    result = run_cli("predict", str(folder), "--out", str(out), "--threshold", "0", "--max-detections", "1",
                     torch_home=random_weights_home)
    assert result.returncode == 0, result.stderr
    bundles = sorted(p.name for p in out.iterdir())
    assert len(bundles) == 4 and len(set(bundles)) == 4


def test_a_slow_model_build_does_not_block_a_loaded_model(random_weights_home, monkeypatch) -> None:
    """While one model is being built (say, downloading), a cached one is still served at once."""
    import threading
    import time

    from maskseg.engine import models

    ready = models.load_model("v1", device="cpu")
    started, release = threading.Event(), threading.Event()

    def slow_build(*_args, **_kwargs):
        started.set()
        release.wait(10)
        raise WeightsMissingError("not here")

    monkeypatch.setattr(models, "_build_model", slow_build)
    worker = threading.Thread(target=lambda: pytest.raises(WeightsMissingError, models.load_model, "v2", device="cpu"))
    worker.start()
    assert started.wait(10)
    began = time.perf_counter()
    assert models.load_model("v1", device="cpu") is ready
    assert time.perf_counter() - began < 1.0
    release.set()
    worker.join(10)


def test_predict_expands_a_zip_into_a_bundle_per_image(inputs, random_weights_home, tmp_path) -> None:
    """A zip works as in the app's Batch tab; a zip lying inside a folder is not expanded."""
    import zipfile

    photos = tmp_path / "photos.zip"
    with zipfile.ZipFile(photos, "w") as archive:
        archive.write(inputs / "bear.jpg", "holiday/bear.jpg")
        archive.write(inputs / "street.jpg", "street.jpg")
        archive.writestr("holiday/notes.txt", "not a photo")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "bear.jpg").write_bytes((inputs / "bear.jpg").read_bytes())
    (folder / "inner.zip").write_bytes(photos.read_bytes())
    out = tmp_path / "out"
    result = run_cli("predict", str(photos), str(folder), "--out", str(out), "--threshold", "0",
                     "--max-detections", "3", torch_home=random_weights_home)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{photos}/holiday/notes.txt: notes.txt is not an image file Pillow can read." in result.stderr
    assert "inner.zip" not in result.stderr + result.stdout
    assert "Segmented 3 of 4 inputs" in result.stdout
    # Three bundles: the zip's two images, and the folder's bear under a name of its own.
    assert sorted(p.name for p in out.iterdir()) == ["bear", "bear_2", "street"]
    for bundle in out.iterdir():
        assert check_bundle(bundle).num_instances == 3
    assert len(list((out / "street" / "cutouts").glob("*.png"))) == 3
