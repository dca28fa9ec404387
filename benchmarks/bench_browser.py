"""Threshold-to-screen latency of the Segment tab in a real headless Chromium, split into where it goes.

Starts the real app in this process (random COCO-shaped v1 weights in a temporary TORCH_HOME and an
initial threshold of 0, so ~100 detections come back; or the offline shapes demo), opens Chromium,
segments a 1920x1080 and a 4000x3000 photo, then types N new thresholds into the slider's number box
and measures in the page (performance.now()) from the input event to the first painted frame that
shows the new overlay (decoded) and the new object count. Server-side phases come from Gradio's own
profiler (GRADIO_PROFILING=1), page-side phases from the instrumentation in browser_page.js.

    python benchmarks/bench_browser.py [--repeats 20] [--model random-v1|shapes-demo] [--out PATH]

Needs Chromium at /usr/bin/chromium (or MASKSEG_CHROMIUM) and Python Playwright; never `playwright install`.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

# Before Gradio is imported: no outside lookups, and Gradio's per-event phase timings on.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["GRADIO_PROFILING"] = "1"

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
PAGE_JS = Path(__file__).with_name("browser_page.js")
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "browser.md"
CHROMIUM = os.environ.get("MASKSEG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--disable-sync", "--disable-quic",
]
NUMBER_BOX = "#threshold input[data-testid=number-input]"
SIZES = {"1080p": (1920, 1080), "12mp": (4000, 3000)}
SOURCES = {"random-v1": {"1080p": "street.jpg", "12mp": "kitchen.jpg"},
           "shapes-demo": {"1080p": "shapes_1.png", "12mp": "shapes_2.png"}}
# Fractions of the detections each move keeps, in turn: every move changes the shown set, many are heavy.
KEEP_CYCLE = [1.0, 0.5, 0.9, 0.3, 0.8, 0.1, 0.95, 0.6, 0.7, 0.2]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="threshold moves per photo size")
    parser.add_argument("--model", choices=sorted(SOURCES), default="random-v1",
                        help="random-v1: random COCO v1 weights, threshold 0 (~100 objects); shapes-demo: offline demo")
    parser.add_argument("--sizes", default="1080p,12mp", help="comma-separated: " + ", ".join(SIZES))
    parser.add_argument("--pause-ms", type=int, default=300, help="quiet time between moves (a person typing)")
    parser.add_argument("--latency-ms", type=float, default=0, help="emulated round-trip latency added per request")
    parser.add_argument("--down-mbps", type=float, default=0, help="emulated bandwidth, Mbit/s each way (0: unlimited)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown report ('-' to skip writing)")
    parser.add_argument("--label", default="", help="a note on what this run measured (shown in the report)")
    return parser.parse_args(argv)


@dataclass
class Move:
    """One threshold move: what was asked, what the page and the server timed (ms from the input event)."""

    threshold: float
    expected: int
    page: dict
    server: list[dict] = field(default_factory=list)
    process_api: list[dict] = field(default_factory=list)

    def at(self, name: str, nth: int = 0) -> float | None:
        """When the nth page event called `name` happened, ms after the input event."""
        times = [e["t"] for e in self.page["events"] if e["what"] == name]
        return times[nth] - self.page["input"] if len(times) > nth else None

    def since_input(self, key: str) -> float | None:
        """A page timestamp (painted, readyFrame, ...) as ms after the input event."""
        value = self.page.get(key)
        return None if value is None else value - self.page["input"]

    @property
    def on_screen_ms(self) -> float:
        """Input event to the painted frame showing the new overlay and the new count."""
        return self.page["painted"] - self.page["input"]


def prepare_weights(model: str, workdir: Path) -> tuple[str, str]:
    """The app's model value and a note on the weights (random v1 weights go in a temporary TORCH_HOME)."""
    if model == "shapes-demo":
        return "shapes-demo", "the offline shapes demo checkpoint (assets/shapes-demo.pt)"
    import torch

    from maskseg.engine.models import ZOO, build_architecture, clear_model_cache

    os.environ["TORCH_HOME"] = str(workdir / "torch_home")
    target = workdir / "torch_home" / "hub" / "checkpoints" / ZOO["maskrcnn_resnet50_fpn"].file_name
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(build_architecture("maskrcnn_resnet50_fpn", 91).state_dict(), target)
    clear_model_cache()
    return "maskrcnn_resnet50_fpn", "random COCO-shaped v1 weights (speed does not depend on what they learned)"


