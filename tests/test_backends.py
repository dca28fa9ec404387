"""The OpenVINO backend: cached conversion, fallback to torch with one line, empty heads, bf16."""

from __future__ import annotations

import copy

import pytest
import torch

from maskseg.engine.backend import resolve_backend
from maskseg.engine.models import LoadedModel, clear_model_cache
from maskseg.engine.tiny import build_tiny_maskrcnn
from maskseg.errors import UsageError


@pytest.fixture(scope="module")
def tiny_network():
    torch.manual_seed(0)
    return build_tiny_maskrcnn(num_classes=4).eval()


def test_auto_means_openvino_on_cpu_and_torch_on_cuda() -> None:
    assert resolve_backend("auto", torch.device("cpu")) == "openvino"
    assert resolve_backend("auto", torch.device("cuda")) == "torch"
    assert resolve_backend("torch", torch.device("cpu")) == "torch"
    with pytest.raises(UsageError, match="runs on the CPU"):
        resolve_backend("openvino", torch.device("cuda"))
    with pytest.raises(UsageError, match="Unknown backend"):
        resolve_backend("tensorrt", torch.device("cpu"))


def test_second_start_uses_the_cache_and_says_nothing(tiny_network, tmp_path) -> None:
    from maskseg.engine.openvino_parts import install_openvino

    said: list[str] = []
    first = install_openvino(copy.deepcopy(tiny_network), fingerprint="tiny", cache_dir=tmp_path, log=said.append)
    assert not first.cached and len(said) == 1 and "first start only" in said[0] and str(tmp_path) in said[0]
    assert set(first.parts) == {"backbone", "rpn_head", "box_head", "mask_head"}
    second = install_openvino(copy.deepcopy(tiny_network), fingerprint="tiny", cache_dir=tmp_path, log=said.append)
    assert second.cached and len(said) == 1


def test_heads_on_openvino_give_torchs_numbers_and_accept_no_rois(tiny_network, tmp_path) -> None:
    from maskseg.engine.openvino_parts import install_openvino

    converted = copy.deepcopy(tiny_network)
    install_openvino(converted, fingerprint="tiny", cache_dir=tmp_path, log=lambda _: None)
    channels = tiny_network.backbone.out_channels
    pooled = torch.randn(5, channels, 7, 7)
    with torch.no_grad():
        expected = tiny_network.roi_heads.box_head(pooled)
        got = converted.roi_heads.box_head(pooled)
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
        assert converted.roi_heads.box_head(pooled[:0]).shape == (0, *expected.shape[1:])
        masks = converted.roi_heads.mask_predictor(converted.roi_heads.mask_head(torch.zeros(0, channels, 14, 14)))
        assert masks.shape == (0, 4, 28, 28)
        image = torch.randn(1, 3, 320, 416)
        for (name, want), (got_name, have) in zip(tiny_network.backbone(image).items(), converted.backbone(image).items()):
            assert name == got_name and torch.allclose(have, want, rtol=1e-4, atol=1e-4)


def test_bf16_runs_where_the_cpu_supports_it(tiny_network, tmp_path) -> None:
    import openvino as ov

    from maskseg.engine.openvino_parts import install_openvino

    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(UsageError, match="no bf16"):
            install_openvino(copy.deepcopy(tiny_network), precision="bf16", fingerprint="t", cache_dir=tmp_path)
        return
    converted = copy.deepcopy(tiny_network)
    info = install_openvino(converted, precision="bf16", fingerprint="tiny", cache_dir=tmp_path, log=lambda _: None)
    assert info.precision == "bf16"
    with torch.no_grad():
        out = converted([torch.rand(3, 200, 260)])[0]
    assert set(out) >= {"boxes", "scores", "labels", "masks"}


def test_a_model_openvino_cannot_convert_runs_on_torch_and_says_why(tiny_network, monkeypatch, capsys, tmp_path) -> None:
    import openvino as ov

    from maskseg.engine.backend import apply_backend

    def broken(*_args, **_kwargs):
        raise RuntimeError("unsupported operation aten::frobnicate")

    monkeypatch.setattr(ov, "convert_model", broken)
    monkeypatch.setenv("MASKSEG_CACHE_DIR", str(tmp_path))  # empty: conversion must be attempted
    loaded = LoadedModel(key="t", title="t", architecture="tiny", network=copy.deepcopy(tiny_network),
                         class_names=["__background__", "a", "b", "c"], device=torch.device("cpu"), source="memory")
    apply_backend(loaded, "openvino", "fp32")
    assert loaded.backend == "torch" and loaded.runtime_name == "torch fp32"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "aten::frobnicate" in err[0] and "Running on torch instead" in err[0]
    assert "aten::frobnicate" in loaded.backend_note


def test_segmenter_names_its_runtime_in_the_status_line(random_weights_home) -> None:
    from maskseg.engine.segmenter import Segmenter

    clear_model_cache()
    segmenter = Segmenter(model="shapes-demo", device="cpu", backend="openvino")
    assert segmenter.loaded.backend == "openvino", segmenter.loaded.backend_note
    prediction = segmenter.predict_one("assets/examples/shapes_1.png", score_threshold=0.5)
    assert "CPU · OpenVINO fp32" in prediction.summary()
