"""The "Inside Mask R-CNN" tab in a real headless Chromium: trace a photo, step through every stage in
lesson mode (one screenshot each for the README), move the mask threshold, and click an object on the
Result overlay to follow it into the box head."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO_ROOT
from test_browser import CHROMIUM, CHROMIUM_ARGS, playwright  # noqa: F401  (the shared Playwright driver fixture)

pytestmark = [pytest.mark.browser, pytest.mark.server]

VIEWPORT = {"width": 1280, "height": 800}
PHOTO = REPO_ROOT / "assets" / "examples" / "kitchen.jpg"  # a real photo at its own size, for the screenshots
DOCS = REPO_ROOT / "docs"
MAX_SCREENSHOT_BYTES = 300_000
TRACE_THRESHOLD = 0.6

# Stage name, its column, the picture it must show, and the screenshot's slug (README's names).
STAGES = [
    ("Input", "stage-input", "explorer-input-image", "input"),
    ("Backbone + FPN", "stage-backbone", "explorer-level-image", "backbone"),
    ("Region proposals", "stage-rpn", "explorer-rpn-image", "proposals"),
    ("RoIAlign + box head", "stage-box", "explorer-boxes-image", "box-head"),
    ("Mask head", "stage-mask", "explorer-mask", "mask-head"),
    ("Result", "stage-result", "explorer-result", "result"),
]
EXTRA_PICTURES = {"RoIAlign + box head": ["explorer-crop7", "explorer-crop14"], "Mask head": ["explorer-mask28"]}


@pytest.fixture(scope="module")
def page(app_server, playwright):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    try:
        page = browser.new_context(viewport=VIEWPORT).new_page()
        page.set_default_timeout(60_000)
        page.goto(app_server)
        page.wait_for_selector("#input-image input[type=file]", state="attached")
        _ensure_app_css(page)
        yield page
    finally:
        browser.close()


def _ensure_app_css(page) -> None:
    """The server must serve the app's stylesheet (lesson mode's rules among it): a page without
    it would show lesson mode as nothing at all."""
    served = page.evaluate(
        "() => [...document.querySelectorAll('style')].some(s => s.textContent.includes('maskseg-lesson'))"
    )
    assert served, "the app's CSS (with lesson mode's rules) is not in the page"


def _current_stage(page) -> str:
    return page.evaluate(
        "() => { const r = document.querySelector('#explorer-stage input[type=radio]:checked'); return r ? r.value : null; }"
    )


def _visible_columns(page) -> list[str]:
    return [column for _name, column, _picture, _slug in STAGES if page.locator(f"#{column}").is_visible()]


def _picture_src(page, elem_id: str) -> str:
    images = page.locator(f"#{elem_id} img")
    return (images.first.get_attribute("src") or "") if images.count() else ""


def _wait_for_stage(page, name: str, column: str, picture: str, timeout: float = 60_000) -> None:
    """Until the radio shows `name`, only its column is visible, and its picture has loaded."""
    page.wait_for_function(
        """([name, column, picture]) => {
            const r = document.querySelector('#explorer-stage input[type=radio]:checked');
            const col = document.getElementById(column);
            const img = document.querySelector('#' + picture + ' img');
            return r && r.value === name && col && col.offsetParent !== null
                && img && img.complete && img.naturalWidth > 0;
        }""",
        arg=[name, column, picture], timeout=timeout,
    )
    assert _current_stage(page) == name
    assert _visible_columns(page) == [column], f"{name}: visible columns {_visible_columns(page)}"
    assert page.locator(f"#{picture} img").first.is_visible(), f"{name}: its picture is not shown"


def _wait_until_idle(page) -> None:
    """Until no component shows Gradio's progress tracker (each event and its follow-ups done)."""
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => !document.querySelector('#explorer-stage-area .progress-text, #explorer-stage-area .eta-bar')",
        timeout=60_000,
    )
    page.wait_for_timeout(300)


def _save_screenshot(page, number: int, slug: str) -> Path:
    """docs/explorer-<n>-<slug>.png: the viewport, made smaller (256 colours) if it is too big."""
    target = DOCS / f"explorer-{number}-{slug}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    # The stage's caption at the top of the window, so its pictures fill the rest of it.
    page.locator("#explorer-caption").evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(200)
    data = page.screenshot(type="png")
    page.evaluate("() => window.scrollTo(0, 0)")
    if len(data) > MAX_SCREENSHOT_BYTES:
        with Image.open(io.BytesIO(data)) as shot:
            out = io.BytesIO()
            shot.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
                out, format="PNG", optimize=True)
            data = out.getvalue()
    target.write_bytes(data)
    with Image.open(target) as saved:
        assert saved.size == (VIEWPORT["width"], VIEWPORT["height"])
    assert 10_000 < target.stat().st_size <= MAX_SCREENSHOT_BYTES, (target, target.stat().st_size)
    return target


