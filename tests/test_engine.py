"""Segmenter -> Prediction -> render/export, on random COCO-shaped weights loaded the real way."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from maskseg.errors import MaskSegError
from maskseg.engine.export import FolderNamer, write_batch_zip, write_bundle, write_bundle_zip
from maskseg.engine.render import RenderOptions, instance_color, render_overlay
from maskseg.engine.verify import check_bundle

PHOTO = Path(__file__).resolve().parent.parent / "assets" / "examples" / "bear.jpg"


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> str:
    """A real photo (bear, COCO val2017), shrunk to 320 px wide to keep the CPU tests quick."""
    image = Image.open(PHOTO)
    image.thumbnail((320, 320))
    path = tmp_path_factory.mktemp("photo") / "bear.jpg"
    image.save(path)
    return str(path)


@pytest.fixture(scope="module")
def segmenter(random_weights_home):
    from maskseg.engine.segmenter import Segmenter

    return Segmenter(model="v1", device="cpu")


@pytest.fixture(scope="module")
def prediction(segmenter, photo):
    return segmenter.predict_one(photo, score_threshold=0.0, max_detections=30)


def test_random_weights_at_threshold_zero_give_detections_inside_the_image(prediction) -> None:
    assert prediction.image.shape == (prediction.height, prediction.width, 3)
    assert 0 < len(prediction.instances) <= 30
    scores = [i.score for i in prediction.instances]
    assert scores == sorted(scores, reverse=True)
    assert [i.id for i in prediction.instances] == list(range(1, len(scores) + 1))
    for inst in prediction.instances:
        x1, y1, x2, y2 = inst.box
        assert 0 <= x1 <= x2 <= prediction.width and 0 <= y1 <= y2 <= prediction.height
        assert inst.class_name not in ("N/A", "__background__")


def test_masks_match_torchvisions_own_postprocessing(segmenter, prediction, photo) -> None:
    """Our lazy crops give exactly the pixels torchvision's paste_masks_in_image gives."""
    net = segmenter.loaded.network
    pixels = np.asarray(Image.open(photo).convert("RGB"))
    tensor = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255
    with torch.inference_mode():
        net.roi_heads.score_thresh = 0.0
        net.roi_heads.detections_per_img = 1000
        output = net([tensor])[0]
    # maskseg never reports COCO's unused 'N/A' ids: the reference drops them, then applies the cap.
    real = torch.tensor([segmenter.loaded.class_names[int(label)] != "N/A" for label in output["labels"]])
    reference = {key: value[real][:30] for key, value in output.items()}
    assert len(reference["scores"]) == len(prediction.instances)
    assert torch.allclose(reference["boxes"], torch.tensor([i.box for i in prediction.instances]), atol=1e-3)
    reference_masks = (reference["masks"][:, 0] > 0.5).numpy()
    ours = prediction.masks()
    assert ours.shape == reference_masks.shape
    differing = (ours != reference_masks).sum()
    assert differing <= ours.size * 1e-4  # bilinear ties at exactly 0.5 may flip a pixel


def test_filter_is_a_subset_with_the_same_ids_and_no_network_run(segmenter, prediction, monkeypatch) -> None:
    median = float(np.median([i.score for i in prediction.instances]))

    def explode(*_args, **_kwargs):
        raise AssertionError("the network ran during filter()")

    monkeypatch.setattr(segmenter.loaded.network, "forward", explode)
    monkeypatch.setattr(segmenter.loaded.network.backbone, "forward", explode)
    kept = prediction.filter(score_threshold=median)
    assert 0 < len(kept.instances) < len(prediction.instances)
    assert all(i.score >= median for i in kept.instances)
    assert [i.id for i in kept.instances] == [i.id for i in prediction.instances[: len(kept.instances)]]
    assert kept.table_rows() == prediction.table_rows()[: len(kept.instances)]
    one_class = prediction.instances[0].class_name
    assert {i.class_name for i in prediction.filter(classes=[one_class]).instances} == {one_class}
    assert len(prediction.filter(max_detections=2).instances) == 2


def test_filter_below_the_floor_says_so(segmenter, photo) -> None:
    high = segmenter.predict_one(photo, score_threshold=0.5)
    assert high.score_floor == pytest.approx(0.05)
    assert high.can_filter(0.1) and not high.can_filter(0.01)
    # Going down from 0.5 to 0.1 brings back exactly what a fresh run at 0.1 finds.
    lower = high.filter(score_threshold=0.1)
    fresh = segmenter.predict_one(photo, score_threshold=0.1)
    assert len(lower.instances) > len(high.instances)
    assert [(i.id, i.class_name, round(i.score, 5)) for i in lower.instances] == [
        (i.id, i.class_name, round(i.score, 5)) for i in fresh.instances
    ]
    with pytest.raises(MaskSegError, match="below 0.05"):
        high.filter(score_threshold=0.01)


