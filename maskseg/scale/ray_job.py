"""`predict --engine ray`: start or join Ray, stream the plan's inputs through Ray Data's actor pool,
record each outcome as it arrives, and print the local CLI's kind of summary."""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from maskseg.engine.sources import Source
from maskseg.errors import MaskSegError, UsageError
from maskseg.scale.journal import Entry, Journal, write_failures
from maskseg.scale.plan import JobSettings, Plan, make_plan

INSTALL_HINT = "--engine ray needs Ray, which is not installed here: pip install -r requirements-scale.txt"
# Batches per Ray Data block: small blocks share the work evenly between actors and bound what a
# dying actor takes down with it (its block is redone by the replacement).
BATCHES_PER_BLOCK = 4


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run."""

    address: str | None = None  # None: start a local Ray on this machine
    actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float | None = None  # None: this machine's cores shared out (local), else 1


@dataclass
class Tally:
    """What this run did, for the summary line."""

    done: int = 0
    objects: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    model: str = ""
    device: str = ""
    actor_pids: set[int] = field(default_factory=set)


def import_ray() -> Any:
    """The ray module, or the sentence that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (ray[data]: pyarrow and pandas come with it)
    except ImportError as exc:
        raise MaskSegError(f"{INSTALL_HINT} ({exc}).") from None
    return ray


def connect(ray: Any, options: RayOptions) -> bool:
    """Join the cluster at --address, or start a local Ray; True when this call started it."""
    if ray.is_initialized():
        return False  # a caller (a test, a notebook) already chose the cluster
    if options.address:
        try:
            _check_reachable(options.address)
            ray.init(address=options.address)
        except (OSError, RuntimeError, ValueError) as exc:  # ConnectionError is an OSError
            raise MaskSegError(
                f"Could not join the Ray cluster at {options.address} ({exc}). Is `ray start --head` running "
                "there? Ray clusters use token authentication: set RAY_AUTH_MODE=token and copy the head "
                "node's token (`ray get-auth-token`) to ~/.ray/auth_token on this machine, or run the "
                "command on a cluster node with --address auto."
            ) from None
    else:
        ray.init(include_dashboard=False)
    return True


def _check_reachable(address: str) -> None:
    """Fail at once (ConnectionError) when host:port does not answer: ray.init would retry for minutes."""
    import socket

    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # "auto", "ray://...": Ray's own lookup
    with socket.create_connection((host, int(port)), timeout=10):
        pass


