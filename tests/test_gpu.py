"""On a CUDA GPU (`pytest -m gpu`; CI is CPU-only and deselects these): maskseg's answer on the GPU
against torchvision's standard forward on the same GPU, fp16/bf16 autocast against fp32, batch
independence, and GPU memory handed back when a model is dropped."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskseg import Segmenter
from maskseg.engine.models import clear_model_cache
from conftest import write_random_zoo_weights
from test_parity import (
    NOT_OBJECTS, REPO_ROOT, Objects, assert_identical, assert_same_objects, compare, maskseg_objects,
    read_rgb, resized_photo,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run with -m gpu on one)"),
]
MODELS = ["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2", "shapes-demo"]
SHAPES = REPO_ROOT / "assets" / "examples" / "shapes_2.png"


@pytest.fixture(scope="module", autouse=True)
def zoo_home(random_weights_home):
    write_random_zoo_weights(random_weights_home, "maskrcnn_resnet50_fpn_v2", seed=0)
    yield random_weights_home
    clear_model_cache()


def photo_for(model: str) -> np.ndarray:
    return read_rgb(SHAPES) if model == "shapes-demo" else resized_photo((1920, 1080))


def cuda_reference(segmenter: Segmenter, rgb: np.ndarray, score_thresh: float) -> Objects:
    """torchvision's standard forward on the GPU in fp32: uncapped, 'N/A' objects dropped."""
    network, names = segmenter.loaded.network, segmenter.loaded.class_names
    network.roi_heads.score_thresh, network.roi_heads.detections_per_img = score_thresh, 1000
    tensor = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255).cuda()
    with torch.inference_mode():
        out = {k: v.cpu() for k, v in network([tensor])[0].items()}
    keep = [i for i, label in enumerate(out["labels"]) if names[int(label)] not in NOT_OBJECTS]
    return Objects(
        [int(out["labels"][i]) for i in keep], [names[int(out["labels"][i])] for i in keep],
        out["boxes"][keep].numpy().reshape(-1, 4), out["scores"][keep].numpy(),
        list((out["masks"][keep, 0] > 0.5).numpy()),
    )


@pytest.mark.parametrize("model", MODELS)
def test_fp32_on_cuda_matches_torchvision_on_cuda(model) -> None:
    segmenter = Segmenter(model=model, device="cuda", precision="fp32")
    rgb = photo_for(model)
    threshold = 0.3 if model == "shapes-demo" else 0.05
    ours = maskseg_objects(segmenter.predict_one(rgb, score_threshold=threshold, max_detections=1000))
    assert_same_objects(ours, cuda_reference(segmenter, rgb, threshold), f"{model} fp32 on CUDA")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("model", MODELS)
def test_autocast_stays_close_to_fp32_and_says_how_close(model, precision) -> None:
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    rgb = photo_for(model)
    fp32 = maskseg_objects(Segmenter(model=model, device="cuda", precision="fp32").predict_one(rgb, score_threshold=0.5))
    low = maskseg_objects(Segmenter(model=model, device="cuda", precision=precision).predict_one(rgb, score_threshold=0.5))
    problems, stats = compare(low, fp32)
    print(f"{model} {precision} vs fp32 on CUDA: {stats}")  # recorded in the GPU results file
    assert abs(len(low) - len(fp32)) <= max(1, len(fp32) // 10), stats
    assert stats["max_box_diff"] <= 4.0 and stats["max_score_diff"] <= 0.05, stats


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_an_image_gives_the_same_objects_alone_and_batched_on_cuda(precision) -> None:
    segmenter = Segmenter(model="maskrcnn_resnet50_fpn", device="cuda", precision=precision)
    photo, wide = resized_photo((1920, 1080)), resized_photo((2400, 900))
    alone = segmenter.predict_one(photo, score_threshold=0.05)
    batched = segmenter.predict([photo, wide, photo[:, ::-1].copy()], score_threshold=0.05, batch_size=3)[0]
    assert_identical(maskseg_objects(batched), maskseg_objects(alone), f"v1 {precision} batched on CUDA")


def test_dropping_models_hands_gpu_memory_back() -> None:
    clear_model_cache()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    segmenter = Segmenter(model="maskrcnn_resnet50_fpn_v2", device="cuda")
    segmenter.predict_one(resized_photo((1920, 1080)))
    assert torch.cuda.memory_allocated() > before + 100 * 2**20  # the weights are on the GPU
    del segmenter
    clear_model_cache()
    assert torch.cuda.memory_allocated() <= before + 8 * 2**20
    assert torch.cuda.memory_reserved() <= torch.cuda.memory_allocated() + 64 * 2**20  # cache emptied
