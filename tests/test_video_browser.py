"""The Video tab in a real headless Chromium: upload a generated clip, Cancel a run and keep its
frames, then segment the whole clip and play the result in the page's own video player."""

from __future__ import annotations

import pytest

from test_browser import CHROMIUM, CHROMIUM_ARGS, playwright  # noqa: F401  (the shared Playwright driver fixture)
from test_video import HEIGHT, WIDTH, write_clip

pytestmark = [pytest.mark.browser, pytest.mark.server]

STATUS = "#video-status textarea"


@pytest.fixture(scope="module")
def page(app_server, playwright):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    try:
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        page.set_default_timeout(60_000)
        page.goto(app_server)
        page.get_by_role("tab", name="Video").click()
        page.wait_for_selector("#video-input input[type=file]", state="attached")
        yield page
    finally:
        browser.close()


def _set_number(page, elem_id: str, value) -> None:
    box = f"#{elem_id} input[data-testid=number-input]"
    page.fill(box, str(value))
    page.press(box, "Enter")


def _wait_for_status(page, text: str, timeout: float = 180_000) -> str:
    page.wait_for_function(
        "([sel, text]) => (document.querySelector(sel)?.value || '').includes(text)", arg=[STATUS, text], timeout=timeout
    )
    return page.input_value(STATUS)


def _pick_model(page, label: str) -> None:
    page.click("#video-model input")
    page.get_by_role("option", name=label).click()
    page.wait_for_function(
        "(label) => document.querySelector('#video-model input').value === label", arg=label
    )


def test_cancel_keeps_frames_then_the_whole_clip_plays(page, tmp_path):
    clip = write_clip(tmp_path / "moving.mp4", 24)
    page.set_input_files("#video-input input[type=file]", str(clip))
    page.wait_for_selector("#video-input video", state="attached")
    _set_number(page, "video-threshold", 0.9)

    # The launch model (v1 on random weights) takes seconds a frame: Cancel once frames are coming.
    page.click("#video-run")
    page.wait_for_function(
        "() => /Frame \\d+ of 24/.test(document.querySelector('#video-output')?.closest('.gradio-container')?.innerText || '')",
        timeout=180_000,
    )
    page.click("#video-cancel")
    status = _wait_for_status(page, "Cancelled after frame")
    done = int(status.split("Segmented ")[1].split()[0])
    assert 1 <= done < 24, status
    assert "the video, JSON and CSV hold the frames done" in status
    assert page.locator("#video-output video").count() == 1
    assert page.locator('#video-tracks [data-testid="cell-0-0"]').count() == 1 or "0 tracked" in status

    # The Shapes demo, every frame: the result plays in the browser at the clip's size.
    _pick_model(page, "Shapes demo (offline)")
    page.click("#video-run")
    status = _wait_for_status(page, "Segmented 24 frames of moving.mp4")
    assert "2 tracked objects" in status, status
    classes = {page.locator(f'#video-tracks [data-testid="cell-{r}-1"]').inner_text().strip() for r in range(2)}
    assert classes == {"circle", "rectangle"}
    playing = page.evaluate(
        """async () => {
            const video = document.querySelector('#video-output video');
            video.muted = true;
            await video.play();
            await new Promise(done => setTimeout(done, 400));
            return {time: video.currentTime, width: video.videoWidth, height: video.videoHeight,
                    duration: video.duration, error: video.error && video.error.code};
        }"""
    )
    assert playing["error"] is None and playing["time"] > 0, playing
    assert (playing["width"], playing["height"]) == (WIDTH, HEIGHT)
    assert playing["duration"] == pytest.approx(24 / 30, abs=0.05)
    assert page.locator("#video-json a[download], #video-json a").count() >= 1
    assert page.locator("#video-counts").is_visible()


def _live_status(page) -> str:
    return page.input_value("#webcam-status textarea")


def _wait_for_live(page, predicate: str, timeout: float = 90_000) -> str:
    page.wait_for_function(
        f"() => {{ const s = document.querySelector('#webcam-status textarea')?.value || ''; return {predicate}; }}",
        timeout=timeout,
    )
    return _live_status(page)


def test_webcam_streams_through_the_fastest_loaded_model_and_the_slider_acts_live(app_server, playwright):
    """Chromium's fake camera (a moving pattern) streams into the Webcam tab."""
    from maskseg.engine.segmenter import Segmenter

    Segmenter("shapes-demo", device="cpu")  # loaded beside the launch model (v1): the cheaper of the two
    args = [*CHROMIUM_ARGS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
    try:
        page = browser.new_context(viewport={"width": 1400, "height": 1000}, permissions=["camera"]).new_page()
        page.set_default_timeout(60_000)
        page.goto(app_server)
        page.get_by_role("tab", name="Webcam").click()
        page.wait_for_function("() => document.querySelector('#webcam-model input').value === 'Shapes demo (offline)'")
        _set_number(page, "webcam-threshold", 0.0)
        page.get_by_text("Click to Access Webcam").click()
        page.locator("#webcam-input button", has_text="Record").click()
        status = _wait_for_live(page, "/^\\d+\\.\\d frames\\/s/.test(s) && !s.startsWith('0 objects')")
        assert "Shapes demo (offline)" in status and "ms a frame" in status, status
        sources = set()
        for _ in range(40):
            sources.add(page.locator("#webcam-output img").get_attribute("src"))
            if len(sources) >= 3:
                break
            page.wait_for_timeout(250)
        assert len(sources) >= 3, "the live picture did not keep changing"
        # The slider acts on the next frames of the same stream: at 1.0 nothing is left.
        _set_number(page, "webcam-threshold", 1.0)
        status = _wait_for_live(page, "s.includes(' · 0 objects · ')")
        assert "frames/s" in status
    finally:
        browser.close()
