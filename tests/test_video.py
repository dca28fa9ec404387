"""Video: a clip of moving shapes made here goes in; the MP4, COCO JSON and CSV that come out are
decoded with PyAV and checked against the Segmenter run on the extracted frames."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageDraw

from maskseg.engine.render import RenderOptions, render_overlay
from maskseg.engine.segmenter import Segmenter
from maskseg.engine.tracker import IouTracker, box_iou, track_prediction
from maskseg.engine.video import VideoSettings, segment_video
from maskseg.errors import VideoLoadError
from maskseg.training.synth import _shape_polygon

FRAMES, WIDTH, HEIGHT, FPS = 60, 320, 240, 30
THRESHOLD = 0.9  # the Shapes demo scores the two real shapes above this in every frame


def shape_boxes(index: int) -> dict[str, list[float]]:
    """Where each shape is in frame `index` (x1, y1, x2, y2): a circle going right, a rectangle going left."""
    cx = 60 + 2 * index
    corners = np.array(_shape_polygon("rectangle", 250 - 1.5 * index, 170, 40, 0.3, 0.6))
    return {"circle": [cx - 30, 30, cx + 30, 90], "rectangle": [*corners.min(0), *corners.max(0)]}


def draw_frame(index: int) -> np.ndarray:
    image = Image.new("RGB", (WIDTH, HEIGHT), (40, 60, 80))
    draw = ImageDraw.Draw(image)
    draw.ellipse(shape_boxes(index)["circle"], fill=(240, 200, 40))
    draw.polygon(_shape_polygon("rectangle", 250 - 1.5 * index, 170, 40, 0.3, 0.6), fill=(200, 40, 200))
    return np.asarray(image)


def write_clip(path: Path, frames: int = FRAMES, audio: bool = False, codec: str = "libx264", fmt: str = "mp4") -> Path:
    """The moving-shapes clip, nearly lossless, with a sine tone when `audio`."""
    out = av.open(str(path), "w", format=fmt)
    video = out.add_stream(codec, rate=FPS, options={"crf": "12", "preset": "veryfast"} if codec == "libx264" else {})
    video.width, video.height = WIDTH, HEIGHT
    video.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    sound = out.add_stream("aac", rate=44100) if audio else None
    samples = 0
    for index in range(frames):
        frame = av.VideoFrame.from_ndarray(draw_frame(index), format="rgb24")
        frame.pts = index
        out.mux(video.encode(frame))
        while sound is not None and samples < (index + 1) / FPS * 44100:
            tone = (0.2 * np.sin(np.arange(samples, samples + 1024) / 20)).astype(np.float32)[None].repeat(2, 0)
            chunk = av.AudioFrame.from_ndarray(tone, format="fltp", layout="stereo")
            chunk.sample_rate, chunk.pts = 44100, samples
            samples += 1024
            out.mux(sound.encode(chunk))
    out.mux(video.encode(None))
    if sound is not None:
        out.mux(sound.encode(None))
    out.close()
    return path


def decode_rgb(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter("shapes-demo", device="cpu")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "shapes.mp4", audio=True)


@pytest.fixture(scope="module")
def run(segmenter, clip, tmp_path_factory):
    """The whole clip segmented once; the tests below read its files."""
    seen = []
    result = segment_video(segmenter, clip, tmp_path_factory.mktemp("out"),
                           VideoSettings(score_threshold=THRESHOLD), progress=seen.append)
    return result, seen


def test_output_video_plays_with_every_frame_the_size_rate_and_audio(run):
    result, seen = run
    with av.open(str(result.video_path)) as container:
        video = container.streams.video[0]
        assert video.codec_context.name == "h264" and video.codec_context.pix_fmt == "yuv420p"
        assert (video.codec_context.width, video.codec_context.height) == (WIDTH, HEIGHT)
        assert video.average_rate == FPS
        assert [s.codec_context.name for s in container.streams.audio] == ["aac"]
        audio_seconds = float(container.streams.audio[0].duration * container.streams.audio[0].time_base)
    assert len(decode_rgb(result.video_path)) == FRAMES
    assert abs(audio_seconds - FRAMES / FPS) < 0.1
    assert result.frames_done == FRAMES and not result.cancelled and result.skipped == 0
    # The progress bar saw every frame, with a total and a time left.
    assert [p.done for p in seen] == list(range(1, FRAMES + 1))
    assert seen[0].total == FRAMES and seen[0].seconds_left is not None and seen[-1].seconds_left == 0


def test_every_shape_keeps_one_id_while_it_moves(run):
    result, _ = run
    doc = json.loads(result.json_path.read_text())
    assert [image["frame"] for image in doc["images"]] == list(range(FRAMES))
    by_image: dict[int, list[dict]] = {}
    for annotation in doc["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    names = {c["id"]: c["name"] for c in doc["categories"]}
    ids: dict[str, set[int]] = {"circle": set(), "rectangle": set()}
    for image in doc["images"]:
        for name, truth in shape_boxes(image["frame"]).items():
            found = [a for a in by_image.get(image["id"], []) if names[a["category_id"]] == name]
            boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in found)]).reshape(-1, 4)
            overlap = box_iou(np.array([truth]), boxes)[0]
            assert overlap.size and overlap.max() > 0.7, f"frame {image['frame']}: the {name} was not found"
            ids[name].add(found[int(overlap.argmax())]["track_id"])
    assert all(len(found) == 1 for found in ids.values()), ids
    assert ids["circle"] != ids["rectangle"]
    # The track table lists each shape once, over the whole clip.
    rows = {row[0]: row for row in result.track_rows()}
    for name, (track_id,) in ids.items():
        assert rows[track_id][1] == name and rows[track_id][2] == 0 and rows[track_id][4] == FRAMES - 1


def test_json_and_csv_equal_predict_on_the_extracted_frames(run, segmenter, clip):
    """The reference: PyAV's frames through Segmenter.predict, with the track ids the tracker gives."""
    result, _ = run
    doc = json.loads(result.json_path.read_text())
    with result.csv_path.open() as handle:
        csv_rows = list(csv.DictReader(handle))
    frames = decode_rgb(clip)
    references = segmenter.predict(frames, score_threshold=THRESHOLD, batch_size=1)
    tracker = IouTracker()
    output = decode_rgb(result.video_path)
    for index, reference in enumerate(references):
        reference = track_prediction(tracker, reference)
        got = [a for a in doc["annotations"] if a["image_id"] == index + 1]
        assert len(got) == len(reference.instances), f"frame {index}"
        for annotation, inst in zip(got, reference.instances):
            assert annotation["track_id"] == inst.id and annotation["category_id"] == inst.category_id
            assert annotation["score"] == pytest.approx(inst.score, abs=1e-5)
            assert annotation["bbox"][:2] == pytest.approx(inst.box[:2], abs=0.01)
            assert annotation["area"] == int(reference.mask(inst).sum())
        rows = [r for r in csv_rows if r["frame"] == str(index)]
        assert [int(r["id"]) for r in rows] == [inst.id for inst in reference.instances]
        assert all(float(r["time"]) == pytest.approx(index / FPS, abs=1e-3) for r in rows)
        if index % 20 == 0:  # the video shows the same drawing (H.264 is lossy: close, not equal)
            drawn = render_overlay(reference, RenderOptions()).astype(np.int16)
            assert np.abs(output[index].astype(np.int16) - drawn).mean() < 4


