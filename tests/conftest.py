"""Shared test fixtures: random COCO-shaped weights in a temporary TORCH_HOME, and CI-aware skips."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

# Gradio looks up outside hosts in background threads unless told not to; set before any import.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

IN_CI = os.environ.get("CI", "").lower() == "true"
REPO_ROOT = Path(__file__).resolve().parent.parent


def require_or_skip(condition: bool, reason: str) -> None:
    """Skip the test when `condition` is false; in CI (CI=true) fail instead, so nothing hides."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def write_random_zoo_weights(torch_home: Path, model_name: str = "maskrcnn_resnet50_fpn", seed: int = 0) -> Path:
    """Write a randomly initialised state dict where torchvision looks for `model_name`'s weights."""
    import torch

    from maskseg.engine.models import ZOO, build_architecture

    entry = ZOO[model_name]
    target = torch_home / "hub" / "checkpoints" / entry.file_name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        torch.save(build_architecture(model_name, 91).state_dict(), target)
    return target


@pytest.fixture(scope="session")
def random_weights_home(tmp_path_factory: pytest.TempPathFactory):
    """TORCH_HOME in a temp dir holding random v1 weights under the file name torchvision expects.

    torch.hub.get_dir() reads TORCH_HOME at call time, so the real loading code finds them.
    Yields the TORCH_HOME path; restores the old value and clears the model cache afterwards.
    """
    from maskseg.engine.models import clear_model_cache

    torch_home = tmp_path_factory.mktemp("torch_home")
    old = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(torch_home)
    write_random_zoo_weights(torch_home, "maskrcnn_resnet50_fpn", seed=0)
    clear_model_cache()
    try:
        yield torch_home
    finally:
        if old is None:
            os.environ.pop("TORCH_HOME", None)
        else:
            os.environ["TORCH_HOME"] = old
        clear_model_cache()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


OFFLINE_ENV = {
    # A dead proxy: torchvision's download fails at once, as on a machine with no network.
    "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
    "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost",
}


@contextlib.contextmanager
def app_subprocess(tmp_path: Path, env: dict[str, str], timeout_s: float = 180):
    """`python app.py` as a user runs it, on a free port, until it answers; yields (url, log path)."""
    port = free_port()
    full_env = {**os.environ, **env, "MASKSEG_PORT": str(port)}
    log = tmp_path / f"app-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO_ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + timeout_s
        while True:
            assert proc.poll() is None, f"app.py exited early:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, f"app.py did not answer within {timeout_s:.0f} s:\n{log.read_text()}"
            time.sleep(1)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


# The app server the API and browser tests share: random v1 weights, threshold 0 (random weights
# score near 1/91), and a small pixel limit so "oversized image" is cheap to provoke.
APP_MAX_PIXELS = 2_000_000


@pytest.fixture(scope="session")
def app_server(random_weights_home):
    """A live Gradio server (in this process) running the real app; yields its URL."""
    from maskseg.app.launch import build_app, launch  # noqa: F401
    from maskseg.app.config import AppConfig

    config = AppConfig(
        model="maskrcnn_resnet50_fpn", device="cpu", score_threshold=0.0, max_pixels=APP_MAX_PIXELS,
        checkpoints_dir=random_weights_home / "no-checkpoints",
    )
    demo = build_app(config)
    port = free_port()
    demo.queue(default_concurrency_limit=1, max_size=8)
    from maskseg.app.launch import CSS  # Gradio 6 takes CSS in launch(): the page the visitors get

    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=CSS)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="session")
def small_images(tmp_path_factory) -> dict[str, Path]:
    """Small copies of the example photos (320 px long side) so CPU inference stays short."""
    from PIL import Image

    out = tmp_path_factory.mktemp("small_images")
    images = {}
    for source in sorted((REPO_ROOT / "assets" / "examples").glob("*.jpg")):
        with Image.open(source) as im:
            im = im.convert("RGB")
            im.thumbnail((320, 320))
            target = out / source.name
            im.save(target, quality=90)
            images[source.stem] = target
    return images
