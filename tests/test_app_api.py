"""The web app through its HTTP API, as a script would use it (gradio_client against a live server)."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from conftest import APP_MAX_PIXELS, OFFLINE_ENV, REPO_ROOT, app_subprocess, free_port, require_or_skip

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def client(app_server):
    from gradio_client import Client

    return Client(app_server, verbose=False)


def _as_number_or_text(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _same_rows(table_rows, csv_rows):
    assert len(table_rows) == len(csv_rows)
    for got, want in zip(table_rows, csv_rows):
        assert [_as_number_or_text(v) for v in got] == [_as_number_or_text(v) for v in want]


def _csv_rows(data: bytes) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(data.decode())))
    return rows[0], rows[1:]


def test_named_endpoints_are_listed(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert "/segment" in endpoints and "/batch" in endpoints
    names = [p["parameter_name"] for p in endpoints["/segment"]["parameters"]]
    assert names[:3] == ["image", "model", "score_threshold"]


def test_segment_returns_overlay_table_and_agreeing_zip(client, small_images):
    from gradio_client import handle_file

    from maskseg.engine.verify import check_bundle

    photo = small_images["street"]
    overlay, table, legend, status, bundle = client.predict(
        image=handle_file(str(photo)), model="maskrcnn_resnet50_fpn", score_threshold=0.0, api_name="/segment"
    )
    with Image.open(photo) as original, Image.open(overlay) as drawn:
        assert drawn.size == original.size
    rows = table["data"]
    assert table["headers"] == ["#", "class", "score", "x1", "y1", "x2", "y2", "area_px", "area_pct"]
    assert rows, "threshold 0 with random weights should still give detections"
    assert f"Objects: {len(rows)}" in status and "Device: CPU" in status and "Inference:" in status
    check_bundle(bundle)
    with zipfile.ZipFile(bundle) as archive:
        header, csv_rows = _csv_rows(archive.read("objects.csv"))
        assert {"overlay.png", "label_map.png", "instances.json"} <= set(archive.namelist())
        assert len([n for n in archive.namelist() if n.startswith("masks/")]) == len(rows)
    assert header[1:] == table["headers"][1:]
    _same_rows(rows, csv_rows)
    # Colour chips name every object in the table, in the overlay's colours.
    assert legend.count("maskseg-chip") == len(rows)


def test_batch_skips_a_non_image_and_finishes_the_rest(client, small_images, tmp_path):
    from gradio_client import handle_file

    from maskseg.engine.verify import check_bundle

    notes = tmp_path / "notes.txt"
    notes.write_text("this is not a photo")
    photos_zip = tmp_path / "photos.zip"  # a zip of images counts too; its non-images are skipped
    with zipfile.ZipFile(photos_zip, "w") as archive:
        archive.write(small_images["kitchen"], "holiday/kitchen.jpg")
        archive.writestr("holiday/readme.txt", "not a photo either")
    gallery, table, bundle, status = client.predict(
        files=[handle_file(str(small_images["bear"])), handle_file(str(notes)), handle_file(str(photos_zip))],
        model="maskrcnn_resnet50_fpn",
        score_threshold=0.0,
        api_name="/batch",
    )
    assert len(gallery) == 2
    assert "notes.txt" in status and "readme.txt" in status, status
    assert "Skipped 2" in status and "Segmented 2 images" in status, status
    assert table["headers"][0] == "image"
    per_image: dict[str, list] = {}
    for row in table["data"]:
        per_image.setdefault(row[0], []).append(row[1:])
    assert set(per_image) == {"bear", "kitchen"}
    with zipfile.ZipFile(bundle) as archive:
        folders = {name.split("/")[0] for name in archive.namelist()}
        assert folders == {"bear", "kitchen"}
        archive.extractall(tmp_path / "unzipped")
        for stem, rows in per_image.items():
            _, csv_rows = _csv_rows(archive.read(f"{stem}/objects.csv"))
            _same_rows(rows, csv_rows)
    for stem in per_image:
        check_bundle(tmp_path / "unzipped" / stem)


def test_model_menu_lists_checkpoints_and_loads_them(tmp_path):
    """Every checkpoints/*.pt is offered (the Train tab saves there) and loads by its path."""
    import torch

    from maskseg.engine.checkpoint import Checkpoint, save_checkpoint
    from maskseg.engine.models import build_architecture
    from maskseg.app.config import AppConfig
    from maskseg.app.model_menu import make_segmenter, model_choices

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.manual_seed(0)
    names = ["__background__", "circle", "square", "triangle"]
    save_checkpoint(Checkpoint("tiny", names, build_architecture("tiny", len(names)).state_dict()), folder / "mine.pt")
    config = AppConfig(checkpoints_dir=folder)
    choices = dict((value, label) for label, value in model_choices(config))
    assert {"maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2", "shapes-demo"} <= set(choices)
    assert choices[str(folder / "mine.pt")] == "Checkpoint: mine.pt"
    assert make_segmenter(str(folder / "mine.pt"), config).class_names == names[1:]
    (folder / "later.pt").write_bytes((folder / "mine.pt").read_bytes())
    assert str(folder / "later.pt") in dict((v, l) for l, v in model_choices(config))


def test_live_preview_keeps_table_full_resolution(random_weights_home):
    """Slider re-renders draw on a <=1280 px copy; the table still describes the full photo."""
    import numpy as np

    from maskseg.app.controls import Controls
    from maskseg.app.view import preview_prediction, render_view
    from maskseg.app.session import run_network
    from maskseg.app.model_menu import make_segmenter
    from maskseg.app.config import AppConfig

    photo = np.zeros((1600, 2400, 3), dtype=np.uint8)
    photo[400:1200, 600:1800] = (200, 120, 40)
    segmenter = make_segmenter("maskrcnn_resnet50_fpn", AppConfig(device="cpu"))
    base = run_network(segmenter, photo, Controls(score_threshold=0.0))
    preview = preview_prediction(base)
    assert max(preview.image.shape[:2]) == 1280 and len(preview.instances) == len(base.instances)
    controls = Controls(score_threshold=0.0, max_detections=5)
    live = render_view(base, controls, preview=preview)
    full = render_view(base, controls)
    assert live.overlay.shape[:2] == (853, 1280) and full.overlay.shape[:2] == (1600, 2400)
    assert live.rows == full.rows and live.status == full.status
    # The preview shows the same objects, with masks scaled to its size (area ~ scale²).
    from maskseg.app.controls import apply_controls

    small, big = apply_controls(preview, controls), apply_controls(base, controls)
    assert [(i.id, i.class_name) for i in small.instances] == [(i.id, i.class_name) for i in big.instances]
    scale2 = (1280 / 2400) ** 2
    compared = 0
    for small_row, big_row in zip(small.table_rows(), big.table_rows()):
        if big_row[7] >= 2000:  # tiny masks may vanish at preview size; large ones must scale
            assert abs(small_row[7] - big_row[7] * scale2) <= 0.15 * big_row[7] * scale2 + 50
            compared += 1
    assert compared > 0


def _download_blocked() -> bool:
    try:
        with socket.create_connection(("download.pytorch.org", 443), timeout=3):
            return False
    except OSError:
        return True


def test_bad_uploads_give_clear_errors_and_the_server_keeps_working(client, tmp_path, small_images):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    text = tmp_path / "holiday.png"
    text.write_text("not really a png")
    with pytest.raises(AppError, match="not an image"):
        client.predict(image=handle_file(str(text)), score_threshold=0.0, api_name="/segment")

    huge = tmp_path / "huge.png"
    Image.new("RGB", (2000, 1200), "white").save(huge)  # 2.4 MP against the server's 2 MP limit
    assert 2000 * 1200 > APP_MAX_PIXELS
    with pytest.raises(AppError, match="megapixel limit"):
        client.predict(image=handle_file(str(huge)), score_threshold=0.0, api_name="/segment")

    if _download_blocked():  # where the network allows, v2 would simply download (330 MB)
        with pytest.raises(AppError, match="could not be downloaded"):
            client.predict(
                image=handle_file(str(small_images["bear"])), model="maskrcnn_resnet50_fpn_v2",
                score_threshold=0.0, api_name="/segment",
            )

    tiny = tmp_path / "tiny.jpg"
    with Image.open(small_images["tennis"]) as im:
        im.resize((96, 72)).save(tiny)
    overlay, table, _, status, bundle = client.predict(
        image=handle_file(str(tiny)), score_threshold=0.0, api_name="/segment"
    )
    with Image.open(overlay) as drawn:
        assert drawn.size == (96, 72)
    assert "Objects:" in status and Path(bundle).is_file()


def test_fresh_machine_app_starts_offline_and_segments_with_the_demo_model(tmp_path):
    """`python app.py` with no COCO weights and no network: one notice, then the shapes demo works."""
    from maskseg.engine.models import DEMO_CHECKPOINT

    require_or_skip(DEMO_CHECKPOINT.is_file(), f"the offline demo checkpoint {DEMO_CHECKPOINT} is not built yet")
    examples = sorted((REPO_ROOT / "assets" / "examples").glob("shapes_*.png"))
    require_or_skip(bool(examples), "no synthetic shapes example in assets/examples")
    env = {
        **OFFLINE_ENV,
        "TORCH_HOME": str(tmp_path / "empty_torch_home"),
        "MASKSEG_MODEL": "auto", "MASKSEG_DEVICE": "cpu",
        "MASKSEG_CHECKPOINTS_DIR": str(tmp_path / "checkpoints"),
    }
    with app_subprocess(tmp_path, env) as (url, log):
        text = log.read_text()
        assert text.count("could not be downloaded") == 1, text
        assert "Shapes demo" in text
        assert "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth" in text, "the operator's terminal names the file"
        with urllib.request.urlopen(url + "config", timeout=10) as response:
            page_config = json.loads(response.read())
        notices = [c["props"].get("value") or "" for c in page_config["components"] if c["props"].get("elem_id") == "notice"]
        assert notices and "Shapes demo" in notices[0], notices
        assert ".pth" not in notices[0] and "checkpoints" not in notices[0] and "/" not in notices[0], notices[0]

        from gradio_client import Client, handle_file

        client = Client(url, verbose=False)
        _, table, _, status, _ = client.predict(
            image=handle_file(str(examples[0])), model="shapes-demo", score_threshold=0.5, api_name="/segment"
        )
        assert table["data"], f"the shapes demo found nothing in {examples[0].name}: {status}"


def test_api_cli_and_python_find_the_same_objects_of_a_class_when_the_cap_binds(client, small_images, tmp_path):
    """Classes apply before the cap on every path: a class whose objects all rank below the
    overall top 100 still gets its best 3 in the app's API, the CLI and the Python API."""
    from gradio_client import handle_file

    from maskseg.engine.segmenter import Segmenter

    photo = small_images["street"]
    segmenter = Segmenter(model="maskrcnn_resnet50_fpn", device="cpu")
    everything = segmenter.predict_one(photo, score_threshold=0.0, max_detections=100)
    top = {inst.class_name for inst in everything.instances}
    later = [inst.class_name for inst in everything.candidates[100:] if inst.class_name not in top]
    assert later, "random weights should leave some class entirely outside the top 100"
    wanted = max(set(later), key=later.count)
    python = segmenter.predict_one(photo, score_threshold=0.0, classes=[wanted], max_detections=3)
    assert len(python.instances) == 3 and {i.class_name for i in python.instances} == {wanted}
    expected = [(i.class_name, round(i.score, 4), [round(v, 1) for v in i.box]) for i in python.instances]

    _, table, _, _, _ = client.predict(
        image=handle_file(str(photo)), model="maskrcnn_resnet50_fpn", score_threshold=0.0, classes=[wanted],
        max_objects=3, api_name="/segment",
    )
    api = [(row[1], round(float(row[2]), 4), [round(float(v), 1) for v in row[3:7]]) for row in table["data"]]
    assert api == expected

    out = tmp_path / "cli"
    subprocess.run(
        [sys.executable, "-m", "maskseg", "predict", str(photo), "--out", str(out), "--model", "maskrcnn_resnet50_fpn",
         "--device", "cpu", "--threshold", "0", "--classes", wanted, "--max-detections", "3"],
        check=True, capture_output=True, cwd=REPO_ROOT, env={**os.environ},
    )
    document = json.loads((out / photo.stem / "instances.json").read_text())
    names = {c["id"]: c["name"] for c in document["categories"]}
    cli = [
        (names[a["category_id"]], round(a["score"], 4), [round(a["bbox"][0], 1), round(a["bbox"][1], 1),
         round(a["bbox"][0] + a["bbox"][2], 1), round(a["bbox"][1] + a["bbox"][3], 1)])
        for a in document["annotations"]
    ]
    assert [(n, s) for n, s, _ in cli] == [(n, s) for n, s, _ in expected]
    for (_, _, got), (_, _, want) in zip(cli, expected):
        assert max(abs(g - w) for g, w in zip(got, want)) <= 0.1
