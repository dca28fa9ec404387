"""The "Inside Mask R-CNN" tab: one traced run on the student's photo, every stage of the network
shown from it, a lesson mode for projectors, and the /explain API endpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from maskseg.app import explorer_handlers as run
from maskseg.app import explorer_text as text
from maskseg.app.components import NETWORK, RENDER, pass_upload_path_through, user_error
from maskseg.app.config import AppConfig
from maskseg.app.examples import ExampleSets
from maskseg.app.model_menu import model_choices
from maskseg.errors import MaskSegError


EXPLORER_CSS = """
body.maskseg-lesson #explorer-controls {display: none}
body.maskseg-lesson #explorer-stage-area {font-size: 1.45rem}
body.maskseg-lesson #explorer-stage-area .prose, body.maskseg-lesson #explorer-stage-area .prose * {font-size: 1.45rem !important; line-height: 1.5}
#explorer-nav button {font-size: 1.1rem}
"""

LESSON_JS = "(on) => { document.body.classList.toggle('maskseg-lesson', on); return on; }"


@dataclass
class ExplorerTab:
    model: gr.Dropdown
    state: gr.State


def _controls(config: AppConfig, default_model: str, class_names: list[str], examples: ExampleSets) -> dict[str, Any]:
    with gr.Column(scale=1, elem_id="explorer-controls"):
        image = gr.Image(label="Photo", type="filepath", image_mode=None, sources=["upload", "webcam", "clipboard"],
                         elem_id="explorer-image")
        pass_upload_path_through(image)
        model = gr.Dropdown(choices=model_choices(config), value=default_model, label="Model", elem_id="explorer-model")
        threshold = gr.Slider(0.0, 1.0, value=config.score_threshold, step=0.01, label="Score threshold",
                              elem_id="explorer-threshold", info="Objects the trace follows (press Trace after changing).")
        trace_btn = gr.Button("Trace", variant="primary", elem_id="explorer-run")
        status = gr.Markdown(text.NO_TRACE, elem_id="explorer-status")
        example_columns = examples.build(image, class_names, prefix="explorer-")
    return dict(image=image, model=model, threshold=threshold, trace_btn=trace_btn, status=status,
                example_columns=example_columns)


def _stage_area() -> tuple[dict[str, Any], dict[str, gr.Column]]:
    c: dict[str, Any] = {}
    groups: dict[str, gr.Column] = {}
    with gr.Column(scale=2, elem_id="explorer-stage-area"):
        with gr.Row(elem_id="explorer-nav"):
            c["back"] = gr.Button("◀ Back", elem_id="explorer-back", scale=0, min_width=110)
            c["stage"] = gr.Radio(text.STAGES, value=text.STAGES[0], label="Stage", elem_id="explorer-stage", scale=5)
            c["next"] = gr.Button("Next ▶", elem_id="explorer-next", scale=0, min_width=110)
            c["lesson"] = gr.Checkbox(False, label="Lesson mode (large type, one stage per screen)", elem_id="lesson-mode", scale=2)
        c["caption"] = gr.Markdown(text.caption(text.STAGES[0], None), elem_id="explorer-caption")
        with gr.Column(visible=True, elem_id="stage-input") as groups["Input"]:
            c["input_image"] = gr.Image(label="What the network is given", interactive=False, elem_id="explorer-input-image")
            c["input_facts"] = gr.Markdown(elem_id="explorer-input-facts")
        with gr.Column(visible=False, elem_id="stage-backbone") as groups["Backbone + FPN"]:
            with gr.Row():
                c["level"] = gr.Radio(["P2", "P3", "P4", "P5", "P6 (pool)"], value="P2", label="Level", elem_id="explorer-level")
                c["mode"] = gr.Radio(run.LEVEL_MODES, value=run.LEVEL_MODES[0], label="Show", elem_id="explorer-level-mode")
            c["level_image"] = gr.Image(label="Features at the photo's scale", interactive=False, elem_id="explorer-level-image")
            c["levels_table"] = gr.Markdown(elem_id="explorer-levels")
        with gr.Column(visible=False, elem_id="stage-rpn") as groups["Region proposals"]:
            c["rpn_view"] = gr.Radio(run.RPN_VIEWS, value=run.RPN_VIEWS[0], label="Show", elem_id="explorer-rpn-view")
            c["rpn_image"] = gr.Image(label="Click the photo to move the anchors", interactive=False, elem_id="explorer-rpn-image")
            c["rpn_facts"] = gr.Markdown(elem_id="explorer-rpn-facts")
        with gr.Column(visible=False, elem_id="stage-box") as groups["RoIAlign + box head"]:
            c["object"] = gr.Dropdown(choices=[], label="Object", elem_id="explorer-object")
            c["boxes_image"] = gr.Image(label="Proposal (dashed) and refined box", interactive=False, elem_id="explorer-boxes-image")
            with gr.Row():
                c["crop7"] = gr.Image(label="7×7 RoIAlign features (box head)", interactive=False, elem_id="explorer-crop7")
                c["crop14"] = gr.Image(label="14×14 RoIAlign features (mask head)", interactive=False, elem_id="explorer-crop14")
                c["top_classes"] = gr.Label(num_top_classes=5, label="Top-5 class probabilities", elem_id="explorer-top5")
            c["box_facts"] = gr.Markdown(elem_id="explorer-box-facts")
        with gr.Column(visible=False, elem_id="stage-mask") as groups["Mask head"]:
            c["mask_threshold"] = gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="Mask threshold", elem_id="explorer-mask-threshold")
            with gr.Row():
                c["mask28"] = gr.Image(label="28×28 mask probabilities", interactive=False, elem_id="explorer-mask28")
                c["mask_image"] = gr.Image(label="Pasted into the box and cut at the threshold", interactive=False, elem_id="explorer-mask")
            c["mask_facts"] = gr.Markdown(elem_id="explorer-mask-facts")
        with gr.Column(visible=False, elem_id="stage-result") as groups["Result"]:
            c["result_image"] = gr.Image(label="Objects (click one to follow it)", interactive=False, elem_id="explorer-result")
            c["result_facts"] = gr.Markdown(elem_id="explorer-result-facts")
            with gr.Row():
                c["times"] = gr.BarPlot(x="stage", y="seconds", sort=None, label="Seconds per stage (this run)", elem_id="explorer-times")
                c["stats"] = gr.Dataframe(label="Share of parameters and multiply-adds", interactive=False, elem_id="explorer-stats")
        with gr.Accordion("The trace as JSON (what the /explain API returns)", open=False):
            c["json"] = gr.JSON(elem_id="explorer-json")
            c["files"] = gr.File(file_count="multiple", label="Stage pictures", elem_id="explorer-files", visible=False)
    return c, groups


def build_explorer_tab(config: AppConfig, default_model: str, class_names: list[str], examples: ExampleSets) -> ExplorerTab:
    """Lay out the explorer inside the caller's gr.Tab and wire its events."""
    # Only the session's key lives in gr.State: the trace itself is in run.TRACES, which drops it
    # when the tab closes (launch's unload handler) and caps the bytes all sessions hold.
    state = gr.State(None)
    with gr.Row():
        controls = _controls(config, default_model, class_names, examples)
        c, groups = _stage_area()
    c["status"] = controls["status"]
    view_inputs = [state, c["stage"], c["level"], c["mode"], c["rpn_view"], c["mask_threshold"]]
    outputs = [*groups.values(), *[v for k, v in c.items() if k not in _INPUT_KEYS]]

    def draw(key, stage, level, mode, rpn_view, mask_threshold):
        st = run.TRACES.get(key) if isinstance(key, str) else key
        values = run.stage_outputs(st, stage, level, mode, rpn_view, mask_threshold)
        updates: dict[Any, Any] = {group: gr.Column(visible=name == stage) for name, group in groups.items()}
        updates.update({c[k]: v for k, v in values.items()})
        return updates

    def trace(image, model, threshold, stage, level, mode, rpn_view, mask_threshold, request: gr.Request,
              progress=gr.Progress()):
        progress(0.1, desc="Running the network with every stage recorded…")
        key = getattr(request, "session_hash", None) or "anonymous"
        run.TRACES.drop(key)  # the old trace goes before the new one is made
        try:
            st = run.run_trace(config, image, model, threshold)
        except MaskSegError as exc:
            raise user_error(exc) from None
        run.TRACES.put(key, st)
        updates = draw(st, stage, level, mode, rpn_view, mask_threshold)
        choices = run.object_choices(st)
        updates[c["object"]] = gr.Dropdown(choices=choices, value=st.object_id)
        updates[c["level"]] = gr.Radio(choices=[lv.name for lv in st.trace.levels], value=st.trace.levels[0].name)
        updates[c["json"]] = st.facts
        shown = len(st.trace.view.instances)
        updates[c["status"]] = (f"Traced **{st.trace.model_title}** on {st.trace.runtime}: {shown} object"
                                f"{'s' if shown != 1 else ''} at score ≥ {float(threshold):.2f}. Switch stages freely: "
                                "nothing runs the network again until you press Trace.")
        updates[state] = key
        return updates

    stage_inputs = [c["stage"], c["level"], c["mode"], c["rpn_view"], c["mask_threshold"]]
    c["trace_btn"] = controls["trace_btn"]
    controls["trace_btn"].click(
        trace, [controls["image"], controls["model"], controls["threshold"], *stage_inputs],
        [state, *outputs, c["object"], c["level"]], api_visibility="private", concurrency_id=NETWORK,
        concurrency_limit=1,
    )
    # Loading a model can take long (first download, OpenVINO compile): queued with the network runs.
    controls["model"].input(lambda m: run.example_updates(config, examples, m), [controls["model"]],
                            controls["example_columns"], api_visibility="private", concurrency_id=NETWORK)
    stale = "The photo, model or threshold changed: press **Trace** to look inside the network again."
    for control in (controls["image"], controls["model"], controls["threshold"]):
        control.input(lambda: stale, None, [controls["status"]], api_visibility="private", queue=False)
    for control in (c["stage"], c["level"], c["mode"], c["rpn_view"], c["mask_threshold"]):
        control.change(draw, view_inputs, outputs, api_visibility="private", show_progress="hidden",
                       trigger_mode="always_last", concurrency_id=RENDER, concurrency_limit=4)
    _wire_selection(state, c, view_inputs, outputs, draw)
    _wire_navigation(c)
    _wire_api(config, controls)
    return ExplorerTab(model=controls["model"], state=state)


