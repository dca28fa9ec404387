"""ZeroGPU readiness, checked on the CPU: the app's GPU-decorated calls run in a forked worker
that pickles their arguments and answers, exactly as the `spaces` package's ZeroGPU wrapper
does, and their answers equal the same calls made in-process.

The fake `spaces` package below mirrors spaces 0.51's `zero/wrappers.py`: a fork-context worker,
arguments in and the answer out through multiprocessing queues (pickled), and `GPU(duration=)`.
It also records that every decorated function was given an explicit duration.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from test_video import write_clip

REPO = Path(__file__).resolve().parent.parent
SHAPES = [REPO / "assets" / "examples" / f"shapes_{i}.png" for i in (1, 2, 3)]

FAKE_SPACES = '''
"""A stand-in for Hugging Face's `spaces` package on a ZeroGPU Space (see tests/test_zerogpu.py)."""
import multiprocessing, os, traceback
from functools import partial

DURATIONS = {}
CALLS = []


def _worker(task, args, kwargs, queue, received):
    try:
        queue.put(("ok", task(*args, **kwargs)))  # pickled here, as ZeroGPU's res_queue.put does
    except Exception as exc:  # noqa: BLE001 - reported to the caller like ZeroGPU does
        queue.put(("error", f"{type(exc).__name__}: {exc}\\n{traceback.format_exc()}"))
    # ZeroGPU's worker lives on for the next call; tensors sent through shared memory need it
    # alive until the caller has read them.
    received.wait(120)


def _run_forked(task, *args, **kwargs):
    context = multiprocessing.get_context("fork")
    queue = context.SimpleQueue()
    # Arguments cross pickled, too: ZeroGPU's arg_queue.put(((args, kwargs), ...)).
    import pickle
    args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
    received = context.Event()
    process = context.Process(target=_worker, args=(task, args, kwargs, queue, received))
    process.start()
    status, value = queue.get()
    received.set()
    process.join()
    CALLS.append(task.__name__)
    if status != "ok":
        raise RuntimeError(value)
    return value


def GPU(task=None, *, duration=None, size=None):
    if task is None:
        return partial(GPU, duration=duration, size=size)
    DURATIONS[task.__name__] = duration
    if os.environ.get("SPACES_ZERO_GPU", "").lower() not in ("1", "t", "true"):
        return task
    return partial(_run_forked, task)
'''

SCRIPT = '''
import json, sys
import numpy as np
import gradio as gr
import spaces
from maskseg.app.config import AppConfig
from maskseg.app import components
from maskseg.app.launch import build_app
from maskseg.app.controls import Controls
from maskseg.app.segment_tab import predict_photo
from maskseg.app.batch_tab import predict_photos
from maskseg.app.explorer_handlers import trace_network
from maskseg.app.session import run_network
from maskseg.app.model_menu import make_segmenter
from maskseg.engine.models import _CACHE
from maskseg.engine.trace import trace_photo
from maskseg.engine.explain_report import summary as summary_json

clip, shapes = sys.argv[1], sys.argv[2:]
config = AppConfig(model="shapes-demo", device="cpu", backend="torch", precision="fp32")
build_app(config)
report = {"zero_gpu": components.ZERO_GPU, "preloaded": sorted({k[0] for k in _CACHE})}
segmenter = make_segmenter("shapes-demo", config)


def objects(prediction):
    # The worker runs on one CPU thread (as ZeroGPU's forked workers must): float sums may round
    # differently from the two-thread parent in the last bits, so compare at 1e-4.
    return [(i.id, i.class_name, round(i.score, 4), [round(v, 1) for v in i.box]) for i in prediction.instances]


def masks_equal(a, b):
    return all(np.array_equal(a.mask(x), b.mask(y)) for x, y in zip(a.instances, b.instances))


controls = Controls(score_threshold=0.5)
remote = predict_photo("shapes-demo", config, shapes[0], controls)
local = run_network(segmenter, shapes[0], controls)
report["segment_same_objects"] = objects(remote) == objects(local) and len(local.instances) > 0
report["segment_same_masks"] = masks_equal(remote, local)
# After the worker is gone: a lower threshold and a class filter still get their masks.
low_remote, low_local = remote.filter(score_threshold=0.05), local.filter(score_threshold=0.05)
report["low_threshold_same"] = objects(low_remote) == objects(low_local) and masks_equal(low_remote, low_local)
one_class = local.instances[-1].class_name
cls_remote, cls_local = remote.filter(score_threshold=0.05, classes=[one_class]), local.filter(score_threshold=0.05, classes=[one_class])
report["class_filter_same"] = objects(cls_remote) == objects(cls_local) and masks_equal(cls_remote, cls_local)