def make_photos(model: str, sizes: list[str], folder: Path) -> dict[str, Path]:
    """The example photos resized (Lanczos) to each benchmark size, saved as JPEG quality 92."""
    from PIL import Image

    photos = {}
    for size in sizes:
        with Image.open(REPO_ROOT / "assets" / "examples" / SOURCES[model][size]) as image:
            resized = image.convert("RGB").resize(SIZES[size], Image.LANCZOS)
        photos[size] = folder / f"photo_{size}.jpg"
        resized.save(photos[size], quality=92)
    return photos


class ScoreRecorder:
    """Remembers the scores of the network's last answer, so thresholds can be picked that change the view."""

    def __init__(self) -> None:
        self.scores: list[float] = []

    def install(self) -> None:
        """Wrap Segmenter.predict_one (engine level, so the app's own wiring is untouched)."""
        from maskseg.engine.segmenter import Segmenter

        original = Segmenter.predict_one
        recorder = self

        def predict_one(self, image, **options):
            prediction = original(self, image, **options)
            candidates = getattr(prediction, "candidates", None) or prediction.instances
            recorder.scores = sorted((float(inst.score) for inst in candidates), reverse=True)
            return prediction

        Segmenter.predict_one = predict_one  # type: ignore[method-assign]


class ServerClock:
    """Times Gradio's Blocks.process_api (preprocess + handler + postprocess) per event, queued or not."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def install(self) -> None:
        """Wrap Blocks.process_api, which every event goes through (queue=False ones included)."""
        from gradio.blocks import Blocks

        original = Blocks.process_api
        clock = self

        async def process_api(self, block_fn, *args, **kwargs):
            started = time.perf_counter()
            try:
                return await original(self, block_fn, *args, **kwargs)
            finally:
                name = getattr(block_fn, "name", None) or str(block_fn)
                clock.calls.append({"fn_name": name, "ms": (time.perf_counter() - started) * 1000})

        Blocks.process_api = process_api  # type: ignore[method-assign]

    def take(self) -> list[dict]:
        """The calls since the last take()."""
        calls, self.calls = self.calls, []
        return calls


def free_port() -> int:
    """A TCP port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(model_value: str, workdir: Path):
    """Build the real app (train tab off, as on Spaces) and serve it from this process; returns (demo, url)."""
    from maskseg.app.config import AppConfig
    from maskseg.app.launch import build_app, launch

    config = AppConfig(model=model_value, device="cpu", score_threshold=0.0, train_enabled=False,
                       checkpoints_dir=workdir / "no-checkpoints")
    demo = build_app(config)
    port = free_port()
    launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    return demo, f"http://127.0.0.1:{port}/"