def test_class_filter_runs_inside_the_model_and_keeps_exact_scores(segmenter, prediction, photo) -> None:
    wanted = prediction.instances[0].class_name
    only = segmenter.predict_one(photo, score_threshold=0.0, classes=[wanted], max_detections=30)
    assert only.instances and {i.class_name for i in only.instances} == {wanted}
    # The best instance of that class has the same score as in the unfiltered run.
    assert only.instances[0].score == pytest.approx(prediction.instances[0].score, abs=1e-5)
    with pytest.raises(MaskSegError, match="Unknown class 'unicorn'"):
        segmenter.predict_one(photo, classes=["unicorn"])


def test_bad_settings_are_user_errors(segmenter, photo) -> None:
    with pytest.raises(MaskSegError, match="score threshold must be between 0 and 1"):
        segmenter.predict_one(photo, score_threshold=1.5)
    with pytest.raises(MaskSegError, match="Maximum objects"):
        segmenter.predict_one(photo, max_detections=0)


def test_batches_keep_input_order_and_sizes(segmenter, photo) -> None:
    small = np.asarray(Image.open(photo).convert("RGB"))[:100, :150]
    results = segmenter.predict([photo, small, photo], score_threshold=0.0, max_detections=3, batch_size=2)
    assert [p.image.shape[:2] for p in results] == [results[0].image.shape[:2], (100, 150), results[0].image.shape[:2]]
    assert [p.image_name for p in results] == ["bear.jpg", "array", "bear.jpg"]
    # The last image ran alone in its batch, exactly as a single call runs it.
    alone = segmenter.predict_one(photo, score_threshold=0.0, max_detections=3)
    assert [i.score for i in results[2].instances] == pytest.approx([i.score for i in alone.instances], abs=1e-4)


def test_large_photos_are_shrunk_before_the_network_but_boxes_are_in_photo_pixels(segmenter, photo) -> None:
    big = np.asarray(Image.open(photo).convert("RGB").resize((2400, 1800)))
    result = segmenter.predict_one(big, score_threshold=0.0, max_detections=5)
    assert result.image.shape == (1800, 2400, 3)
    assert max(i.box[2] for i in result.instances) > 1333  # boxes span the full-size frame
    assert result.masks().shape == (len(result.instances), 1800, 2400)


def test_overlay_is_deterministic_same_size_and_layers_switch_off(prediction) -> None:
    top = prediction.filter(max_detections=5)
    first = render_overlay(top)
    assert first.shape == top.image.shape
    assert np.array_equal(first, render_overlay(top))
    nothing = RenderOptions(masks=False, contours=False, boxes=False, labels=False)
    assert np.array_equal(render_overlay(top, nothing), top.image)
    masks_only = render_overlay(top, RenderOptions(contours=False, boxes=False, labels=False, opacity=1.0))
    inst = top.instances[0]
    mask = top.mask(inst)
    # At full opacity the top instance's pixels (where no other mask is above it) take its colour.
    assert (masks_only[mask] == np.array(instance_color(inst.id))).all(axis=1).mean() > 0.5
    assert np.array_equal(masks_only[~top.masks().any(axis=0)], top.image[~top.masks().any(axis=0)])
    with_boxes = render_overlay(top, RenderOptions(masks=False, contours=False, labels=False))
    assert not np.array_equal(with_boxes, top.image)


def test_instance_colours_are_distinct() -> None:
    colours = [instance_color(i) for i in range(1, 21)]
    assert len(set(colours)) == 20
    distances = [
        np.abs(np.array(a) - np.array(b)).sum() for k, a in enumerate(colours) for b in colours[k + 1 :]
    ]
    assert min(distances) > 40


def test_labels_stay_inside_the_image(segmenter) -> None:
    from maskseg.engine.prediction import Instance, Prediction

    image = np.zeros((60, 80, 3), dtype=np.uint8)
    corner = Instance(1, 1, "person", 0.99, (70.0, 0.0, 80.0, 10.0), torch.ones(28, 28))
    pred = Prediction(image, "tiny.png", [corner], 0.05, 0.5)
    drawn = render_overlay(pred, RenderOptions(masks=False, contours=False, boxes=False))
    assert drawn.any()  # the label was drawn
    ys, xs = np.nonzero(drawn.any(axis=2))
    assert xs.min() < 70  # shifted left to fit, not cut off at the right edge


