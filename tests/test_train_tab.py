"""The Train tab's runs: temporary data removed, only the starting visitor can stop a run, the server's
minutes cap holds, a closed page stops its run, and `--train off` leaves no /train endpoint."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest
import torch

from maskseg.errors import MaskSegError
from maskseg.training import session
from maskseg.training.session import active_run, run_training_session, stop_run

TINY = dict(train_images=8, val_images=2, update_every_s=0.2, preview_every_s=0.5, start="scratch")


@pytest.fixture(autouse=True)
def one_thread_and_a_private_temp_dir(tmp_path, monkeypatch):
    """One torch thread (two would stall behind anything else on a small CPU); mkdtemp under tmp_path."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_root))
    yield temp_root
    torch.set_num_threads(threads)
    deadline = time.monotonic() + 30
    while active_run() is not None and time.monotonic() < deadline:  # never leave a run to the next test
        time.sleep(0.1)


def _synthetic_folders(temp_root: Path) -> list[Path]:
    return sorted(temp_root.glob("maskseg-train-*"))


def _until_training(updates) -> str:
    """Consume updates until the status shows training steps; that status."""
    for status, *_rest in updates:
        if "step " in status:
            return status
    raise AssertionError("the run ended before a training step was reported")


def test_the_synthetic_set_is_removed_after_a_finished_run(one_thread_and_a_private_temp_dir, tmp_path):
    temp_root = one_thread_and_a_private_temp_dir
    updates = list(run_training_session(minutes=0.03, checkpoints_dir=tmp_path / "ck", name="quick", **TINY))
    status, frame, preview, report, plot = updates[-1]
    assert status.startswith("Done") and "quick.pt" in status
    assert _synthetic_folders(temp_root) == []
    # the page's PR plot outlives the folder: it is kept next to the checkpoint it describes
    assert Path(plot) == tmp_path / "ck" / "quick-pr.png" and Path(plot).is_file()
    assert "mask" in report and preview is not None
    # no made-up loss point before the first step: the first update has no curve at all
    assert updates[0][1] is None and frame is not None and (frame["step"] > 0).all()


def test_the_synthetic_set_is_removed_after_a_failed_run(one_thread_and_a_private_temp_dir, tmp_path, monkeypatch):
    temp_root = one_thread_and_a_private_temp_dir
    monkeypatch.setattr(session, "DEMO_CHECKPOINT", tmp_path / "missing-demo.pt")
    with pytest.raises(MaskSegError, match="demo model .* is missing"):
        list(run_training_session(minutes=0.03, checkpoints_dir=tmp_path / "ck", **{**TINY, "start": "demo-backbone"}))
    assert _synthetic_folders(temp_root) == []
    assert active_run() is None  # the next run may start


def test_only_the_visitor_who_started_a_run_can_stop_it(one_thread_and_a_private_temp_dir, tmp_path):
    temp_root = one_thread_and_a_private_temp_dir
    assert stop_run("alice") == "No training run is going."
    started = time.monotonic()
    updates = run_training_session(minutes=0.5, checkpoints_dir=tmp_path / "ck", owner="alice", **TINY)
    _until_training(updates)

    with pytest.raises(MaskSegError, match="started by another visitor is going"):
        next(run_training_session(minutes=0.5, checkpoints_dir=tmp_path / "ck2", owner="bob", **TINY))
    message = stop_run("bob")
    assert "another visitor" in message and "only they can stop it" in message
    assert not active_run().stop.is_set()
    step_then = active_run().last_event.step
    status = _until_training(updates)  # it keeps training
    while active_run().last_event.step <= step_then:
        status = next(updates)[0]
    assert status.startswith("Training")

    assert stop_run("alice").startswith("Stopping")
    final = list(updates)[-1]
    assert final[0].startswith("Stopped early") and time.monotonic() - started < 25  # not the 30 s budget
    assert len(list((tmp_path / "ck").glob("*.pt"))) == 1  # the best weights so far are kept
    assert _synthetic_folders(temp_root) == []


def test_a_request_over_the_servers_cap_is_refused(tmp_path):
    updates = run_training_session(minutes=45, max_minutes=30, checkpoints_dir=tmp_path / "ck", **TINY)
    with pytest.raises(MaskSegError, match=r"limited to 30 minutes; you asked for 45"):
        next(updates)
    assert active_run() is None and not (tmp_path / "ck").exists()


def test_closing_the_page_mid_run_stops_it_without_blocking(one_thread_and_a_private_temp_dir, tmp_path):
    temp_root = one_thread_and_a_private_temp_dir
    updates = run_training_session(minutes=0.5, checkpoints_dir=tmp_path / "ck", owner="alice", **TINY)
    _until_training(updates)
    run = active_run()
    began = time.monotonic()
    updates.close()  # what Gradio does when the tab is gone; it runs on the server's event loop
    assert time.monotonic() - began < 0.5
    assert run.finished.wait(timeout=20)  # the worker stops, saves and cleans up by itself
    assert active_run() is None and run.error is None and run.result.interrupted
    assert _synthetic_folders(temp_root) == []
    assert run.report == ""  # nobody is watching: no evaluation


@pytest.mark.server
def test_the_train_api_is_absent_when_training_is_off(tmp_path):
    from gradio_client import Client

    from conftest import free_port
    from maskseg.app.config import AppConfig
    from maskseg.app.launch import build_app

    config = AppConfig(model="shapes-demo", device="cpu", checkpoints_dir=tmp_path / "ck", train_enabled=False)
    demo = build_app(config)
    port = free_port()
    demo.queue(default_concurrency_limit=1, max_size=8)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        endpoints = Client(f"http://127.0.0.1:{port}/", verbose=False).view_api(print_info=False, return_format="dict")["named_endpoints"]
    finally:
        demo.close()
    assert "/segment" in endpoints
    assert "/train" not in endpoints and "/train_stop" not in endpoints


@pytest.mark.server
def test_the_train_api_caps_minutes_and_keeps_runs_to_their_owner(tmp_path):
    from gradio_client import Client

    from conftest import free_port
    from maskseg.app.config import AppConfig
    from maskseg.app.launch import build_app

    config = AppConfig(model="shapes-demo", device="cpu", checkpoints_dir=tmp_path / "ck", max_train_minutes=2)
    demo = build_app(config)
    port = free_port()
    demo.queue(default_concurrency_limit=1, max_size=8)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        owner, visitor = Client(url, verbose=False), Client(url, verbose=False)
        endpoints = owner.view_api(print_info=False, return_format="dict")["named_endpoints"]
        assert "/train" in endpoints and "/train_stop" in endpoints
        form = dict(train_images=8, val_images=2, start_from="scratch", seed=0, name="api-run")
        with pytest.raises(Exception, match=r"limited to 2 minutes; you asked for 45"):
            owner.predict(minutes=45, **form, api_name="/train")

        job = owner.submit(minutes=0.5, **form, api_name="/train")
        deadline = time.monotonic() + 30
        while (active_run() is None or active_run().last_event is None) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert active_run().owner == owner.session_hash
        assert "only they can stop it" in visitor.predict(api_name="/train_stop")
        assert not active_run().stop.is_set()
        assert owner.predict(api_name="/train_stop").startswith("Stopping")
        status, *_rest = job.result(timeout=60)
        assert status.startswith("Stopped early") and (tmp_path / "ck" / "api-run.pt").is_file()
    finally:
        demo.close()