def open_browser(playwright):
    """Headless Chromium with the page instrumentation installed before any page script runs."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.add_init_script(PAGE_JS.read_text())
    return browser, context


def segment_photo(context, url: str, photo: Path):
    """A fresh page: upload the photo, press Segment, wait for the result and its cut-outs; returns the page."""
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.goto(url)
    page.wait_for_selector("#input-image input[type=file]", state="attached")
    page.set_input_files("#input-image input[type=file]", str(photo))
    page.wait_for_selector("#input-image img")
    page.click("#run")
    page.wait_for_function(
        "() => { const t = document.querySelector('#status textarea'); return t && t.value.includes('Objects:'); }",
        timeout=600_000,
    )
    page.wait_for_function("() => window.__bench.galleryPending().length === 0")
    page.wait_for_timeout(1500)  # the first view's gallery and any late work settle before timing starts
    return page


def plan_thresholds(scores: list[float], repeats: int) -> list[tuple[float, int]]:
    """(threshold typed, objects it keeps) per move: each move shows a different count than the one before."""
    distinct = sorted(set(scores))
    candidates = {0.0: len(scores)}
    for low, high in zip(distinct, distinct[1:]):
        value = round((low + high) / 2, 4)
        if low < value <= high:
            candidates[value] = sum(score >= value for score in scores)
    if len(set(candidates.values())) < 2:
        raise SystemExit(f"the photo gave {len(scores)} detections with too few distinct scores to move between")
    plan, shown = [], len(scores)
    for index in range(repeats):
        target = KEEP_CYCLE[index % len(KEEP_CYCLE)] * len(scores)
        options = [(abs(count - target), value, count) for value, count in candidates.items() if count != shown]
        _, value, shown = min(options)
        plan.append((value, shown))
    return plan


def measure_move(page, threshold: float, expected: int, pause_ms: int, clock: ServerClock) -> Move:
    """Type one threshold and wait until the page has settled; the page's and the server's timings."""
    from gradio.profiling import collector

    collector.clear()
    clock.take()
    page.evaluate("expected => window.__bench.arm(expected)", expected)
    page.fill(NUMBER_BOX, f"{threshold:g}")  # one DOM input event: Gradio's slider fires on it
    page.press(NUMBER_BOX, "Enter")  # what a person does; Gradio's slider itself does nothing on Enter
    try:
        page.wait_for_function("quiet => window.__bench.settled(quiet)", arg=pause_ms, polling=50, timeout=60_000)
    except Exception as exc:  # say what the page showed, not only that it timed out
        state = page.evaluate("() => window.__bench.state()")
        raise SystemExit(f"threshold {threshold:g} (expecting {expected} objects) never settled: {state}") from exc
    data = page.evaluate("() => window.__bench.collect()")
    traces = [t for t in collector.get_all() if t.get("fn_name") != "gradio_file_upload"]
    return Move(threshold, expected, data, traces, clock.take())


def emulate_network(context, page, args) -> None:
    """Slow the page's network (CDP), for a visitor who is not on the server's machine; off by default."""
    if not (args.latency_ms or args.down_mbps):
        return
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    down = args.down_mbps * 1e6 / 8 if args.down_mbps else -1
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": args.latency_ms, "downloadThroughput": down, "uploadThroughput": down,
    })


def run_size(context, url: str, photo: Path, probes: tuple, args) -> tuple[list[Move], int]:
    """Segment one photo, then time `repeats` threshold moves on it; returns the moves and the detections."""
    recorder, clock = probes
    page = segment_photo(context, url, photo)
    emulate_network(context, page, args)
    scores = list(recorder.scores)
    moves = []
    for threshold, expected in plan_thresholds(scores, args.repeats):
        moves.append(measure_move(page, threshold, expected, args.pause_ms, clock))
        print(f"  {photo.stem}: threshold {threshold:g} -> {expected} objects: "
              f"{moves[-1].on_screen_ms:.0f} ms on screen", flush=True)
    page.close()
    return moves, len(scores)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def stats(values: list[float | None]) -> str:
    """'median / p90 / worst' of the values present, in ms."""
    present = [v for v in values if v is not None]
    if not present:
        return "–"
    return f"{statistics.median(present):.0f} / {percentile(present, 90):.0f} / {max(present):.0f}"


def _gap(later: float | None, earlier: float | None) -> float | None:
    return None if later is None or earlier is None else later - earlier


def _trace(move: Move, index: int, key: str) -> float | None:
    return move.server[index].get(key) if len(move.server) > index else None


def move_phases(move: Move) -> dict[str, float | None]:
    """One move split into phases (ms), from the page's clock and Gradio's profiler."""
    page, join = move.page, move.at("join")
    starts, answered = move.at("sse:process_starts"), move.at("sse:process_completed")
    src, decoded = move.at("overlay-src"), move.at("overlay-decoded")
    overlay = page.get("overlay") or {}
    answer = [e for e in page["events"] if e["what"] == "sse:process_completed"]
    frames = [f for f in page["loaf"] if page["input"] <= f["start"] <= page["painted"]]
    return {
        "on_screen": move.on_screen_ms,
        "count_shown": move.since_input("statusFrame"),
        "to_request": join,
        "request_to_answer": _gap(answered, join),
        "request_to_start": _gap(starts, join),
        "process_api": move.process_api[0]["ms"] if move.process_api else None,
        "server_queue_pre": _gap((_trace(move, 0, "queue_wait_ms") or 0) + (_trace(move, 0, "preprocess_ms") or 0), 0),
        "server_fn": _trace(move, 0, "fn_call_ms"),
        "server_post": _trace(move, 0, "postprocess_ms"),
        "server_total": _trace(move, 0, "total_ms"),
        "start_to_answer": _gap(answered, starts),
        "answer_to_src": _gap(src, answered),
        "src_to_decoded": _gap(decoded, src),
        "decoded_to_painted": _gap(move.since_input("painted"), decoded),
        "overlay_fetch": _gap(overlay.get("end"), overlay.get("start")),
        "overlay_kb": overlay["bytes"] / 1024 if overlay.get("bytes") else None,
        "answer_kb": answer[0]["bytes"] / 1024 if answer else None,
        "table_dom": _gap(page["lastDom"].get("objects"), page["input"]),
        "legend_dom": _gap(page["lastDom"].get("legend"), page["input"]),
        "long_frames": sum(f["duration"] for f in frames),
        "followup_server": move.process_api[1]["ms"] if len(move.process_api) > 1 else None,
        "gallery_done": move.at("sse:process_completed", 1),
    }


PHASE_ROWS = [
    ("on_screen", "**input event → new overlay and count painted**"),
    ("count_shown", "input event → new object count in the status box"),
    ("to_request", "page: input event → queue/join request sent"),
    ("request_to_answer", "request sent → answer received (server work + queue and SSE round trips)"),
    ("process_api", "server: Gradio's process_api for the event (preprocess + handler + postprocess)"),
    ("request_to_start", "queued events: queue/join sent → `process_starts` received"),
    ("server_queue_pre", "server: queue wait + preprocess (Gradio profiler)"),
    ("server_fn", "server: handler (re-filter, draw overlay, table rows, legend)"),
    ("server_post", "server: postprocess (overlay JPEG to cache, styled table)"),
    ("server_total", "server: total for the event"),
    ("start_to_answer", "`process_starts` → `process_completed` received (server work + SSE)"),
    ("answer_to_src", "page: answer received → overlay `src` set (Svelte updates every output)"),
    ("src_to_decoded", "page: `src` set → image fetched and decoded"),
    ("overlay_fetch", "of which the image request (resource timing)"),
    ("decoded_to_painted", "page: decoded → frame painted"),
    ("table_dom", "input event → last DOM change in the table"),
    ("legend_dom", "input event → last DOM change in the legend"),
    ("long_frames", "long animation frames (>50 ms) between input and paint, total"),
    ("followup_server", "follow-up event (the cut-out gallery's `.then`), server process_api"),
    ("gallery_done", "input event → gallery answer received"),
    ("overlay_kb", "overlay image size, KB"),
    ("answer_kb", "SSE answer size (table, legend, status, file refs), KB"),
]


def phase_table(results: dict) -> list[str]:
    """Markdown: each phase's median / p90 / worst per photo size."""
    sizes = list(results)
    lines = ["| phase (ms unless stated; median / p90 / worst) | " + " | ".join(sizes) + " |",
             "| --- |" + " ---: |" * len(sizes)]
    per_size = {size: [move_phases(m) for m in results[size][0]] for size in sizes}
    for key, label in PHASE_ROWS:
        lines.append(f"| {label} | " + " | ".join(stats([p[key] for p in per_size[s]]) for s in sizes) + " |")
    return lines