def test_bundle_files_agree(prediction, tmp_path) -> None:
    pred = prediction.filter(max_detections=12)
    folder = write_bundle(pred, tmp_path / "bear")
    summary = check_bundle(folder)
    assert summary.num_instances == 12
    assert (summary.width, summary.height) == (pred.width, pred.height)
    masks = sorted(p.name for p in (folder / "masks").iterdir())
    assert masks[0].startswith("01_") and len(masks) == 12
    coco = COCO(str(folder / "instances.json"))
    category_ids = {c["id"] for c in coco.loadCats(coco.getCatIds())}
    assert {a["category_id"] for a in coco.loadAnns(coco.getAnnIds())} <= category_ids
    assert 90 in category_ids and 1 in category_ids  # real COCO ids, gaps kept
    label_map = np.asarray(Image.open(folder / "label_map.png"))
    assert label_map.max() <= 12
    # A re-run with fewer objects leaves no stale masks.
    write_bundle(pred.filter(max_detections=3), folder)
    assert len(list((folder / "masks").iterdir())) == 3
    check_bundle(folder)


def test_zips_agree_and_batch_zip_has_a_folder_per_image(prediction, tmp_path) -> None:
    pred = prediction.filter(max_detections=4)
    single = write_bundle_zip(pred, tmp_path / "one.zip")
    assert check_bundle(single).num_instances == 4
    batch = write_batch_zip([pred, pred.filter(max_detections=1)], tmp_path / "all.zip")
    with zipfile.ZipFile(batch) as archive:
        names = archive.namelist()
        tops = sorted({n.split("/")[0] for n in names})
        assert tops == ["bear", "bear_2"]
        document = json.loads(archive.read("bear_2/instances.json"))
        assert len(document["annotations"]) == 1


def test_empty_prediction_still_exports(prediction, tmp_path) -> None:
    none = prediction.filter(score_threshold=1.0)
    assert none.instances == []
    assert "No objects above 1.00; lower the threshold" in none.summary()
    summary = check_bundle(write_bundle(none, tmp_path / "empty"))
    assert summary.num_instances == 0


@pytest.fixture(scope="module")
def rotated_photo(tmp_path_factory) -> str:
    """The bear as a JPEG whose pixels are stored sideways with EXIF "rotate 90° clockwise"."""
    image = Image.open(PHOTO)
    image.thumbnail((240, 240))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path_factory.mktemp("rotated") / "sideways.jpg"
    image.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif.tobytes())
    return str(path)


def _by_id(folder: Path, kind: str) -> dict[int, Path]:
    return {int(p.name.split("_")[0]): p for p in (folder / kind).iterdir()}


def test_cutouts_are_the_photo_inside_each_mask_cropped_tight(segmenter, rotated_photo, tmp_path) -> None:
    pred = segmenter.predict_one(rotated_photo, score_threshold=0.0, max_detections=8)
    folder = write_bundle(pred, tmp_path / "sideways")
    assert check_bundle(folder).num_instances == 8
    # The photo as a person sees it, read independently of maskseg.
    upright = np.asarray(ImageOps.exif_transpose(Image.open(rotated_photo)).convert("RGB"))
    assert upright.shape == pred.image.shape and upright.shape[0] > upright.shape[1]
    masks, cutouts = _by_id(folder, "masks"), _by_id(folder, "cutouts")
    assert sorted(cutouts) == list(range(1, 9))
    assert {i: p.name for i, p in cutouts.items()} == {i: p.name for i, p in masks.items()}
    document = json.loads((folder / "instances.json").read_text())
    for ann in document["annotations"]:
        mask = mask_utils.decode(ann["segmentation"]).astype(bool)
        ys, xs = np.nonzero(mask)
        with Image.open(cutouts[ann["id"]]) as png:
            assert png.mode == "RGBA"
            cutout = np.asarray(png)
        if ys.size == 0:
            assert cutout.shape == (1, 1, 4) and not cutout.any()
            continue
        top, left = ys.min(), xs.min()
        tight = mask[top : ys.max() + 1, left : xs.max() + 1]
        assert cutout.shape[:2] == tight.shape
        assert np.array_equal(cutout[..., 3] > 0, tight)
        assert set(np.unique(cutout[..., 3]).tolist()) <= {0, 255}
        window = upright[top : top + tight.shape[0], left : left + tight.shape[1]]
        assert np.array_equal(cutout[..., :3][tight], window[tight])
        assert not cutout[..., :3][~tight].any()  # nothing of the background rectangle leaks out


