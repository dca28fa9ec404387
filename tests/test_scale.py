"""`predict --engine ray` on a local 2-CPU Ray: the same files as the local engine, reruns skip what
is done, bad files land in failures.csv, a killed actor is replaced and its images redone once."""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import require_or_skip
from maskseg import cli

NUM_IMAGES = 200
BAD_FILES = {"empty.png": b"", "notes.jpg": b"this is not a picture", "cut.png": b"\x89PNG\r\n\x1a\n\x00\x00"}
JOURNAL = "maskseg-journal.jsonl"


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def ray_cluster():
    """One small local Ray for the whole module: 2 CPUs, a 200 MB object store, no dashboard."""
    require_or_skip(ray_available(), "Ray is not installed (pip install -r requirements-scale.txt)")
    import ray

    ray.init(num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """200 synthetic shapes (128 px) and three files that are not images, in one folder."""
    from maskseg.training.synth import SynthOptions, generate_dataset

    root = tmp_path_factory.mktemp("scale_data")
    generate_dataset(root, SynthOptions(num_images=NUM_IMAGES, seed=12, size=128))
    for name, data in BAD_FILES.items():
        (root / "images" / name).write_bytes(data)
    return root / "images"


def predict(capsys, *args: str) -> tuple[int, str, str]:
    """`python -m maskseg predict ...` in this process (the Ray job then joins the module's Ray)."""
    code = cli.main(["predict", *args, "--model", "shapes-demo"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def local_bundles(photos, tmp_path_factory) -> tuple[Path, str]:
    """The reference: the local engine's bundles for the same folder, and what it printed to stderr."""
    out = tmp_path_factory.mktemp("local") / "bundles"
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["predict", str(photos), "--out", str(out), "--model", "shapes-demo"])
    assert code == 1  # the three bad files
    return out, err.getvalue()


def bundle_files(root: Path) -> dict[str, bytes | dict]:
    """Every bundle file under root by relative path; instances.json parsed, without its creation time."""
    files: dict[str, bytes | dict] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.parent == root:
            continue  # the job's own files (journal, failures.csv) sit at the top
        relative = path.relative_to(root).as_posix()
        if path.name == "instances.json":
            document = json.loads(path.read_text())
            document["info"].pop("date_created")
            files[relative] = document
        else:
            files[relative] = path.read_bytes()
    return files


def journal_entries(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / JOURNAL).read_text().splitlines()]


def failures_csv(out: Path) -> dict[str, str]:
    with open(out / "failures.csv", newline="") as handle:
        return {Path(row["input"]).name: row["reason"] for row in csv.DictReader(handle)}


def test_bundles_equal_the_local_engine_and_bad_files_land_in_failures_csv(
    ray_cluster, photos, local_bundles, tmp_path, capsys
) -> None:
    local_out, local_err = local_bundles
    out = tmp_path / "ray"
    code, stdout, stderr = predict(capsys, str(photos), "--out", str(out), "--engine", "ray", "--actors", "2")
    assert code == 1, stderr  # like the local CLI: some inputs failed
    assert f"Segmented {NUM_IMAGES} of {NUM_IMAGES + 3} inputs (0 skipped as already done, 3 failed)" in stdout
    assert "2 Ray actors" in stdout

    ray_files, local_files = bundle_files(out), bundle_files(local_out)
    assert len(local_files) > NUM_IMAGES * 5
    assert ray_files.keys() == local_files.keys()
    different = [name for name in local_files if ray_files[name] != local_files[name]]
    assert not different, f"{len(different)} files differ from the local engine's, e.g. {different[:5]}"

    failures = failures_csv(out)
    assert sorted(failures) == sorted(BAD_FILES)
    for name, reason in failures.items():
        assert f"{name}: {reason}" in local_err  # the local CLI's own sentence for that file
        assert "Traceback" not in reason
    entries = journal_entries(out)
    assert sorted(e["input"] for e in entries if e["status"] == "done") == sorted(
        str(p) for p in photos.glob("shape_*.png"))


def test_a_rerun_does_no_work_and_redoes_only_what_is_missing(ray_cluster, photos, tmp_path, capsys) -> None:
    out = tmp_path / "ray"
    subset = tmp_path / "subset.txt"  # a text manifest: 20 images and one bad file, paths relative to it
    names = sorted(p.name for p in photos.glob("shape_*.png"))[:20] + ["notes.jpg"]
    subset.write_text("# first twenty\n" + "".join(f"{os.path.relpath(photos / n, tmp_path)}\n" for n in names))
    args = (str(subset), "--out", str(out), "--engine", "ray", "--actors", "2")
    code, stdout, _ = predict(capsys, *args)
    assert "Segmented 20 of 21 inputs (0 skipped as already done, 1 failed)" in stdout, stdout
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.parent != out}

    started = time.perf_counter()
    code, stdout, _ = predict(capsys, *args)
    assert code == 1  # notes.jpg is still not an image, and still reported
    assert "Segmented 0 of 21 inputs (20 skipped as already done, 1 failed)" in stdout, stdout
    assert "nothing to run" in stdout
    assert time.perf_counter() - started < 5
    assert {p: p.stat().st_mtime_ns for p in written} == written  # not one file rewritten
    assert list(failures_csv(out)) == ["notes.jpg"]

    gone = out / Path(names[3]).stem
    for path in sorted(gone.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    gone.rmdir()
    code, stdout, _ = predict(capsys, *args)
    assert "Segmented 1 of 21 inputs (19 skipped as already done, 1 failed)" in stdout, stdout
    assert (gone / "objects.csv").is_file()


def test_coco_format_merges_the_local_engines_objects(ray_cluster, photos, local_bundles, tmp_path, capsys) -> None:
    import pyarrow.parquet as pq
    from pycocotools.coco import COCO

    local_out, _ = local_bundles
    manifest = tmp_path / "photos.csv"  # a CSV manifest with absolute paths in a 'path' column
    good = sorted(photos.glob("shape_*.png"))
    manifest.write_text("id,path\n" + "".join(f"{i},{p}\n" for i, p in enumerate(good)))
    out = tmp_path / "coco"
    code, stdout, stderr = predict(capsys, str(manifest), "--out", str(out), "--engine", "ray", "--actors", "2",
                                   "--format", "coco")
    assert code == 0, stderr
    assert f"Segmented {NUM_IMAGES} of {NUM_IMAGES} inputs" in stdout
    assert not (out / "failures.csv").exists()

    merged = json.loads((out / "coco.json").read_text())
    assert [image["file_name"] for image in merged["images"]] == [p.name for p in good]
    by_image: dict[int, list[dict]] = {}
    for ann in merged["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for image in merged["images"]:
        local = json.loads((local_out / Path(image["file_name"]).stem / "instances.json").read_text())
        assert merged["categories"] == local["categories"]
        # The merged file numbers annotations across images and keeps each one's number in its image.
        mine = [{**{k: v for k, v in a.items() if k != "instance"}, "id": a["instance"], "image_id": 1}
                for a in by_image.get(image["id"], [])]
        assert mine == local["annotations"], image["file_name"]
    assert len({ann["id"] for ann in merged["annotations"]}) == len(merged["annotations"])
    assert len(COCO(str(out / "coco.json")).getAnnIds()) == len(merged["annotations"])

    table = pq.read_table(out / "objects.parquet").to_pylist()
    assert len(table) == len(merged["annotations"]) > NUM_IMAGES
    first = merged["annotations"][0]
    assert table[0]["image"] == merged["images"][0]["file_name"]
    assert (table[0]["score"], table[0]["area"], [table[0][k] for k in ("x", "y", "width", "height")]) == (
        first["score"], first["area"], first["bbox"])
    names = {c["id"]: c["name"] for c in merged["categories"]}
    assert {row["class"] for row in table} == {names[a["category_id"]] for a in merged["annotations"]}


def segment_worker_pids() -> list[int]:
    """Processes of this machine's SegmentWorker actors (Ray titles them after the class)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"MapWorker(MapBatches(SegmentWorker))" in title:
                pids.append(int(entry.name))
    return pids


def test_an_actor_killed_mid_run_is_replaced_and_every_image_is_done_once(
    ray_cluster, photos, local_bundles, tmp_path, capsys
) -> None:
    require_or_skip(sys.platform.startswith("linux"), "finds actor processes through /proc")
    local_out, _ = local_bundles
    out = tmp_path / "ray"
    killed: list[int] = []

    def kill_one_actor_mid_run() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            journal = out / JOURNAL
            done = len(journal.read_text().splitlines()) if journal.is_file() else 0
            pids = segment_worker_pids()
            if 30 <= done < NUM_IMAGES - 60 and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_actor_mid_run, daemon=True)
    killer.start()
    code, stdout, stderr = predict(capsys, str(photos / "shape_*.png"), "--out", str(out), "--engine", "ray",
                                   "--actors", "2")
    killer.join(timeout=5)
    assert killed, "the test never saw an actor to kill mid-run"
    assert code == 0, stderr
    assert f"Segmented {NUM_IMAGES} of {NUM_IMAGES} inputs (0 skipped as already done, 0 failed)" in stdout
    done = [e["input"] for e in journal_entries(out) if e["status"] == "done"]
    assert len(done) == len(set(done)) == NUM_IMAGES  # every image once: none lost, none twice
    ray_files, local_files = bundle_files(out), bundle_files(local_out)
    local_files = {k: v for k, v in local_files.items() if k.startswith("shape_")}
    assert ray_files == local_files


def test_without_ray_the_command_says_how_to_install_it(monkeypatch, photos, tmp_path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    code, _, stderr = predict(capsys, str(photos), "--out", str(tmp_path / "out"), "--engine", "ray")
    assert code == 1
    assert "pip install -r requirements-scale.txt" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def test_the_local_engine_refuses_ray_only_flags(photos, tmp_path, capsys) -> None:
    code, _, stderr = predict(capsys, str(photos), "--out", str(tmp_path), "--actors", "2", "--format", "coco")
    assert code == 2
    assert "--actors, --format coco only apply with --engine ray" in stderr


def test_a_failed_input_keeps_its_folder_name_on_both_engines(ray_cluster, photos, tmp_path, capsys) -> None:
    folder = tmp_path / "inputs"  # "b.jpg" cannot be read; "b.png" is the same stem and comes after it
    folder.mkdir()
    (folder / "a.png").write_bytes((photos / "shape_12_00001.png").read_bytes())
    (folder / "b.jpg").write_bytes(b"not a picture")
    (folder / "b.png").write_bytes((photos / "shape_12_00002.png").read_bytes())
    local_code, _, _ = predict(capsys, str(folder), "--out", str(tmp_path / "local"))
    ray_code, _, _ = predict(capsys, str(folder), "--out", str(tmp_path / "ray"), "--engine", "ray", "--actors", "2")
    assert local_code == ray_code == 1
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == ["a", "b_2"]
    assert bundle_files(tmp_path / "ray") == bundle_files(tmp_path / "local")


def test_a_setting_the_actors_refuse_is_one_sentence_and_exit_code_2(ray_cluster, photos, tmp_path, capsys) -> None:
    code, stdout, stderr = predict(capsys, str(photos / "shape_12_0000*.png"), "--out", str(tmp_path / "out"),
                                   "--engine", "ray", "--classes", "zebra")
    assert code == 2
    assert "error: Unknown class 'zebra'" in stderr and "Traceback" not in stderr
    assert "Segmented" not in stdout


def test_an_address_with_no_cluster_is_one_sentence_at_once(photos, tmp_path) -> None:
    import subprocess

    from conftest import REPO_ROOT, free_port

    require_or_skip(ray_available(), "Ray is not installed (pip install -r requirements-scale.txt)")
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "maskseg", "predict", str(photos), "--out", str(tmp_path / "out"), "--engine", "ray",
         "--address", f"127.0.0.1:{free_port()}", "--model", "shapes-demo"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 1
    assert "Could not join the Ray cluster at 127.0.0.1:" in result.stderr and "ray start --head" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.perf_counter() - started < 60  # not Ray's minutes of retries