def top_scripts(moves: list[Move], limit: int = 6) -> list[str]:
    """The scripts that ran longest inside long animation frames, summed over the moves."""
    totals: dict[str, float] = {}
    for move in moves:
        for frame in move.page["loaf"]:
            for script in frame["scripts"]:
                name = f"{script['invoker'] or '?'} ({script['src'] or 'inline'})"
                totals[name] = totals.get(name, 0.0) + script["duration"]
    ranked = sorted(totals.items(), key=lambda item: -item[1])[:limit]
    return [f"{name}: {total / max(1, len(moves)):.0f} ms per move" for name, total in ranked]


def where_time_goes(results: dict) -> list[str]:
    """Plain sentences from the medians: how the median move splits between page, wire and server."""
    lines = []
    for size, (moves, _) in results.items():
        phases = [move_phases(m) for m in moves]

        def med(key: str) -> float:
            values = [p[key] for p in phases if p[key] is not None]
            return statistics.median(values) if values else float("nan")

        split = (f" (handler {med('server_fn'):.0f}, postprocess {med('server_post'):.0f})"
                 if med("server_fn") == med("server_fn") else "")
        followup = (f" A follow-up event (the cut-out gallery) then takes {med('followup_server'):.0f} ms on the "
                    "server, on the same cores the browser is still using." if med("followup_server") == med("followup_server")
                    else " No follow-up event ran.")
        lines.append(
            f"- **{size}**: of a median {med('on_screen'):.0f} ms, the page takes {med('to_request'):.0f} ms to send "
            f"the request and gets the answer {med('request_to_answer'):.0f} ms later, of which Gradio's process_api "
            f"is {med('process_api'):.0f} ms{split}; Svelte takes {med('answer_to_src'):.0f} ms to apply the answer "
            f"({med('answer_kb'):.0f} KB) up to setting the overlay's `src`; fetching and decoding the "
            f"{med('overlay_kb'):.0f} KB image (while the main thread also lays out the table and legend) takes "
            f"{med('src_to_decoded'):.0f} ms, and painting {med('decoded_to_painted'):.0f} ms more.{followup}"
        )
        scripts = top_scripts(moves)
        if scripts:
            lines.append("  Longest scripts in long animation frames: " + "; ".join(scripts) + ".")
    return lines


