"""install_openvino on the three architectures: a real photo through torchvision's own forward gives
torch's objects (boxes, scores, pasted masks), heads accept zero RoIs, and failures are one line."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO_ROOT
from maskseg.engine.models import build_architecture
from maskseg.errors import MaskSegError, UsageError

ov = pytest.importorskip("openvino")

from maskseg.engine.openvino_parts import OpenVinoUnavailable, install_openvino, openvino_status  # noqa: E402

PHOTO = REPO_ROOT / "assets" / "examples" / "street.jpg"
BOX_TOL = 0.5  # pixels
SCORE_TOL = 1e-4
MIN_IOU = 0.999


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("openvino_cache")


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """street.jpg as torchvision's standard forward takes it: float CHW in [0, 1]."""
    with Image.open(PHOTO) as im:
        rgb = np.asarray(im.convert("RGB"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255


def random_network(architecture: str) -> torch.nn.Module:
    """Seeded random weights: COCO-shaped for the zoo models, 4 classes for tiny."""
    torch.manual_seed(0)
    return build_architecture(architecture, 4 if architecture == "tiny" else 91).eval()


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def assert_same_objects(got: dict, want: dict) -> None:
    """Every torch object has an OpenVINO twin: same class, box within BOX_TOL, score within SCORE_TOL,
    pasted mask IoU >= MIN_IOU. Matched by box, so near-tied scores may swap places."""
    assert len(got["boxes"]) == len(want["boxes"]) > 0
    unmatched = set(range(len(got["boxes"])))
    for i in range(len(want["boxes"])):
        candidates = [j for j in unmatched if got["labels"][j] == want["labels"][i]]
        assert candidates, f"object {i} (class {int(want['labels'][i])}) has no OpenVINO twin"
        j = min(candidates, key=lambda k: float((got["boxes"][k] - want["boxes"][i]).abs().max()))
        unmatched.discard(j)
        assert float((got["boxes"][j] - want["boxes"][i]).abs().max()) <= BOX_TOL, f"object {i}: box moved"
        assert abs(float(got["scores"][j] - want["scores"][i])) <= SCORE_TOL, f"object {i}: score changed"
        iou = mask_iou(got["masks"][j, 0] > 0.5, want["masks"][i, 0] > 0.5)
        assert iou >= MIN_IOU, f"object {i}: mask IoU {iou:.5f}"


@pytest.mark.parametrize("architecture", ["tiny", "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"])
def test_a_photo_gives_torchs_objects(architecture, photo, cache_dir) -> None:
    reference = random_network(architecture)
    converted = copy.deepcopy(reference)
    info = install_openvino(converted, fingerprint=architecture, cache_dir=cache_dir, log=lambda _: None)
    assert info.backend == "openvino" and info.precision == "fp32"
    assert {"backbone", "box_head", "mask_head"} <= set(info.parts)
    assert converted.backbone.out_channels == reference.backbone.out_channels
    with torch.no_grad():
        want, got = reference([photo])[0], converted([photo])[0]
    assert_same_objects(got, want)


def test_v2_conv_box_head_and_mask_head_accept_no_rois(cache_dir) -> None:
    network = random_network("maskrcnn_resnet50_fpn_v2")
    install_openvino(network, fingerprint="maskrcnn_resnet50_fpn_v2", cache_dir=cache_dir, log=lambda _: None)
    heads = network.roi_heads
    with torch.no_grad():
        assert heads.box_head(torch.zeros(0, 256, 7, 7)).shape == (0, 1024)
        assert heads.mask_predictor(heads.mask_head(torch.zeros(0, 256, 14, 14))).shape == (0, 91, 28, 28)
        assert heads.box_head(torch.rand(3, 256, 7, 7)).shape == (3, 1024)


def test_cold_start_says_one_line_and_warm_start_nothing(tmp_path) -> None:
    said: list[str] = []
    first = install_openvino(random_network("tiny"), fingerprint="w1", cache_dir=tmp_path, log=said.append)
    second = install_openvino(random_network("tiny"), fingerprint="w1", cache_dir=tmp_path, log=said.append)
    assert (first.cached, second.cached) == (False, True)
    assert len(said) == 1 and "\n" not in said[0] and str(tmp_path) in said[0]
    assert second.compile_seconds < first.compile_seconds
    said.clear()
    third = install_openvino(random_network("tiny"), fingerprint="w2", cache_dir=tmp_path, log=said.append)
    assert not third.cached and len(said) == 1  # other weights are converted again, never served stale


def test_bf16_gives_the_same_shapes(photo, tmp_path) -> None:
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no bf16")
    network = random_network("tiny")
    info = install_openvino(network, precision="bf16", fingerprint="t", cache_dir=tmp_path, log=lambda _: None)
    assert info.precision == "bf16"
    with torch.no_grad():
        out = network([photo])[0]
    n = len(out["boxes"])
    assert n > 0 and out["masks"].shape == (n, 1, *photo.shape[1:]) and out["scores"].shape == (n,)


def test_unknown_precision_is_refused(tmp_path) -> None:
    with pytest.raises(UsageError, match="fp16"):
        install_openvino(random_network("tiny"), precision="fp16", fingerprint="t", cache_dir=tmp_path)


def test_a_failed_conversion_raises_one_line_and_leaves_torch_in_place(monkeypatch, tmp_path) -> None:
    def broken(*_args, **_kwargs):
        raise RuntimeError("unsupported operation aten::frobnicate")

    monkeypatch.setattr(ov, "convert_model", broken)
    network = random_network("tiny")
    backbone = network.backbone
    with pytest.raises(OpenVinoUnavailable) as caught:
        install_openvino(network, fingerprint="t", cache_dir=tmp_path, log=lambda _: None)
    assert isinstance(caught.value, MaskSegError)
    message = str(caught.value)
    assert "aten::frobnicate" in message and "\n" not in message
    assert network.backbone is backbone  # nothing half-swapped: the caller runs on torch
    assert openvino_status() is None


def test_cache_keeps_the_newest_compiled_blobs_and_models(tmp_path) -> None:
    """Retrained checkpoints must not pile up in the cache: only the newest 32 of each kind stay."""
    import os

    from maskseg.engine.openvino_parts import _prune

    blobs = tmp_path / "compiled"
    blobs.mkdir()
    for index in range(40):
        blob = blobs / f"{index:02d}.blob"
        blob.write_bytes(b"x")
        os.utime(blob, (1_000_000 + index, 1_000_000 + index))
    _prune(blobs, "*.blob", lambda blob: (blob,))
    assert sorted(p.name for p in blobs.iterdir()) == [f"{i:02d}.blob" for i in range(8, 40)]
