"""What the stage explorer does on each event: trace once, then draw only the stage on screen."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import pandas as pd

from maskseg.app import explorer_text as text
from maskseg.app.components import gpu
from maskseg.app.config import AppConfig
from maskseg.app.model_menu import make_segmenter
from maskseg.app.session import NETWORK_RUNS
from maskseg.app.tempfiles import TEMP_FILES
from maskseg.engine import explain_views as views
from maskseg.engine.explain_report import STAGE_ORDER, stage_pictures, summary
from maskseg.engine.trace import Trace, trace_photo
from maskseg.errors import MaskSegError

RPN_VIEWS = ["Anchors at a point", "Objectness", "Proposals before NMS", "Proposals after NMS"]
LEVEL_MODES = ["Principal components (RGB)", "Energy"]
STAGE_KEYS = dict(zip(text.STAGES, STAGE_ORDER))


@dataclass
class ExplorerState:
    """A session's trace and where the student is looking; the trace is dropped with the session."""

    trace: Trace
    facts: dict[str, Any]
    point: tuple[float, float] | None = None  # display pixels of the last click on the proposals view
    object_id: int | None = None


class TraceStore:
    """Each session's trace, kept on the server so it goes the moment its tab closes (Gradio keeps a
    closed session's gr.State for an hour); past the byte cap the least recently used go first."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, ExplorerState] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, session: str, state: ExplorerState) -> None:
        with self._lock:
            self._items.pop(session, None)
            self._items[session] = state
            while len(self._items) > 1 and self.total_bytes() > self.max_bytes:
                self._items.popitem(last=False)

    def get(self, session: str | None) -> ExplorerState | None:
        with self._lock:
            state = self._items.get(session or "")
            if state is not None:
                self._items.move_to_end(session)
            return state

    def drop(self, session: str | None) -> None:
        with self._lock:
            self._items.pop(session or "", None)

    def total_bytes(self) -> int:
        return sum(state.trace.nbytes() for state in self._items.values())


# A session's trace holds its photo and a few MB (benchmarks/results/explorer.md); 1 GB by default.
TRACES = TraceStore(int(float(os.environ.get("MASKSEG_TRACE_MAX_MB") or 1024) * 2**20))


@gpu(duration=60)
def trace_network(config: AppConfig, image, model: str, threshold: float):
    """The traced run itself (a GPU is asked for here on ZeroGPU, as for the Segment tab's run)."""
    NETWORK_RUNS.add(1)
    return trace_photo(make_segmenter(model, config), image, score_threshold=float(threshold))


def run_trace(config: AppConfig, image, model: str, threshold: float) -> ExplorerState:
    """One traced network run."""
    if image is None:
        raise MaskSegError("Pick a photo first (upload, webcam, clipboard or an example).")
    if not model:
        raise MaskSegError("Pick a model first.")
    trace = trace_network(config, image, model, threshold)
    first = trace.view.instances[0].id if trace.view.instances else None
    return ExplorerState(trace=trace, facts=summary(trace), object_id=first)


def object_choices(state: ExplorerState | None) -> list[tuple[str, int]]:
    if state is None:
        return []
    return [(f"{i.id}: {i.class_name} {i.score:.2f}", i.id) for i in state.trace.view.instances]


def object_at(state: ExplorerState, x: float, y: float) -> int | None:
    """The object under display point (x, y): the one whose mask holds it, else the smallest box."""
    trace = state.trace
    h, w = views.display_size(trace)
    px, py = x * trace.photo_size[1] / w, y * trace.photo_size[0] / h
    view = trace.view
    best, best_area = None, float("inf")
    for inst in view.instances:
        crop = view.mask_crop(inst)
        ix, iy = int(px) - crop.x0, int(py) - crop.y0
        if 0 <= iy < crop.pixels.shape[0] and 0 <= ix < crop.pixels.shape[1] and crop.pixels[iy, ix]:
            return inst.id
        x0, y0, x1, y1 = inst.box
        area = (x1 - x0) * (y1 - y0)
        if x0 <= px <= x1 and y0 <= py <= y1 and area < best_area:
            best, best_area = inst.id, area
    return best


def stage_outputs(state: ExplorerState | None, stage: str, level: str, mode: str, rpn_view: str,
                  mask_threshold: float) -> dict[str, Any]:
    """Values for the components of `stage` only (drawing the other stages would waste the time budget)."""
    if state is None:
        return {"status": text.NO_TRACE}
    trace, facts = state.trace, state.facts
    key = STAGE_KEYS[stage]
    level_index = _level_index(trace, level)
    out: dict[str, Any] = {"caption": text.caption(stage, facts)}
    if key == "input":
        out.update(input_image=views.display_photo(trace), input_facts=text.input_facts(facts))
    elif key == "backbone":
        out.update(level_image=views.level_view(trace, level_index, "energy" if mode == "Energy" else "pca"),
                   levels_table=text.levels_table(facts))
    elif key == "rpn":
        out.update(rpn_image=_rpn_picture(state, level_index, rpn_view), rpn_facts=text.rpn_funnel(facts))
    elif key == "box_head":
        out.update(_box_stage(state, facts))
    elif key == "mask_head":
        out.update(_mask_stage(state, mask_threshold))
    else:
        out.update(_result_stage(state))
    return out


def _level_index(trace: Trace, level: str) -> int:
    names = [lv.name for lv in trace.levels]
    return names.index(level) if level in names else 0


def _rpn_picture(state: ExplorerState, level_index: int, rpn_view: str):
    trace = state.trace
    if rpn_view == "Objectness":
        return views.objectness_view(trace, level_index)
    if rpn_view.startswith("Proposals"):
        return views.proposals_view(trace, after_nms=rpn_view.endswith("after NMS"))
    h, w = views.display_size(trace)
    x, y = state.point or (w / 2, h / 2)
    return views.anchors_view(trace, x, y)


def _no_objects_sentence(state: ExplorerState) -> str:
    return (f"No object scores {state.trace.score_threshold:.2f} or more on this photo: lower the score "
            "threshold and press Trace again to follow one through the heads.")


def _box_stage(state: ExplorerState, facts: dict[str, Any]) -> dict[str, Any]:
    funnel = text.box_funnel(facts)
    if state.object_id not in state.trace.objects:
        return {"box_facts": f"{funnel}\n\n{_no_objects_sentence(state)}", "boxes_image": views.display_photo(state.trace),
                "crop7": None, "crop14": None, "top_classes": None}
    obj = state.trace.objects[state.object_id]
    return {
        "boxes_image": views.object_boxes_view(state.trace, state.object_id),
        "crop7": views.cells_view(obj.box_crop, views.CROP_SIZE),
        "crop14": views.cells_view(obj.mask_crop, views.CROP_SIZE) if obj.mask_crop.size else None,
        "top_classes": obj.top_classes,
        "box_facts": f"{funnel}\n\nObject **{state.object_id}**: its proposal (dashed white) and the box the head refined it to (its colour).",
    }


def _mask_stage(state: ExplorerState, mask_threshold: float) -> dict[str, Any]:
    if state.object_id not in state.trace.objects:
        return {"mask_facts": _no_objects_sentence(state), "mask28": None, "mask_image": None}
    obj = state.trace.objects[state.object_id]
    if obj.mask_probabilities.size == 0:
        return {"mask_facts": "This model has no mask head: it finds boxes only.", "mask28": None, "mask_image": None}
    crop = views.object_mask(state.trace, state.object_id, float(mask_threshold))
    m = obj.mask_probabilities.shape[0]
    return {
        "mask28": views.cells_view(obj.mask_probabilities, views.MASK_SIZE),
        "mask_image": views.mask_view(state.trace, state.object_id, float(mask_threshold)),
        "mask_facts": f"Object **{state.object_id}**: {m}×{m} probabilities → pasted into its box and cut at "
                      f"{float(mask_threshold):.2f} → **{crop.area:,}** pixels.",
    }


def _result_stage(state: ExplorerState) -> dict[str, Any]:
    facts = state.facts
    seconds = facts["seconds"]
    times = pd.DataFrame({"stage": text.STAGES, "seconds": [seconds[k] for k in STAGE_ORDER]})
    params, macs = facts["parameters"], facts["multiply_adds"]
    total_p = max(sum(params.values()), 1)
    total_m = max(sum(macs.values()), 1) if macs else 1
    rows = []
    for name, key in STAGE_KEYS.items():
        if key in params:
            approx = "≈ " if facts.get("multiply_adds_estimated") else ""
            share_m = f"{approx}{100 * macs[key] / total_m:.1f} % ({approx}{macs[key] / 1e9:.2f} G)" if macs else "not counted"
            rows.append([name, f"{100 * params[key] / total_p:.1f} % ({params[key] / 1e6:.2f} M)", share_m])
    stats = pd.DataFrame(rows, columns=["stage", "parameters", "multiply-adds"])
    notes = " ".join(facts["notes"])
    shown = len(state.trace.view.instances)
    sentence = f"{shown} object{'s' if shown != 1 else ''} at score ≥ {state.trace.score_threshold:.2f}." if shown else _no_objects_sentence(state)
    return {"result_image": views.result_view(state.trace), "times": times, "stats": stats,
            "result_facts": f"{sentence} {notes} Runtime: {state.trace.runtime}."}


def explain_files(state: ExplorerState) -> list[str]:
    """Every stage picture as PNGs in a fresh temp folder (for /explain)."""
    folder = TEMP_FILES.new_path("explain", suffix="").parent / "stages"
    return [str(p) for p in stage_pictures(state.trace, folder)]


def example_updates(config: AppConfig, examples, model: str) -> list:
    """The explorer's example rows follow its model, as the Segment tab's do."""
    try:
        names = make_segmenter(model, config).class_names
    except MaskSegError:
        names = []
    return examples.updates_for(names)
