"""The GPU path's logic that a CPU can check: precision per device, a batch that runs out of GPU
memory is split (same answer), and a detached prediction survives pickling (ZeroGPU's worker)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from maskseg import Segmenter
from maskseg.engine.backend import check_precision
from maskseg.errors import ImageLoadError, MaskSegError, UsageError
from conftest import REPO_ROOT

SHAPES = [REPO_ROOT / "assets" / "examples" / f"shapes_{i}.png" for i in (1, 2, 3, 4)]
CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def test_precision_follows_the_device(monkeypatch) -> None:
    assert check_precision("auto", CPU) == "fp32"
    assert check_precision("auto", CUDA) == "fp16"  # autocast: the GPU path's default
    assert check_precision(None, CPU) == "fp32"
    assert check_precision("fp32", CUDA) == "fp32"
    with pytest.raises(UsageError, match="fp16 runs on CUDA only"):
        check_precision("fp16", CPU)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(UsageError, match="no bf16 support"):
        check_precision("bf16", CUDA)
    with pytest.raises(UsageError, match="Unknown precision"):
        check_precision("int8", CPU)


def objects(predictions) -> list:
    return [[(i.class_name, i.score, i.box) for i in p.instances] for p in predictions]


def test_a_batch_out_of_gpu_memory_is_split_and_gives_the_same_answer(monkeypatch) -> None:
    segmenter = Segmenter(model="shapes-demo", device="cpu", backend="torch")
    alone = [segmenter.predict_one(path) for path in SHAPES]
    original = Segmenter._run_group
    sizes = []

    def out_of_memory_above_one(self, group, floor, mask_threshold):
        sizes.append(len(group))
        if len(group) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, group, floor, mask_threshold)

    monkeypatch.setattr(Segmenter, "_run_group", out_of_memory_above_one)
    batched = segmenter.predict(SHAPES, batch_size=4)
    assert sizes == [4, 2, 1, 1, 2, 1, 1]  # halved until each part fits
    assert objects(batched) == objects(alone)
    for a, b in zip(batched, alone):
        assert all(np.array_equal(a.mask(x), b.mask(y)) for x, y in zip(a.instances, b.instances))


def test_one_photo_that_cannot_fit_is_one_clear_sentence(monkeypatch) -> None:
    segmenter = Segmenter(model="shapes-demo", device="cpu", backend="torch")

    def always_out_of_memory(self, group, floor, mask_threshold):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(Segmenter, "_run_group", always_out_of_memory)
    with pytest.raises(ImageLoadError, match="does not fit in the GPU's memory even alone"):
        segmenter.predict([SHAPES[0]])


def test_a_detached_prediction_pickles_with_every_mask() -> None:
    segmenter = Segmenter(model="shapes-demo", device="cpu", backend="torch")
    live = segmenter.predict_one(SHAPES[1], score_threshold=0.05, keep_features=True)
    copy = pickle.loads(pickle.dumps(live.detached()))
    assert len(copy.candidates) == len(live.candidates) > 0
    for threshold, classes in ((0.05, None), (0.5, None), (0.05, [live.candidates[-1].class_name])):
        a, b = copy.filter(score_threshold=threshold, classes=classes), live.filter(score_threshold=threshold, classes=classes)
        assert objects([a]) == objects([b])
        assert all(np.array_equal(a.mask(x), b.mask(y)) for x, y in zip(a.instances, b.instances))


def test_a_pickled_prediction_without_its_masks_says_so() -> None:
    segmenter = Segmenter(model="shapes-demo", device="cpu", backend="torch")
    live = segmenter.predict_one(SHAPES[1], score_threshold=0.9, keep_features=True)
    copy = pickle.loads(pickle.dumps(live))  # not detached: only the shown objects' masks went along
    shown = copy.filter(score_threshold=0.9)
    assert all(shown.mask(i).any() for i in shown.instances)
    lower = copy.filter(score_threshold=0.05)
    hidden = [i for i in lower.instances if i.score < 0.9]
    assert hidden, "the photo should have candidates under 0.9"
    with pytest.raises(MaskSegError, match="was not computed"):
        lower.mask(hidden[0])


def test_the_gpu_benchmark_says_it_needs_a_gpu_on_a_cpu() -> None:
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the benchmark would run for real")
    out = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "bench_gpu.py")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "needs a CUDA GPU" in out.stdout


def test_masks_are_computed_under_the_models_autocast() -> None:
    """The mask head runs later than the backbone, on demand: it must run under the same autocast
    (CUDA fp16 in the GPU path; torch bf16 on this CPU), or fp16/bf16 features meet fp32 weights."""
    if not torch.cpu._is_avx512_bf16_supported():
        pytest.skip("this CPU has no bf16")
    fp32 = Segmenter(model="shapes-demo", device="cpu", backend="torch", precision="fp32").predict_one(SHAPES[0])
    bf16 = Segmenter(model="shapes-demo", device="cpu", backend="torch", precision="bf16").predict_one(SHAPES[0])
    def best_iou(instance) -> float:  # bf16 may order close scores differently: match by mask
        mask = fp32.mask(instance)
        return max(((bf16.mask(o) & mask).sum() / (bf16.mask(o) | mask).sum() for o in bf16.instances
                    if o.class_name == instance.class_name), default=0.0)

    confident = [i for i in fp32.instances if i.score > 0.8]
    assert confident and all(bf16.mask(i).any() for i in bf16.instances)
    assert all(best_iou(i) > 0.9 for i in confident)
