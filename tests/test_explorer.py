"""The stage explorer ("Inside Mask R-CNN") without a browser: /explain's counts follow the model's own
settings, its objects are /segment's, its masks are the download's, its pictures have the documented
sizes, and a photo with no objects gets sentences instead of errors.

The engine-level tests use the offline Shapes demo (small, fast); the API tests use the shared live
server with random COCO-shaped v1 weights (see conftest.py)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT, require_or_skip

SHAPES = sorted((REPO_ROOT / "assets" / "examples").glob("shapes_*.png"))
V1 = "maskrcnn_resnet50_fpn"
MAX_SHOWN = 100  # trace_photo's and /segment's default cap


# ---------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture(scope="module")
def shapes_model():
    """The offline Shapes demo's name, or a skip (a failure in CI) when its checkpoint is missing."""
    from maskseg.engine.models import DEMO_CHECKPOINT, DEMO_MODEL_NAME

    require_or_skip(DEMO_CHECKPOINT.is_file() and bool(SHAPES), f"the offline demo checkpoint {DEMO_CHECKPOINT} is missing")
    return DEMO_MODEL_NAME


def _segmenter(model: str, backend: str = "torch"):
    from maskseg.engine.segmenter import Segmenter

    segmenter = Segmenter(model=model, device="cpu", backend=backend)
    if backend == "openvino":
        require_or_skip(segmenter.loaded.backend == "openvino", f"OpenVINO is not usable here: {segmenter.loaded.backend_note}")
    assert segmenter.loaded.backend == backend
    return segmenter


def assert_counts_follow_the_model(facts: dict, network) -> None:
    """Every count of the summary against the network's own settings and against each other."""
    from maskseg.engine.segmenter import SCORE_FLOOR

    rpn = network.rpn
    assert not network.training
    pre, post = rpn.pre_nms_top_n(), rpn.post_nms_top_n()
    r = facts["rpn"]
    assert (r["pre_nms_top_n"], r["post_nms_top_n"]) == (pre, post)
    assert r["nms_threshold"] == pytest.approx(rpn.nms_thresh)

    per_cell = rpn.anchor_generator.num_anchors_per_location()
    levels = facts["backbone"]["levels"]
    assert r["anchors_per_cell"] == per_cell
    assert len(levels) == len(per_cell) == len(rpn.anchor_generator.sizes)
    anchors_per_level = [a * lv["shape"][1] * lv["shape"][2] for a, lv in zip(per_cell, levels)]
    assert r["anchors"] == sum(anchors_per_level), (r, levels)
    best_per_level = sum(min(pre, n) for n in anchors_per_level)
    assert r["top_k_per_level"] <= best_per_level
    # torchvision's _get_top_n_idx takes exactly min(pre_nms_top_n, anchors) on every level.
    assert r["top_k_per_level"] == best_per_level

    # One image: what survives each step never grows, and the cap is the model's own.
    assert r["anchors"] >= r["top_k_per_level"] >= r["not_small"] >= r["above_floor"] >= r["after_nms"] >= r["kept"] > 0
    assert r["after_nms"] <= r["above_floor"] and r["kept"] <= post
    assert r["kept"] == min(r["after_nms"], post)
    assert r["replay_matches_module"] is True

    heads = network.roi_heads
    b = facts["box_head"]
    num_classes = heads.box_predictor.cls_score.out_features
    assert b["proposals"] == r["kept"], "the box head sees exactly the RPN's kept proposals"
    assert b["class_pairs"] == b["proposals"] * (num_classes - 1)
    assert b["class_pairs"] >= b["above_score_floor"] >= b["not_empty"] >= b["after_class_nms"] >= b["candidates"]
    assert b["candidates"] >= b["real_class_candidates"] >= b["shown"] == len(facts["objects"])
    assert b["shown"] <= MAX_SHOWN
    assert b["score_floor"] == pytest.approx(min(facts["score_threshold"], SCORE_FLOOR))
    assert b["nms_threshold"] == pytest.approx(heads.nms_thresh)
    assert b["replay_matches_module"] is True
    for obj in facts["objects"]:
        assert obj["score"] >= facts["score_threshold"] - 1e-6