def _trace_like_the_server(threshold: float):
    """The server's traced run repeated here (same process, same cached network, same file, same
    threshold), so its objects are the page's; with the dropdown label of each object."""
    from maskseg.app.explorer_handlers import ExplorerState, object_choices
    from maskseg.engine.explain_report import summary
    from maskseg.engine.segmenter import Segmenter
    from maskseg.engine.trace import trace_photo

    segmenter = Segmenter(model="maskrcnn_resnet50_fpn", device="cpu", backend="auto", precision="fp32")
    trace = trace_photo(segmenter, str(PHOTO), score_threshold=threshold)
    state = ExplorerState(trace=trace, facts=summary(trace))
    return state, {value: label for label, value in object_choices(state)}


def _picture_geometry(page, elem_id: str) -> dict:
    """Where the picture is drawn in the window, as Gradio's select event measures it."""
    page.locator(f"#{elem_id} img").first.evaluate("e => e.scrollIntoView({block: 'center'})")
    page.wait_for_timeout(200)
    return page.evaluate(
        """(id) => {
            const img = document.querySelector('#' + id + ' img');
            const box = img.getBoundingClientRect();
            return {left: box.left, top: box.top, width: box.width, height: box.height,
                    natural_width: img.naturalWidth, natural_height: img.naturalHeight};
        }""",
        elem_id,
    )