_INPUT_KEYS = {"back", "next", "lesson", "stage", "level", "mode", "rpn_view", "mask_threshold", "object", "trace_btn"}


def _wire_selection(state, c, view_inputs, outputs, draw) -> None:
    """Clicks on pictures: a point for the anchors, an object on the overlay; the object list."""

    def pick_point(key, stage, level, mode, rpn_view, mask_threshold, evt: gr.SelectData):
        st = run.TRACES.get(key)
        if st is not None and evt.index is not None:
            st.point = (float(evt.index[0]), float(evt.index[1]))
        return draw(key, stage, level, mode, "Anchors at a point", mask_threshold) | {c["rpn_view"]: "Anchors at a point"}

    def pick_object(key, stage, level, mode, rpn_view, mask_threshold, evt: gr.SelectData):
        st = run.TRACES.get(key)
        found = run.object_at(st, *evt.index) if st is not None and evt.index is not None else None
        if found is None:
            return {}
        st.object_id = found
        box_stage = text.STAGES[3]
        return draw(key, box_stage, level, mode, rpn_view, mask_threshold) | {c["stage"]: box_stage, c["object"]: found}

    def choose_object(key, object_id, stage, level, mode, rpn_view, mask_threshold):
        st = run.TRACES.get(key)
        if st is not None and object_id is not None:
            st.object_id = int(object_id)
        return draw(key, stage, level, mode, rpn_view, mask_threshold)

    every = [*outputs, c["rpn_view"], c["stage"], c["object"]]
    c["rpn_image"].select(pick_point, view_inputs, every, api_visibility="private", show_progress="hidden", concurrency_id=RENDER)
    c["result_image"].select(pick_object, view_inputs, every, api_visibility="private", show_progress="hidden", concurrency_id=RENDER)
    c["object"].input(choose_object, [state, c["object"], *view_inputs[1:]], outputs, api_visibility="private",
                      show_progress="hidden", concurrency_id=RENDER)