def cpus_per_actor(ray: Any, options: RayOptions) -> float:
    """CPUs each actor reserves (Ray then gives its torch that many threads)."""
    if options.cpus_per_actor is not None:
        return options.cpus_per_actor
    if options.address or options.gpus_per_actor:
        return 1.0
    cores = ray.cluster_resources().get("CPU", os.cpu_count() or 1)
    return float(max(1, int(cores) // options.actors))


def run_ray_predict(
    sources: Sequence[Source], refused: Sequence[tuple[str, str]], settings: JobSettings, options: RayOptions
) -> int:
    """The whole job; exit code 1 when any input failed, like the local CLI."""
    ray = import_ray()
    if options.actors < 1:
        raise UsageError(f"--actors must be at least 1, not {options.actors}.")
    out = Path(settings.out)
    journal = Journal(out)
    plan = make_plan(sources, journal.read(), settings)
    tally = Tally(failures=[*refused, *((e.input, e.reason) for e in plan.known_failures)])
    started = time.perf_counter()
    try:
        if plan.rows:
            _run_rows(ray, plan, settings, options, journal, tally)
    finally:
        journal.close()
    if settings.output_format == "coco":
        _merge_coco(out, plan, journal, settings)
    write_failures(out, tally.failures)
    print(_summary(plan, tally, settings, options, len(sources) + len(refused), time.perf_counter() - started))
    if tally.failures:
        print(f"{len(tally.failures)} failed (listed in {out / 'failures.csv'}):", file=sys.stderr)
        for name, reason in tally.failures[:20]:
            print(f"  {name}: {reason}", file=sys.stderr)
        return 1
    return 0


def _run_rows(ray: Any, plan: Plan, settings: JobSettings, options: RayOptions, journal: Journal, tally: Tally) -> None:
    """Ray Data: the rows in blocks, SegmentWorker actors over them, results streamed back in order of
    completion. Ray Data restarts a dead actor and re-runs its unfinished blocks (max_restarts and
    max_task_retries default to unlimited for actor pools)."""
    from maskseg.scale.worker import SegmentWorker

    started_ray = connect(ray, options)
    try:
        rows_per_block = settings.batch_size * BATCHES_PER_BLOCK
        blocks = min(len(plan.rows), max(options.actors, math.ceil(len(plan.rows) / rows_per_block)))
        dataset = ray.data.from_items(plan.rows, override_num_blocks=blocks)  # a block for every actor at least
        results = dataset.map_batches(
            SegmentWorker, fn_constructor_kwargs={"settings": settings}, batch_size=settings.batch_size,
            compute=ray.data.ActorPoolStrategy(size=options.actors), num_cpus=cpus_per_actor(ray, options),
            num_gpus=options.gpus_per_actor or None,
        )
        key = settings.key()
        try:
            for row in results.iter_rows():
                _record(row, key, journal, tally)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, MaskSegError):  # a user error in every actor (weights, class name)
                raise cause from None
            raise
    finally:
        if started_ray:
            ray.shutdown()


def _record(row: dict, key: str, journal: Journal, tally: Tally) -> None:
    """One finished input: a journal line, and the tally."""
    import json

    status = str(row["status"])
    if status in ("usage", "error"):  # the actors could not start (weights, class names): stop here
        raise (UsageError if status == "usage" else MaskSegError)(str(row["reason"]))
    entry = Entry(input=str(row["input"]), status=status, settings=key, folder=str(row["folder"]), objects=int(row["objects"]))
    if status == "done":
        tally.done += 1
        tally.objects += entry.objects
        if row["document"]:
            entry.document = json.loads(row["document"])
    else:
        entry.reason, entry.signature = str(row["reason"]), str(row["signature"])
        tally.failures.append((entry.input, entry.reason))
        print(f"failed {entry.input}: {entry.reason}", file=sys.stderr)
    tally.model, tally.device = str(row["model"]), str(row["device"])
    tally.actor_pids.add(int(row["pid"]))
    journal.append(entry)


def _merge_coco(out: Path, plan: Plan, journal: Journal, settings: JobSettings) -> None:
    """coco.json and objects.parquet from every image done with these settings, in input order."""
    from maskseg.scale.coco import write_coco

    key = settings.key()
    offsets = {}
    for offset, entry in journal.entries():
        if entry.input in plan.order and entry.settings == key:
            offsets[entry.input] = (offset, entry.status)
    ordered = sorted((plan.order[name], offset) for name, (offset, status) in offsets.items() if status == "done")
    documents = ((entry.input, entry.document) for entry in (journal.entry_at(offset) for _, offset in ordered))
    write_coco(out, ((name, doc) for name, doc in documents if doc is not None))


def _summary(plan: Plan, tally: Tally, settings: JobSettings, options: RayOptions, total: int, seconds: float) -> str:
    """The local CLI's summary line, plus what was skipped and where it ran."""
    where = f"{settings.out}/coco.json and objects.parquet" if settings.output_format == "coco" else f"bundles in {settings.out}"
    ran = f"{tally.model} on {tally.device}, {options.actors} Ray actor{'s' if options.actors > 1 else ''}" if tally.model else "nothing to run"
    return (
        f"Segmented {tally.done} of {total} inputs ({len(plan.done)} skipped as already done, "
        f"{len(tally.failures)} failed): {tally.objects} objects above {settings.score_threshold:.2f}, "
        f"{where} ({seconds:.1f} s, {ran})."
    )