def _click_point(state, geometry: dict, instance_id: int) -> tuple[int, int] | None:
    """A whole-pixel point of the window where a click selects `instance_id`: Gradio's select event
    turns it into a picture pixel with its own formula (scaled down to fit, never up, centred,
    Math.round), and the app's hit test (object_at) must pick the object at that pixel. Tries the
    object's box centre first, then pixels of its mask."""
    import math

    import numpy as np

    from maskseg.app.explorer_handlers import object_at
    from maskseg.engine.explain_views import display_size

    g = geometry
    nat_w, nat_h = g["natural_width"], g["natural_height"]
    assert (nat_h, nat_w) == display_size(state.trace), "the Result picture is at display size"
    r = min(g["width"] / nat_w, g["height"] / nat_h, 1)
    off_x, off_y = (g["width"] - nat_w * r) / 2, (g["height"] - nat_h * r) / 2
    view = state.trace.view
    inst = next(i for i in view.instances if i.id == instance_id)
    sx, sy = nat_w / state.trace.photo_size[1], nat_h / state.trace.photo_size[0]
    x0, y0, x1, y1 = inst.box
    pixels = [((x0 + x1) / 2 * sx, (y0 + y1) / 2 * sy)]
    crop = view.mask_crop(inst)
    ys, xs = np.nonzero(crop.pixels)
    step = max(len(xs) // 300, 1)
    pixels += [((crop.x0 + px + 0.5) * sx, (crop.y0 + py + 0.5) * sy) for px, py in zip(xs[::step], ys[::step])]
    for px, py in pixels:
        cx, cy = round(g["left"] + off_x + px * r), round(g["top"] + off_y + py * r)
        gx = math.floor((cx - g["left"] - off_x) / r + 0.5)  # JavaScript's Math.round
        gy = math.floor((cy - g["top"] - off_y) / r + 0.5)
        if 0 <= gx < nat_w and 0 <= gy < nat_h and object_at(state, gx, gy) == instance_id:
            return cx, cy
    return None


def test_lesson_mode_steps_through_every_stage_and_follows_a_clicked_object(page):
    from maskseg.app.session import NETWORK_RUNS

    page.get_by_role("tab", name="Inside Mask R-CNN").click()
    page.wait_for_selector("#explorer-image input[type=file]", state="attached")
    assert "press Trace" in page.locator("#explorer-status").inner_text()
    page.set_input_files("#explorer-image input[type=file]", str(PHOTO))
    page.wait_for_selector("#explorer-image img")
    # Random weights score a few boxes up to ~0.7: a higher threshold keeps the overlay readable.
    number_box = "#explorer-threshold input[type=number]"
    page.fill(number_box, f"{TRACE_THRESHOLD:.2f}")
    page.press(number_box, "Enter")
    page.wait_for_timeout(300)
    threshold = float(page.input_value(number_box))
    assert threshold == pytest.approx(TRACE_THRESHOLD)

    runs = NETWORK_RUNS.count
    page.click("#explorer-run")
    page.wait_for_function(
        "() => document.querySelector('#explorer-status').innerText.includes('Traced')", timeout=180_000
    )
    assert NETWORK_RUNS.count == runs + 1
    status = page.locator("#explorer-status").inner_text()
    assert "objects at score" in status, status
    _wait_for_stage(page, *STAGES[0][:3])

    page.locator("#lesson-mode input[type=checkbox]").check()
    page.wait_for_function("() => document.body.classList.contains('maskseg-lesson')")
    assert not page.locator("#explorer-controls").is_visible(), "lesson mode hides the controls"

    mask_before_slide = None
    for number, (name, column, picture, slug) in enumerate(STAGES, start=1):
        if number > 1:
            page.click("#explorer-next")
        _wait_for_stage(page, name, column, picture)
        for extra in EXTRA_PICTURES.get(name, []):
            page.wait_for_function(
                "(id) => { const i = document.querySelector('#' + id + ' img'); return i && i.complete && i.naturalWidth > 0; }",
                arg=extra,
            )
        _wait_until_idle(page)
        _save_screenshot(page, number, slug)
        if name == "Mask head":
            mask_before_slide = _picture_src(page, "explorer-mask")
            facts_before = page.locator("#explorer-mask-facts").inner_text()
            number_box = "#explorer-mask-threshold input[type=number]"
            page.fill(number_box, "0.95")
            page.press(number_box, "Enter")
            page.wait_for_function(
                "(old) => { const i = document.querySelector('#explorer-mask img'); return i && i.src && i.src !== old; }",
                arg=mask_before_slide,
            )
            page.wait_for_function(
                "() => document.querySelector('#explorer-mask-facts').innerText.includes('0.95')"
            )
            assert page.locator("#explorer-mask-facts").inner_text() != facts_before
            assert _visible_columns(page) == [column]
    assert mask_before_slide is not None
    page.click("#explorer-next")  # past the last stage: it stays
    page.wait_for_timeout(500)
    assert _current_stage(page) == "Result"
    assert NETWORK_RUNS.count == runs + 1, "stepping through the stages must not run the network"

    # Click objects on the overlay: the explorer follows each into the box head, without a network
    # run. First one that is not selected already (the first object is, after Trace), then the
    # first object, at the centre of its box where that picks it.
    state, labels = _trace_like_the_server(threshold)
    ids = [inst.id for inst in state.trace.view.instances]
    assert len(ids) >= 2 and ids[0] == 1, ids
    runs = NETWORK_RUNS.count
    clicked = []
    for wanted in (ids[1:], ids[:1]):
        if clicked:  # back to the Result stage
            for stage in STAGES[4:]:
                page.click("#explorer-next")
                _wait_for_stage(page, *stage[:3])
            _wait_until_idle(page)
        geometry = _picture_geometry(page, "explorer-result")
        object_id, point = next(((i, p) for i in wanted if (p := _click_point(state, geometry, i))), (None, None))
        assert point is not None, f"no object among {wanted[:10]}... can be picked by a click"
        page.mouse.click(*point)
        _wait_for_stage(page, *STAGES[3][:3])
        page.wait_for_function(
            "(label) => document.querySelector('#explorer-object input').value === label",
            arg=labels[object_id], timeout=30_000,
        )
        page.wait_for_function(
            "(id) => document.querySelector('#explorer-box-facts').innerText.includes('Object ' + id + ':')",
            arg=str(object_id),
        )
        assert page.input_value("#explorer-object input") == labels[object_id]
        clicked.append(object_id)
    assert clicked[0] != 1 and clicked[1] == 1, clicked
    assert NETWORK_RUNS.count == runs, "following an object must not run the network"

    # Back leaves the box stage for the proposals; lesson mode off shows the controls again.
    page.click("#explorer-back")
    _wait_for_stage(page, *STAGES[2][:3])
    page.locator("#lesson-mode input[type=checkbox]").uncheck()
    page.wait_for_function("() => !document.body.classList.contains('maskseg-lesson')")
    assert page.locator("#explorer-controls").is_visible()