def test_stride_and_maximum_duration_choose_the_frames(segmenter, clip, tmp_path):
    settings = VideoSettings(score_threshold=THRESHOLD, frame_stride=3, max_seconds=1.0)
    result = segment_video(segmenter, clip, tmp_path, settings)
    with av.open(str(result.video_path)) as container:
        assert container.streams.video[0].average_rate == FPS // 3
    assert len(decode_rgb(result.video_path)) == 10 == result.frames_done
    frames = [image["frame"] for image in json.loads(result.json_path.read_text())["images"]]
    assert frames == list(range(0, 30, 3))
    assert "Only the first 1 s of 2 s were segmented" in result.summary()


def test_cancel_keeps_the_frames_done_and_says_so(segmenter, clip, tmp_path):
    done = []
    result = segment_video(segmenter, clip, tmp_path, VideoSettings(score_threshold=THRESHOLD),
                           progress=done.append, should_stop=lambda: len(done) >= 5)
    assert result.cancelled and result.frames_done == 5
    assert len(decode_rgb(result.video_path)) == 5
    assert len(json.loads(result.json_path.read_text())["images"]) == 5
    assert "Cancelled after frame 5" in result.summary()


def test_other_containers_and_codecs_are_read(segmenter, tmp_path):
    """WebM (VP9), MOV, AVI (MPEG-4) and an animated GIF all give one output frame per input frame."""
    clips = [write_clip(tmp_path / "a.webm", 6, codec="libvpx-vp9", fmt="webm"),
             write_clip(tmp_path / "a.mov", 6, fmt="mov"), write_clip(tmp_path / "a.avi", 6, codec="mpeg4", fmt="avi")]
    pictures = [Image.fromarray(draw_frame(i)) for i in range(6)]
    pictures[0].save(tmp_path / "a.gif", save_all=True, append_images=pictures[1:], duration=100, loop=0)
    clips.append(tmp_path / "a.gif")
    for source in clips:
        result = segment_video(segmenter, source, tmp_path / source.suffix[1:], VideoSettings(score_threshold=THRESHOLD))
        assert result.frames_done == 6 and len(decode_rgb(result.video_path)) == 6, source.name
        assert {row[1] for row in result.track_rows()} >= {"circle", "rectangle"}, source.name