def test_an_empty_mask_gives_a_transparent_pixel_not_a_crash(tmp_path) -> None:
    from maskseg.engine.cutouts import cutout_rgba
    from maskseg.engine.prediction import Instance, Prediction

    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    solid = Instance(1, 1, "person", 0.9, (10.0, 5.0, 30.0, 25.0), torch.ones(28, 28))
    empty = Instance(2, 18, "dog", 0.8, (40.0, 10.0, 60.0, 30.0), torch.zeros(28, 28))
    outside = Instance(3, 3, "car", 0.7, (200.0, 200.0, 220.0, 220.0), torch.ones(28, 28))
    pred = Prediction(image, "tiny.png", [solid, empty, outside], 0.05, 0.5)
    assert cutout_rgba(pred, empty).shape == (1, 1, 4) and not cutout_rgba(pred, empty).any()
    folder = write_bundle(pred, tmp_path / "tiny")
    assert check_bundle(folder).num_instances == 3
    assert check_bundle(write_bundle_zip(pred, tmp_path / "tiny.zip")).num_instances == 3
    for name in ("02_dog.png", "03_car.png"):
        with Image.open(folder / "cutouts" / name) as png:
            assert png.size == (1, 1) and png.getpixel((0, 0))[3] == 0
    with Image.open(folder / "cutouts" / "01_person.png") as png:
        solid_cutout = np.asarray(png)
    # An all-ones mask fills its box, so the cut-out is that block of the photo, fully opaque.
    mask = mask_utils.decode(json.loads((folder / "instances.json").read_text())["annotations"][0]["segmentation"])
    ys, xs = np.nonzero(mask)
    assert (solid_cutout[..., 3] == 255).all() and mask.sum() == solid_cutout.shape[0] * solid_cutout.shape[1]
    assert np.array_equal(solid_cutout[..., :3], image[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])


def test_check_bundle_names_a_tampered_missing_extra_or_stale_cutout(prediction, tmp_path) -> None:
    pred = prediction.filter(max_detections=4)
    good = write_bundle(pred, tmp_path / "good")
    check_bundle(good)
    first, second = sorted((good / "cutouts").iterdir())[:2]

    def broken(name: str, change) -> Path:
        folder = shutil.copytree(good, tmp_path / name)
        change(folder)
        return folder

    def punch_hole(folder: Path) -> None:
        pixels = np.asarray(Image.open(folder / "cutouts" / first.name)).copy()
        ys, xs = np.nonzero(pixels[..., 3])
        pixels[ys[0], xs[0], 3] = 0
        Image.fromarray(pixels, "RGBA").save(folder / "cutouts" / first.name)

    cases = {
        "hole": (punch_hole, first.name),
        "missing": (lambda f: (f / "cutouts" / first.name).unlink(), first.name),
        "extra": (lambda f: shutil.copy(f / "cutouts" / first.name, f / "cutouts" / "99_person.png"), "99_person.png"),
        "stale": (lambda f: shutil.copy(f / "cutouts" / second.name, f / "cutouts" / first.name), first.name),
        "opaque": (lambda f: Image.open(f / "cutouts" / first.name).convert("RGB").save(f / "cutouts" / first.name),
                   first.name),
    }
    for case, (change, named) in cases.items():
        with pytest.raises(AssertionError, match=named):
            check_bundle(broken(case, change))
    with pytest.raises(AssertionError, match="no cutouts/ folder"):
        check_bundle(broken("old-format", lambda f: shutil.rmtree(f / "cutouts")))


def test_rewrites_and_zips_carry_one_cutout_per_object(prediction, tmp_path) -> None:
    pred = prediction.filter(max_detections=5)
    folder = write_bundle(pred, tmp_path / "bear")
    write_bundle(pred.filter(max_detections=2), folder)
    assert sorted(_by_id(folder, "cutouts")) == [1, 2]  # no stale cut-outs from the first run
    check_bundle(folder)
    batch = write_batch_zip([pred, pred.filter(max_detections=1)], tmp_path / "all.zip")
    with zipfile.ZipFile(batch) as archive:
        names = archive.namelist()
    for stem, count in (("bear", 5), ("bear_2", 1)):
        cut = sorted(n[len(stem) + 9 :] for n in names if n.startswith(f"{stem}/cutouts/"))
        masks = sorted(n[len(stem) + 7 :] for n in names if n.startswith(f"{stem}/masks/"))
        assert len(cut) == count and cut == masks


def test_bundle_folder_names_stay_inside_the_output_folder() -> None:
    namer = FolderNamer()
    names = [namer.name(stem) for stem in ("..", ".", "", "a\\..\\b", "Cat", "cat", "x:y", "bear")]
    assert names == ["image", "image_2", "image_3", "a_.._b", "Cat", "cat_2", "x_y", "bear"]