batch_remote = predict_photos("shapes-demo", config, 0.5, list(shapes), gr.Progress())
batch_local = segmenter.predict(list(shapes), score_threshold=0.5)
report["batch_same"] = [objects(p) for p in batch_remote] == [objects(p) for p in batch_local] and all(
    masks_equal(a, b) for a, b in zip(batch_remote, batch_local))

trace_remote = trace_network(config, shapes[1], "shapes-demo", 0.5)
trace_local = trace_photo(segmenter, shapes[1], score_threshold=0.5)
def rounded(value):
    """The summary without its timings, numbers at 1e-4 (the worker's one thread rounds differently)."""
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return round(value, 4) if isinstance(value, float) else value


report["explorer_same"] = rounded(summary_json(trace_remote)) == rounded(summary_json(trace_local))
# The Video tab's call, with Gradio's Progress and no stop flag (it cannot reach the worker).
from pathlib import Path
from maskseg.app.video_handlers import ClipProgress, VideoControls, predict_clip
from maskseg.engine.video import segment_video
settings = VideoControls(frame_stride=5).settings(config)
clip_remote = predict_clip("shapes-demo", config, clip, Path("video_remote"), settings, ClipProgress(gr.Progress()),
                           None if components.ZERO_GPU else (lambda: False))
clip_local = segment_video(segmenter, clip, Path("video_local"), settings)
def clip_objects(result):
    return [(a["image_id"], a["category_id"], a.get("track_id"), round(a["score"], 4), [round(v, 1) for v in a["bbox"]])
            for a in json.loads(result.json_path.read_text())["annotations"]]


report["video_same"] = (clip_remote.frames_done == clip_local.frames_done > 0
                        and clip_objects(clip_remote) == clip_objects(clip_local) and len(clip_objects(clip_local)) > 0)
report["calls"] = spaces.CALLS
report["durations"] = {name: (d if isinstance(d, int) else "callable" if callable(d) else None) for name, d in spaces.DURATIONS.items()}
print("REPORT " + json.dumps(report))
'''


def _run(tmp_path: Path, zero_gpu: bool) -> dict:
    """The script above in a fresh process with the fake `spaces` importable."""
    (tmp_path / "spaces").mkdir(exist_ok=True)
    (tmp_path / "spaces" / "__init__.py").write_text(textwrap.dedent(FAKE_SPACES))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]),
        "SPACES_ZERO_GPU": "true" if zero_gpu else "",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(write_clip(tmp_path / "clip.mp4", frames=20)), *map(str, SHAPES)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # so a hung forked worker goes too
    )
    try:
        stdout, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith("REPORT ")]
    assert process.returncode == 0 and lines, stdout[-3000:] + stderr[-6000:]
    return json.loads(lines[-1][len("REPORT "):])


def test_gpu_calls_cross_a_zerogpu_worker_and_answer_the_same(tmp_path) -> None:
    report = _run(tmp_path, zero_gpu=True)
    assert report["zero_gpu"] is True
    assert "shapes-demo" in report["preloaded"]  # built in the main process at start-up
    # each went through the worker
    assert report["calls"] == ["predict_photo", "predict_photos", "trace_network", "predict_clip"]
    for check in ("segment_same_objects", "segment_same_masks", "low_threshold_same", "class_filter_same",
                  "batch_same", "explorer_same", "video_same"):
        assert report[check] is True, check
    durations = report["durations"]
    assert (durations["predict_photo"], durations["predict_photos"], durations["trace_network"],
            durations["predict_clip"]) == (30, "callable", 60, 300)
    assert all(durations.values()), durations  # every GPU call names its duration


def test_without_zerogpu_the_decorator_changes_nothing(tmp_path) -> None:
    report = _run(tmp_path, zero_gpu=False)
    assert report["zero_gpu"] is False and report["calls"] == []
    for check in ("segment_same_objects", "segment_same_masks", "batch_same", "explorer_same", "video_same"):
        assert report[check] is True, check