def _objects_of(instances) -> list[tuple]:
    return [(i.id, i.category_id, i.class_name, i.score, tuple(i.box)) for i in instances]


# ---------------------------------------------------------------------------------------------
# /explain on the live server (random v1 weights, OpenVINO on this CPU)


@pytest.fixture(scope="module")
def client(app_server):
    from gradio_client import Client

    return Client(app_server, verbose=False)


@pytest.fixture(scope="module")
def explained(client, small_images):
    """/explain's (summary, picture files) for the small street photo at threshold 0."""
    from gradio_client import handle_file

    facts, files = client.predict(
        image=handle_file(str(small_images["street"])), model=V1, threshold=0.0, api_name="/explain"
    )
    return facts, [Path(f) for f in files]


@pytest.mark.server
def test_explain_is_a_named_endpoint(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert "/explain" in endpoints
    assert [p["parameter_name"] for p in endpoints["/explain"]["parameters"]] == ["image", "model", "threshold"]


@pytest.mark.server
def test_explain_counts_follow_the_models_settings(explained, app_server):
    from maskseg.engine.segmenter import Segmenter

    facts, _files = explained
    # The server's own (process-cached) network: same model, device and backend as its config.
    network = Segmenter(model=V1, device="cpu", backend="auto", precision="fp32").loaded.network
    assert facts["rpn"]["post_nms_top_n"] == 1000 and facts["rpn"]["pre_nms_top_n"] == 1000  # v1's test-time settings
    assert_counts_follow_the_model(facts, network)
    assert facts["input"]["photo_size"] == [181, 320]
    assert len(facts["objects"]) > 0, "threshold 0 with random weights still gives objects"


def test_shapes_counts_follow_the_models_settings(shapes_model):
    """A second architecture (the tiny Shapes net: other anchors and caps) on both backends."""
    from maskseg.engine.explain_report import summary
    from maskseg.engine.trace import trace_photo

    for backend in ("torch", "openvino"):
        segmenter = _segmenter(shapes_model, backend)
        facts = summary(trace_photo(segmenter, SHAPES[0], score_threshold=0.3))
        assert_counts_follow_the_model(facts, segmenter.loaded.network)


@pytest.mark.server
def test_explain_objects_are_segments_objects(client, explained, small_images):
    """Same photo, model and threshold: /explain's objects are /segment's (class, score, box)."""
    from gradio_client import handle_file

    facts, _files = explained
    _overlay, table, _legend, _status, _bundle = client.predict(
        image=handle_file(str(small_images["street"])), model=V1, score_threshold=0.0, api_name="/segment"
    )
    rows = table["data"]
    assert len(rows) == len(facts["objects"]) > 0
    for row, obj in zip(rows, facts["objects"]):
        number, name, score, *box = row[:7]
        assert int(number) == obj["id"] and name == obj["class"]
        # The table rounds scores to 4 and boxes to 1 decimal; the summary to 6 and 2.
        assert float(score) == pytest.approx(obj["score"], abs=5e-5 + 1e-6)
        assert [float(v) for v in box] == pytest.approx(obj["box"], abs=0.05 + 0.005 + 1e-6)


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_traced_objects_are_the_segmenters(shapes_model, backend):
    """trace_photo's objects equal a separate Segmenter.predict_one at the same threshold, exactly."""
    from maskseg.engine.segmenter import SCORE_FLOOR
    from maskseg.engine.trace import trace_photo

    segmenter = _segmenter(shapes_model, backend)
    for photo, threshold in ((SHAPES[1], 0.3), (SHAPES[2], 0.02)):
        traced = trace_photo(segmenter, photo, score_threshold=threshold)
        plain = segmenter.predict_one(photo, score_threshold=threshold)
        assert traced.view.instances, f"{photo.name} at {threshold} should show objects"
        assert _objects_of(traced.view.instances) == _objects_of(plain.instances)
        assert set(traced.objects) == {i.id for i in plain.instances}
        for inst in plain.instances:
            assert traced.objects[inst.id].refined_box == tuple(inst.box)
        scores = [i.score for i in traced.view.instances]
        if threshold < SCORE_FLOOR:
            # Below the floor the network runs at the threshold itself: lower scores are shown, and
            # the trace's notes must not claim otherwise.
            assert min(scores) < SCORE_FLOOR
            assert not any(f"down to {SCORE_FLOOR}" in note for note in traced.notes), traced.notes


def test_pasted_mask_is_the_downloads_mask_png(shapes_model, tmp_path):
    """The 28×28 map pasted into the box and cut at the mask threshold is, pixel for pixel, the mask
    PNG the Segment path's bundle writes for that object; the Mask head stage counts those pixels."""
    from maskseg.app.explorer_handlers import ExplorerState, stage_outputs
    from maskseg.app.explorer_text import STAGES
    from maskseg.engine.explain_report import summary
    from maskseg.engine.explain_views import object_mask
    from maskseg.engine.export import mask_file_name, write_bundle
    from maskseg.engine.trace import trace_photo

    segmenter = _segmenter(shapes_model)
    photo, threshold = SHAPES[3], 0.3
    trace = trace_photo(segmenter, photo, score_threshold=threshold)
    state = ExplorerState(trace=trace, facts=summary(trace))
    height, width = trace.photo_size
    compared = 0
    for mask_threshold in (0.5, 0.25, 0.8):
        prediction = segmenter.predict_one(photo, score_threshold=threshold, mask_threshold=mask_threshold)
        folder = write_bundle(prediction, tmp_path / f"bundle-{mask_threshold}")
        assert [i.id for i in prediction.instances] == [i.id for i in trace.view.instances]
        for inst in prediction.instances:
            with Image.open(folder / mask_file_name(inst.id, inst.class_name)) as png:
                assert png.mode == "L" and png.size == (width, height)
                saved = np.asarray(png)
            assert set(np.unique(saved).tolist()) <= {0, 255}
            ours = object_mask(trace, inst.id, mask_threshold).full(height, width)
            assert np.array_equal(saved == 255, ours), f"object {inst.id} at mask threshold {mask_threshold}"
            compared += int(ours.any())
            state.object_id = inst.id
            words = stage_outputs(state, STAGES[4], "P2", "", "", mask_threshold)["mask_facts"]
            assert f"**{int(ours.sum()):,}** pixels" in words, words
    assert compared >= 3, "the comparison needs objects with non-empty masks"


def _picture_sizes_agree(photo_size: tuple[int, int], objects: int, files: list[Path]) -> None:
    """Photo-sized pictures: long side min(960, photo's), the photo's aspect; crops 196²; masks 224²."""
    from maskseg.engine import explain_views as views

    photo_h, photo_w = photo_size
    scale = min(1.0, views.DISPLAY_LONG_SIDE / max(photo_h, photo_w))
    expected = (round(photo_w * scale), round(photo_h * scale))
    assert max(expected) == min(views.DISPLAY_LONG_SIDE, max(photo_h, photo_w))
    names = {f.name for f in files}
    assert {"input.png", "result.png", "rpn_anchors_centre.png", "rpn_proposals_before_nms.png",
            "rpn_proposals_after_nms.png"} <= names
    assert any(n.startswith("backbone_P2") for n in names) and any(n.startswith("rpn_objectness_P6") for n in names)
    per_object = 0
    for path in files:
        with Image.open(path) as im:
            size = im.size
        name = path.name
        if re.fullmatch(r"object_\d+_roialign_(7x7|14x14)\.png", name):
            assert size == (views.CROP_SIZE, views.CROP_SIZE), name
            per_object += 1
        elif re.fullmatch(r"object_\d+_mask_28x28\.png", name):
            assert size == (views.MASK_SIZE, views.MASK_SIZE), name
        elif re.fullmatch(r"object_\d+_mask\.png", name):  # the window around one object
            assert 0 < max(size) <= 480 and size[0] <= photo_w and size[1] <= photo_h, (name, size)
        else:
            assert size == expected, f"{name} is {size[0]}×{size[1]}, not {expected[0]}×{expected[1]}"
    assert per_object == 2 * min(3, objects)


@pytest.mark.server
def test_explain_pictures_have_the_documented_sizes(explained):
    from maskseg.engine.explain_views import DISPLAY_LONG_SIDE

    facts, files = explained
    assert files and all(f.suffix == ".png" and f.is_file() for f in files)
    assert max(facts["input"]["photo_size"]) < DISPLAY_LONG_SIDE  # a small photo: never enlarged
    _picture_sizes_agree(tuple(facts["input"]["photo_size"]), len(facts["objects"]), files)


def test_stage_pictures_have_the_documented_sizes(shapes_model, small_images, tmp_path):
    """A small photo (never enlarged), and a large landscape and portrait (shrunk to 960 px)."""
    from maskseg.app.explorer_handlers import LEVEL_MODES, RPN_VIEWS, ExplorerState, stage_outputs
    from maskseg.app.explorer_text import STAGES
    from maskseg.engine import explain_views as views
    from maskseg.engine.explain_report import stage_pictures, summary
    from maskseg.engine.trace import trace_photo

    segmenter = _segmenter(shapes_model)
    with Image.open(SHAPES[0]) as im:
        shapes = im.convert("RGB")
    photos = {
        "small-landscape": Image.open(small_images["street"]).convert("RGB"),  # 320×181
        "large-landscape": shapes.resize((2000, 1127)),
        "large-portrait": shapes.resize((1001, 1500)),
    }
    for name, picture in photos.items():
        path = tmp_path / f"{name}.png"
        picture.save(path)
        trace = trace_photo(segmenter, path, score_threshold=0.02)
        assert trace.view.instances, name
        _picture_sizes_agree(trace.photo_size, len(trace.view.instances), stage_pictures(trace, tmp_path / name))

        # What the tab shows is the same size as what /explain writes.
        h, w = views.display_size(trace)
        state = ExplorerState(trace=trace, facts=summary(trace), object_id=trace.view.instances[0].id)
        level_names = [lv.name for lv in trace.levels]
        calls = [(STAGES[0], "P2", LEVEL_MODES[0], RPN_VIEWS[0])]
        calls += [(STAGES[1], level, mode, RPN_VIEWS[0]) for level in (level_names[0], level_names[-1]) for mode in LEVEL_MODES]
        calls += [(STAGES[2], level_names[1], LEVEL_MODES[0], view) for view in RPN_VIEWS]
        calls += [(stage, "P2", LEVEL_MODES[0], RPN_VIEWS[0]) for stage in STAGES[3:]]
        shown = {}
        for stage, level, mode, rpn_view in calls:
            out = stage_outputs(state, stage, level, mode, rpn_view, 0.5)
            shown.update({k: v for k, v in out.items() if isinstance(v, np.ndarray)})
            for key in ("input_image", "level_image", "rpn_image", "boxes_image", "result_image"):
                if key in out:
                    assert out[key].shape[:2] == (h, w), (name, stage, key, out[key].shape)
        assert shown["crop7"].shape[:2] == shown["crop14"].shape[:2] == (views.CROP_SIZE,) * 2
        assert shown["mask28"].shape[:2] == (views.MASK_SIZE,) * 2


def test_click_on_the_result_picks_the_object_under_it(shapes_model, tmp_path):
    """object_at reads coordinates of the Result picture (as Gradio's select event gives them), also
    for a photo larger than the display size."""
    from maskseg.app.explorer_handlers import ExplorerState, object_at
    from maskseg.engine import explain_views as views
    from maskseg.engine.explain_report import summary
    from maskseg.engine.trace import trace_photo

    segmenter = _segmenter(shapes_model)
    with Image.open(SHAPES[1]) as im:
        big = tmp_path / "big.png"
        im.convert("RGB").resize((1920, 1920)).save(big)
    for photo in (SHAPES[1], big):
        trace = trace_photo(segmenter, photo, score_threshold=0.5)
        state = ExplorerState(trace=trace, facts=summary(trace))
        result = views.result_view(trace)
        rh, rw = result.shape[:2]
        assert (rh, rw) == views.display_size(trace)
        hits = 0
        for inst in trace.view.instances:
            crop = trace.view.mask_crop(inst)
            ys, xs = np.nonzero(crop.pixels)
            if not len(xs):
                continue
            # A pixel of the object's own mask that no higher-scoring mask covers.
            k = len(xs) // 2
            px, py = crop.x0 + xs[k], crop.y0 + ys[k]
            found = object_at(state, (px + 0.5) * rw / trace.photo_size[1], (py + 0.5) * rh / trace.photo_size[0])
            assert found is not None
            if found == inst.id:
                hits += 1
        assert hits >= max(1, len(trace.view.instances) // 2), f"{photo.name}: {hits} of {len(trace.view.instances)}"


def _blank(tmp_path: Path) -> Path:
    path = tmp_path / "blank.png"
    Image.fromarray(np.full((200, 300, 3), 127, np.uint8)).save(path)
    return path


@pytest.mark.parametrize("case", ["threshold-1", "blank-photo"])
def test_no_objects_gets_sentences_not_errors(shapes_model, tmp_path, case):
    from maskseg.app.config import AppConfig
    from maskseg.app.explorer_handlers import LEVEL_MODES, RPN_VIEWS, object_choices, run_trace, stage_outputs
    from maskseg.app.explorer_text import STAGES
    from maskseg.engine.explain_report import stage_pictures

    config = AppConfig(model=shapes_model, device="cpu", backend="torch", checkpoints_dir=tmp_path / "none")
    photo, threshold = (SHAPES[0], 1.0) if case == "threshold-1" else (_blank(tmp_path), 0.5)
    state = run_trace(config, str(photo), shapes_model, threshold)
    assert state.trace.view.instances == [] and state.object_id is None, case
    assert object_choices(state) == []
    assert state.facts["objects"] == [] and state.facts["box_head"]["shown"] == 0
    assert state.facts["mask_head"]["objects"] == 0
    assert state.facts["rpn"]["replay_matches_module"] and state.facts["box_head"]["replay_matches_module"]

    outputs = {stage: stage_outputs(state, stage, "P2", LEVEL_MODES[0], RPN_VIEWS[0], 0.5) for stage in STAGES}
    box, mask, result = outputs[STAGES[3]], outputs[STAGES[4]], outputs[STAGES[5]]
    for words in (box["box_facts"], mask["mask_facts"], result["result_facts"]):
        assert isinstance(words, str) and "No object scores" in words and "lower the score threshold" in words, words
    assert box["crop7"] is None and box["crop14"] is None and box["top_classes"] is None
    assert isinstance(box["boxes_image"], np.ndarray)  # the plain photo
    assert mask["mask28"] is None and mask["mask_image"] is None
    assert isinstance(result["result_image"], np.ndarray)
    for stage, out in outputs.items():
        assert out["caption"].startswith(f"### {STAGES.index(stage) + 1}. {stage}")
    names = {p.name for p in stage_pictures(state.trace, tmp_path / "pictures")}
    assert "result.png" in names and not any(n.startswith("object_") for n in names)


def test_no_photo_is_a_plain_error(tmp_path):
    from maskseg.app.config import AppConfig
    from maskseg.app.explorer_handlers import run_trace, stage_outputs
    from maskseg.app.explorer_text import NO_TRACE, STAGES
    from maskseg.errors import MaskSegError

    with pytest.raises(MaskSegError, match="Pick a photo first"):
        run_trace(AppConfig(device="cpu", checkpoints_dir=tmp_path), None, "shapes-demo", 0.5)
    assert stage_outputs(None, STAGES[3], "P2", "", "", 0.5) == {"status": NO_TRACE}