def test_a_frame_that_fails_to_decode_is_skipped_and_counted(segmenter, tmp_path):
    source = write_clip(tmp_path / "m.avi", 12, codec="mjpeg", fmt="avi")
    data = bytearray(source.read_bytes())
    starts = [m.start() for m in re.finditer(b"\xff\xd8\xff", data)]
    for k in (4, 5):  # blank two JPEG frames: the decoder has nothing to decode
        data[starts[k] : starts[k + 1] - 8] = bytes(starts[k + 1] - 8 - starts[k])
    source.write_bytes(data)
    result = segment_video(segmenter, source, tmp_path / "out", VideoSettings(score_threshold=THRESHOLD))
    assert result.skipped == 2 and result.frames_done == 10
    assert len(decode_rgb(result.video_path)) == 10
    assert "2 frames could not be decoded and were skipped" in result.summary()


def _bad_inputs(clip: Path, tmp_path: Path) -> dict[str, tuple[Path, VideoSettings, str]]:
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 50)
    photo = tmp_path / "photo.png"
    Image.fromarray(draw_frame(0)).save(photo)
    empty = tmp_path / "empty.webm"
    empty.write_bytes(b"")
    codec = write_clip(tmp_path / "odd.avi", 4, codec="mjpeg", fmt="avi")
    codec.write_bytes(codec.read_bytes().replace(b"MJPG", b"QQQQ"))  # a fourcc no decoder claims
    plain = VideoSettings(score_threshold=THRESHOLD)
    return {
        "codec": (codec, plain, "odd.avi uses a video codec FFmpeg does not know, which this server cannot decode"),
        "truncated": (truncated, plain, "truncated.mp4 could not be opened as a video: it is not a video file, or it is cut short or damaged"),
        "text": (text, plain, "notes.mp4 could not be opened as a video"),
        "photo": (photo, plain, "photo.png is a still image, not a video"),
        "empty": (empty, plain, "empty.webm is empty (0 bytes), so it is not a video."),
        "huge": (clip, VideoSettings(max_pixels=320 * 200), "shapes.mp4 is 320×240 (0.1 MP per frame), over this server's limit"),
        "long": (clip, VideoSettings(duration_limit=1.0), "shapes.mp4 is 2 s long and this server segments at most 1 s of video"),
    }


def test_bad_inputs_get_one_sentence(segmenter, clip, tmp_path):
    for name, (source, settings, sentence) in _bad_inputs(clip, tmp_path).items():
        with pytest.raises(VideoLoadError) as caught:
            segment_video(segmenter, source, tmp_path / name, settings)
        message = str(caught.value)
        assert message.startswith(sentence), (name, message)
        assert "\n" not in message and message.endswith("."), message
        assert not list((tmp_path / name).glob("*")) if (tmp_path / name).exists() else True


def test_a_clip_with_a_header_and_no_frames_says_so(segmenter, run, tmp_path):
    """Our own MP4s put the index first: cut after it, the file opens but holds no frame."""
    result, _ = run
    data = result.video_path.read_bytes()
    header = tmp_path / "header_only.mp4"
    header.write_bytes(data[: data.index(b"mdat") + 4])
    with pytest.raises(VideoLoadError, match=r"^header_only.mp4 has no frames that could be decoded"):
        segment_video(segmenter, header, tmp_path / "out", VideoSettings())
    assert not list((tmp_path / "out").glob("*"))


def test_cli_writes_the_three_files_and_names_a_bad_input(clip, tmp_path, capsys):
    from maskseg.cli import main

    bad = tmp_path / "readme.mp4"
    bad.write_text("hello")
    code = main(["video", str(clip), str(bad), "--out", str(tmp_path / "out"), "--model", "shapes-demo",
                 "--device", "cpu", "--threshold", str(THRESHOLD), "--stride", "6"])
    captured = capsys.readouterr()
    assert code == 1
    assert "Segmented 10 frames of shapes.mp4: 2 tracked objects" in captured.out
    assert "failed readme.mp4: readme.mp4 could not be opened as a video" in captured.err
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["shapes_maskseg.mp4", "shapes_objects.csv", "shapes_objects.json"]
    assert len(decode_rgb(tmp_path / "out" / "shapes_maskseg.mp4")) == 10


def test_tracker_keeps_ids_through_a_crossing_and_a_short_gap():
    """Two same-class objects cross paths; one then vanishes for 3 frames: ids stay, a late return is new."""
    tracker = IouTracker(max_missed=5)
    seen: dict[str, set[int]] = {"right": set(), "left": set()}
    for step in range(40):
        right = (10 + 6 * step, 100, 70 + 6 * step, 160)
        left = (250 - 6 * step, 120, 310 - 6 * step, 180)  # overlaps `right` for frames ~15 to ~25
        ids = tracker.update([right, left], ["car", "car"])
        seen["right"].add(ids[0])
        seen["left"].add(ids[1])
    assert len(seen["right"]) == len(seen["left"]) == 1 and seen["right"] != seen["left"]
    (kept,) = seen["right"]
    for gap in range(3):  # gone for 3 frames, then back where it would be
        tracker.update([], [])
    assert tracker.update([(10 + 6 * 43, 100, 70 + 6 * 43, 160)], ["car"]) == [kept]
    for gap in range(6):  # gone for longer than max_missed: its track has ended
        tracker.update([], [])
    assert tracker.update([(10 + 6 * 50, 100, 70 + 6 * 50, 160)], ["car"]) != [kept]
