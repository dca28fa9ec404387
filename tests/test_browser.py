"""The Segment tab in a real headless Chromium: upload, run, read, slide, download, toggle, screenshot."""

from __future__ import annotations

import csv
import io
import os
import shutil
import zipfile
from pathlib import Path

import pytest

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
def browser_page(app_server):
    chromium = shutil.which(CHROMIUM) or (CHROMIUM if Path(CHROMIUM).is_file() else None)
    require_or_skip(chromium is not None, f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - requirements-dev.txt installs it
        require_or_skip(False, "playwright is not installed (pip install playwright)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(app_server)
        page.wait_for_selector("#input-image input[type=file]", state="attached")
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


def _wait_for_new_overlay(page, old_src: str) -> None:
    page.wait_for_function(
        "(old) => { const i = document.querySelector('#overlay img'); return i && i.src && i.src !== old; }",
        arg=old_src,
    )


def _cell(page, row: int, column: int) -> str:
    return page.locator(f'#objects [data-testid="cell-{row}-{column}"]').inner_text().strip()


def _set_threshold(page, value: float) -> None:
    page.fill(NUMBER_BOX, f"{value:.2f}")
    page.press(NUMBER_BOX, "Enter")


def _download_zip(page, tmp_path: Path, expected_rows: int) -> Path:
    """Wait until the download link's zip has `expected_rows` objects, then download it."""
    from maskseg.engine.verify import check_bundle

    for attempt in range(30):
        with page.expect_download() as info:
            page.locator("#bundle a[download]").first.click()
        target = tmp_path / f"bundle_{attempt}.zip"
        info.value.save_as(target)
        with zipfile.ZipFile(target) as archive:
            rows = list(csv.reader(io.StringIO(archive.read("objects.csv").decode())))[1:]
        if len(rows) == expected_rows:
            check_bundle(target)
            return target
        page.wait_for_timeout(500)  # the zip follows the overlay; give it a moment
    raise AssertionError(f"the downloaded zip never had {expected_rows} objects (last: {len(rows)})")


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
        page.click("#model input")
        page.get_by_role("option", name="Shapes demo (offline)").click()
        _wait_for(lambda: NETWORK_RUNS.count > runs, page)  # the new model re-runs the current photo
        _wait_until_idle(page)
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
