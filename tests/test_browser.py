"""The Segment tab in a real headless Chromium: upload, run, read, slide, download, toggle, screenshot."""

from __future__ import annotations

import csv
import io
import os
import shutil
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO_ROOT, require_or_skip

pytestmark = [pytest.mark.browser, pytest.mark.server]

CHROMIUM = os.environ.get("MASKSEG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--disable-sync", "--disable-quic",
]
SCREENSHOT = REPO_ROOT / "docs" / "screenshot.png"
STATUS = "#status textarea"
NUMBER_BOX = "#threshold input[data-testid=number-input]"


@pytest.fixture(scope="module")
def playwright():
    """One Playwright driver for the module (the sync API allows only one at a time)."""
    chromium = shutil.which(CHROMIUM) or (CHROMIUM if Path(CHROMIUM).is_file() else None)
    require_or_skip(chromium is not None, f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - requirements-dev.txt installs it
        require_or_skip(False, "playwright is not installed (pip install playwright)")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser_page(app_server, playwright):
    browser, page = _launch_page(playwright, app_server)
    yield page
    browser.close()


def _status(page) -> str:
    return page.input_value(STATUS)


def _object_count(page) -> int:
    text = _status(page)
    assert "Objects: " in text, text
    return int(text.split("Objects: ")[1].split()[0])


def _overlay_src(page) -> str:
    return page.locator("#overlay img").get_attribute("src") or ""


def _wait_for_new_overlay(page, old_src: str, timeout: float = 60_000) -> None:
    page.wait_for_function(
        "(old) => { const i = document.querySelector('#overlay img'); return i && i.src && i.src !== old; }",
        arg=old_src, timeout=timeout,
    )


def _wait_until_settled(page, quiet_s: float = 1.5, timeout_s: float = 180) -> None:
    """Wait until the status says 'Objects:' and neither it nor the overlay changed for `quiet_s`."""
    deadline = time.monotonic() + timeout_s
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = (_status(page), _overlay_src(page))
        if now != last:
            last, since = now, time.monotonic()
        elif "Objects:" in now[0] and time.monotonic() - since >= quiet_s:
            return
        page.wait_for_timeout(200)
    raise AssertionError(f"the page never settled; status: {last[0]!r}")


def _cell(page, row: int, column: int) -> str:
    return page.locator(f'#objects [data-testid="cell-{row}-{column}"]').inner_text().strip()


def _set_threshold(page, value: float) -> None:
    page.fill(NUMBER_BOX, f"{value:.2f}")
    page.press(NUMBER_BOX, "Enter")


def _download_zip(page, tmp_path: Path, expected_rows: int) -> Path:
    """Press Download, then save the zip it builds and check it holds `expected_rows` objects."""
    from maskseg.engine.verify import check_bundle

    assert page.locator("#bundle a[download]").count() == 0, "a zip must only be built when asked for"
    page.click("#download")
    page.wait_for_selector("#bundle a[download]", timeout=60_000)
    with page.expect_download() as info:
        page.locator("#bundle a[download]").first.click()
    target = tmp_path / "bundle.zip"
    info.value.save_as(target)
    with zipfile.ZipFile(target) as archive:
        rows = list(csv.reader(io.StringIO(archive.read("objects.csv").decode())))[1:]
    assert len(rows) == expected_rows, f"the zip has {len(rows)} objects, the screen {expected_rows}"
    check_bundle(target)
    return target


def _visible_examples(page) -> str:
    """Which example row the page shows: 'photos', 'shapes' or 'both'/'none'."""
    photos = page.locator("#examples-photos").is_visible()
    shapes = page.locator("#examples-shapes").is_visible()
    return {(True, False): "photos", (False, True): "shapes", (True, True): "both"}.get((photos, shapes), "none")


def test_segment_slide_download_toggle_and_screenshot(browser_page, small_images, tmp_path):
    from maskseg.app.session import NETWORK_RUNS

    page = browser_page
    page.set_input_files("#input-image input[type=file]", str(small_images["street"]))
    page.wait_for_selector("#input-image img")

    runs_before = NETWORK_RUNS.count
    page.click("#run")
    page.wait_for_function(
        "() => { const t = document.querySelector('#status textarea'); return t && t.value.includes('Objects:'); }",
        timeout=180_000,
    )
    assert NETWORK_RUNS.count == runs_before + 1
    first_count = _object_count(page)
    assert first_count > 5, _status(page)
    assert _cell(page, 0, 0) == "1"
    top_score = float(_cell(page, 0, 2))
    fifth_score = float(_cell(page, 4, 2))
    assert top_score >= fifth_score

    # Slide the threshold just above the 5th object's score: at most 4 rows stay, no new inference.
    overlay_before = _overlay_src(page)
    new_threshold = min(round(fifth_score + 0.005, 2), 1.0)
    _set_threshold(page, new_threshold)
    _wait_for_new_overlay(page, overlay_before)
    page.wait_for_function(
        "(n) => { const t = document.querySelector('#status textarea'); return t && !t.value.includes('Objects: ' + n + ' ') && !t.value.endsWith('Objects: ' + n); }",
        arg=str(first_count),
    )
    shrunk = _object_count(page)
    assert shrunk < first_count and shrunk <= 4, _status(page)
    assert NETWORK_RUNS.count == runs_before + 1, "a slider move must not run the network"
    if shrunk:
        assert page.locator(f'#objects [data-testid="cell-{shrunk - 1}-0"]').count() == 1
    assert page.locator(f'#objects [data-testid="cell-{shrunk}-0"]').count() == 0
    for row in range(shrunk):
        assert float(_cell(page, row, 2)) >= new_threshold - 1e-6

    # The download matches what is on screen and passes the engine's agreement checks.
    _download_zip(page, tmp_path, expected_rows=shrunk)

    # Boxes off: the overlay changes, the table does not, and still no inference.
    page.click("#advanced button, #advanced .label-wrap")
    page.wait_for_selector("#show-boxes input[type=checkbox]", state="visible")
    overlay_before = _overlay_src(page)
    page.locator("#show-boxes input[type=checkbox]").uncheck()
    _wait_for_new_overlay(page, overlay_before)
    assert _object_count(page) == shrunk
    assert NETWORK_RUNS.count == runs_before + 1

    page.locator("#show-boxes input[type=checkbox]").check()
    _save_screenshot(page)


def _wait_for(condition, page, timeout_s: float = 180) -> None:
    import time

    deadline = time.time() + timeout_s
    while not condition():
        assert time.time() < deadline, "timed out waiting for the app"
        page.wait_for_timeout(200)


def _wait_until_idle(page) -> None:
    """Until no component shows Gradio's 'processing' tracker (every event and its .then done)."""
    page.wait_for_timeout(300)
    page.wait_for_function("() => !document.body.innerText.includes('processing')", timeout=180_000)
    page.wait_for_timeout(300)


def _save_screenshot(page) -> None:
    """docs/screenshot.png for the README: real results from the offline Shapes demo when it is
    built (random COCO weights only give meaningless labels), else the page as it is."""
    from maskseg.engine.models import DEMO_CHECKPOINT

    shapes = sorted((REPO_ROOT / "assets" / "examples").glob("shapes_*.png"))
    if DEMO_CHECKPOINT.is_file() and shapes:
        from maskseg.app.session import NETWORK_RUNS

        _set_threshold(page, 0.5)
        _wait_until_idle(page)
        runs = NETWORK_RUNS.count
        assert _visible_examples(page) == "photos", "a COCO model shows the COCO example photos"
        page.click("#model input")
        page.get_by_role("option", name="Shapes demo (offline)").click()
        _wait_for(lambda: NETWORK_RUNS.count > runs, page)  # the new model re-runs the current photo
        _wait_until_idle(page)
        assert _visible_examples(page) == "shapes", "the Shapes demo shows the shapes examples"
        page.set_input_files("#input-image input[type=file]", str(shapes[0]))
        page.wait_for_selector("#input-image img")
        runs = NETWORK_RUNS.count
        page.click("#run")
        _wait_for(lambda: NETWORK_RUNS.count > runs, page)
        _wait_until_idle(page)
        assert "Shapes demo" in _status(page) and _object_count(page) > 0, _status(page)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000


def _launch_page(playwright, url: str):
    chromium = shutil.which(CHROMIUM) or CHROMIUM
    browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
    page = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    page.wait_for_selector("#input-image input[type=file]", state="attached")
    return browser, page


def test_offline_visitor_sees_a_plain_notice_and_the_shapes_examples(playwright, tmp_path):
    """No COCO weights: the page says so in plain words (no server paths) and offers the shapes examples."""
    from maskseg.engine.models import DEMO_CHECKPOINT
    from conftest import OFFLINE_ENV, app_subprocess

    require_or_skip(DEMO_CHECKPOINT.is_file(), f"the offline demo checkpoint {DEMO_CHECKPOINT} is missing")
    env = {**OFFLINE_ENV, "TORCH_HOME": str(tmp_path / "empty"), "MASKSEG_MODEL": "auto", "MASKSEG_DEVICE": "cpu",
           "MASKSEG_CHECKPOINTS_DIR": str(tmp_path / "checkpoints")}
    with app_subprocess(tmp_path, env) as (url, log):
        browser, page = _launch_page(playwright, url)
        try:
            notice = page.locator("#notice").inner_text()
            assert "Shapes demo" in notice and "shapes examples" in notice, notice
            assert _visible_examples(page) == "shapes"
            # Asking for a COCO model that is not here: a plain sentence, and still no path anywhere.
            page.click("#model input")
            page.get_by_role("option", name="Mask R-CNN v2 (COCO, ResNet-50 FPN v2) (not downloaded yet)").click()
            page.get_by_text("weights are not on this server").first.wait_for(timeout=120_000)
            text = page.evaluate("() => document.body.innerText")
            for server_detail in (".pth", "hub/checkpoints", str(REPO_ROOT), "/tmp/", str(tmp_path)):
                assert server_detail not in text, f"the page shows {server_detail!r}"
            assert "maskrcnn_resnet50_fpn_v2_coco" in log.read_text(), "the operator's terminal names the file"
        finally:
            browser.close()


def _folder_bytes(folders) -> int:
    total = 0
    for folder in folders:
        for dirpath, _dirs, names in os.walk(folder):
            for name in names:
                try:
                    total += os.path.getsize(os.path.join(dirpath, name))
                except OSError:
                    pass
    return total


def test_temp_files_stay_under_their_bound(browser_page, app_server, small_images, monkeypatch, tmp_path):
    """50 /segment calls and 50 slider moves: the app's temp folders stay under the size bound."""
    from gradio_client import Client, handle_file

    from maskseg.app import tempfiles
    from maskseg.app.session import NETWORK_RUNS

    store = tempfiles.TEMP_FILES
    folders = store.roots()
    assert any(str(tempfiles.gradio_cache_dir()).startswith(str(f)) for f in folders), "Gradio's cache is bounded too"
    bound = 8 * 1024 * 1024
    monkeypatch.setattr(store, "max_bytes", bound)
    # Not 0: a file written a moment ago may be one Gradio is still moving into its cache.
    monkeypatch.setattr(store, "min_age_s", 1.0)
    monkeypatch.setattr(tempfiles, "PRUNE_EVERY_S", 0.0)
    store.prune()

    client = Client(app_server, verbose=False)
    photos = []
    for name in sorted(small_images):  # thumbnails: the bound is about files, not inference time
        with Image.open(small_images[name]) as im:
            im.thumbnail((128, 128))
            photos.append(tmp_path / f"{name}.jpg")
            im.save(photos[-1])
    for index in range(50):
        *_, bundle = client.predict(image=handle_file(str(photos[index % len(photos)])), score_threshold=0.0,
                                    api_name="/segment")
        assert Path(bundle).is_file()
        assert _folder_bytes(folders) <= bound, f"after /segment call {index + 1}"

    page = browser_page
    page.set_input_files("#input-image input[type=file]", str(small_images["kitchen"]))
    page.wait_for_selector("#input-image img")
    _set_threshold(page, 0.0)
    runs_before = NETWORK_RUNS.count
    page.click("#run")
    # The previous test left "Objects:" in the status: wait for this run's network call first.
    deadline = time.monotonic() + 180
    while NETWORK_RUNS.count == runs_before and time.monotonic() < deadline:
        page.wait_for_timeout(200)
    assert NETWORK_RUNS.count == runs_before + 1
    _wait_until_settled(page)  # the run's outputs land before the moves: a move must not race them
    opacity = "#opacity input[data-testid=number-input]"
    if not page.locator(opacity).is_visible():
        page.click("#advanced button, #advanced .label-wrap")
        page.wait_for_selector(opacity, state="visible")
    for move in range(50):
        before = _overlay_src(page)
        for attempt in range(3):  # a move typed while the accordion still animates can be lost: type it again
            page.fill(opacity, "0.30" if move % 2 == 0 else "0.70")  # every move draws a different overlay
            page.press(opacity, "Enter")
            try:
                _wait_for_new_overlay(page, before, timeout=20_000)
                break
            except Exception:
                assert attempt < 2, f"slider move {move + 1}: no new overlay after 3 tries; status: {_status(page)!r}"
        assert _folder_bytes(folders) <= bound, f"after slider move {move + 1}"
