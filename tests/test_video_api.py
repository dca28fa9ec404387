"""/video through the HTTP API, as a script uses it: a clip in; the MP4, JSON, CSV, tracks and counts out."""

from __future__ import annotations

import csv
import json

import av
import pytest

from test_video import FPS, HEIGHT, THRESHOLD, WIDTH, decode_rgb, write_clip

pytestmark = pytest.mark.server

FRAMES = 12


@pytest.fixture(scope="module")
def client(app_server):
    from gradio_client import Client

    return Client(app_server, verbose=False)


def test_video_endpoint_is_listed_with_the_segment_controls(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    names = [p["parameter_name"] for p in endpoints["/video"]["parameters"]]
    assert names == ["clip", "model", "score_threshold", "mask_threshold", "classes", "max_objects", "opacity",
                     "show_masks", "show_contours", "show_boxes", "show_labels", "frame_stride", "max_seconds"]


def test_video_returns_a_playable_mp4_json_csv_tracks_and_counts(client, tmp_path):
    from gradio_client import handle_file

    clip = write_clip(tmp_path / "moving.mp4", FRAMES)
    video, coco, table_csv, tracks, counts, status = client.predict(
        handle_file(str(clip)), "shapes-demo", THRESHOLD, frame_stride=2, api_name="/video"
    )
    with av.open(video) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == FPS / 2
    frames = decode_rgb(video)
    assert len(frames) == FRAMES // 2 and frames[0].shape == (HEIGHT, WIDTH, 3)
    doc = json.loads(open(coco).read())
    assert [image["frame"] for image in doc["images"]] == list(range(0, FRAMES, 2))
    with open(table_csv) as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:3] == ["frame", "time", "id"]
    assert len(rows) == len(doc["annotations"])
    assert {int(r["id"]) for r in rows} == {a["track_id"] for a in doc["annotations"]}
    # One track per shape over the clip; the plot has a count per class per frame.
    assert sorted(row[1] for row in tracks["data"]) == ["circle", "rectangle"]
    assert all(row[6] == FRAMES // 2 for row in tracks["data"])
    assert len(counts["data"]) == 2 * (FRAMES // 2)
    assert status.startswith(f"Segmented {FRAMES // 2} frames of moving.mp4: 2 tracked objects")


def test_video_bad_inputs_get_their_sentence(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    text = tmp_path / "notes.txt"
    text.write_text("not a video\n" * 20)
    with pytest.raises(AppError, match="notes.txt could not be opened as a video"):
        client.predict(handle_file(str(text)), "shapes-demo", THRESHOLD, api_name="/video")
    # The test server refuses frames over 2 MP (APP_MAX_PIXELS): 1080p is 2.07 MP.
    big = tmp_path / "big.mp4"
    with av.open(str(big), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        for index in range(2):
            frame = av.VideoFrame(1920, 1080, "yuv420p")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with pytest.raises(AppError, match=r"big.mp4 is 1920×1080 \(2.1 MP per frame\), over this server's limit"):
        client.predict(handle_file(str(big)), "shapes-demo", THRESHOLD, api_name="/video")