def _wire_navigation(c) -> None:
    """Back / Next step through the stages; lesson mode is a page style, toggled in the browser."""

    def step(stage: str, delta: int) -> str:
        index = text.STAGES.index(stage) if stage in text.STAGES else 0
        return text.STAGES[min(max(index + delta, 0), len(text.STAGES) - 1)]

    c["back"].click(lambda s: step(s, -1), [c["stage"]], [c["stage"]], api_visibility="private", queue=False)
    c["next"].click(lambda s: step(s, +1), [c["stage"]], [c["stage"]], api_visibility="private", queue=False)
    c["lesson"].change(None, [c["lesson"]], None, js=LESSON_JS, api_visibility="private", queue=False)


def _wire_api(config: AppConfig, controls: dict[str, Any]) -> None:
    """/explain: image, model, score threshold → the trace's JSON summary and its stage pictures."""
    summary_out = gr.JSON(visible=False)
    files_out = gr.File(file_count="multiple", visible=False)

    def explain(image, model, threshold):
        try:
            st = run.run_trace(config, image, model, threshold)
        except MaskSegError as exc:
            raise user_error(exc) from None
        return st.facts, run.explain_files(st)

    api = gr.Button(visible=False, elem_id="api-explain")
    api.click(explain, [controls["image"], controls["model"], controls["threshold"]], [summary_out, files_out],
              api_name="explain", concurrency_id=NETWORK, concurrency_limit=1)