def _setup_lines(args, argv, weights_note: str, browser: tuple) -> list[str]:
    """How the run was made: command, date, machine and its load, model, network, what was timed."""
    import torch

    version, load = browser
    command = "python benchmarks/bench_browser.py " + " ".join(argv if argv is not None else sys.argv[1:])
    cores = os.cpu_count() or 1
    busy = max(load) > 0.75 * cores
    network = (f"emulated in Chromium: +{args.latency_ms:g} ms latency, {args.down_mbps:g} Mbit/s"
               if args.latency_ms or args.down_mbps else "none emulated (loopback)")
    return [
        f"- Command: `{command.strip()}`" + (f" ({args.label})" if args.label else ""),
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {platform.machine()}, {cores} CPU cores, no GPU, torch {torch.__version__}; "
        f"headless Chromium {version} and the server on the same machine (127.0.0.1); network: {network}",
        f"- Load average (1 min) at start / end: {load[0]:.2f} / {load[1]:.2f}"
        + (" — **the machine was busy with other work: every number is inflated, compare only runs made "
           "under similar load**" if busy else ""),
        f"- Model: {weights_note}; initial threshold 0, so the network's whole answer is cached",
    ]


def render_report(args, argv, results: dict, weights_note: str, browser: tuple) -> str:
    """The Markdown report: how it was run, the headline numbers, every phase, where the time goes."""
    lines = [
        "# Segment tab in a real browser: threshold → overlay on screen",
        "",
        *_setup_lines(args, argv, weights_note, browser),
        f"- n = {args.repeats} moves per photo; each types a threshold that changes the shown set "
        f"(keeping {', '.join(f'{int(k * 100)}%' for k in KEEP_CYCLE[:6])}, ... of the detections), then waits "
        f"until the page is quiet for {args.pause_ms} ms (the gallery `.then` included)",
        "- Clock: `performance.now()` in the page, from the DOM `input` event of the number box (Gradio's slider "
        "sends on `input`; Enter, pressed too, triggers nothing) to the first frame painted after the new "
        "overlay is decoded and the status shows the new count",
        "",
        "| photo | detections | on screen: median | p90 | worst | worst without the first move |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size, (moves, detections) in results.items():
        shown = [m.on_screen_ms for m in moves]
        rest = shown[1:] or shown
        lines.append(f"| {size} {SIZES[size][0]}×{SIZES[size][1]} | {detections} | {statistics.median(shown):.0f} | "
                     f"{percentile(shown, 90):.0f} | {max(shown):.0f} | {max(rest):.0f} |")
    worst = max(m.on_screen_ms for moves, _ in results.values() for m in moves)
    verdict = "under" if worst < 150 else "not yet under"
    lines += ["", f"For reference: the server-side slider target (`benchmarks/results/ui.md`) is 150 ms; seen in a "
              f"browser sharing the server's cores, the worst move took {worst:.0f} ms, {verdict} 150 ms.",
              "", "## Every phase", "", *phase_table(results), "", "## Where the time goes", "",
              *where_time_goes(results), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark for each photo size, print the summary and write the report."""
    args = parse_args(argv)
    from playwright.sync_api import sync_playwright

    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    workdir = Path(tempfile.mkdtemp(prefix="bench_browser_"))
    model_value, weights_note = prepare_weights(args.model, workdir)
    photos = make_photos(args.model, sizes, workdir)
    probes = (ScoreRecorder(), ServerClock())
    for probe in probes:
        probe.install()
    demo, url = start_app(model_value, workdir)
    results: dict[str, tuple[list[Move], int]] = {}
    load = [os.getloadavg()[0]]
    try:
        with sync_playwright() as playwright:
            browser, context = open_browser(playwright)
            version = browser.version
            for size in sizes:
                print(f"{size}: segmenting {photos[size].name} ...", flush=True)
                results[size] = run_size(context, url, photos[size], probes, args)
            browser.close()
    finally:
        demo.close()
    load.append(os.getloadavg()[0])
    report = render_report(args, argv, results, weights_note, (version, load))
    print(report)
    if str(args.out) != "-":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
