"""Store commands: fetch, verify, models."""

from __future__ import annotations

import os
import time
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from appliance import constants
from appliance.cli._common import (
    ManifestsOpt,
    ModelsArg,
    ProfileOpt,
    StoreOpt,
    console,
    human_bytes,
    out,
    select_models,
)
from appliance.errors import ApplianceError, FetchInterrupted, Interrupted, LockError, VerifyError
from appliance.manifest import Catalog
from appliance.store.fetch import FetchOptions, fetch_model
from appliance.store.lock import read_lock
from appliance.store.verify import verify_deep, verify_fast


def _bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def fetch(
    models: ModelsArg = None,
    profile: ProfileOpt = None,
    store: StoreOpt = None,
    manifests: ManifestsOpt = None,
    frozen: Annotated[
        bool, typer.Option(help="Refuse a model without a lock, or whose lock disagrees with its manifest (CI).")
    ] = False,
    allow_unpinned: Annotated[
        bool, typer.Option(help="Resolve a branch or tag revision now and pin the commit in a new lock.")
    ] = False,
    upgrade: Annotated[bool, typer.Option(help="Re-resolve the manifest's revision even if a lock matches.")] = False,
    workers: Annotated[
        int, typer.Option(min=1, help="Files downloaded at once per model.")
    ] = constants.fetch_workers(),
) -> None:
    """Fetch every file of the selected models into the store, checked against their locks.

    Hub sources go through huggingface_hub (HF_ENDPOINT selects a mirror) or modelscope
    (MODELSCOPE_ENDPOINT); dir: and tar: sources import a local copy. Each file is hashed and
    checked against the lock (or, when creating a lock, against the hub's published sha256) before
    it enters the store; an interrupted fetch resumes without re-downloading finished files.

    Examples:

      appliance fetch --profile gpu-24gb --frozen

      HF_ENDPOINT=http://mirror.local:8090 appliance fetch paddleocr-vl-0-9b --allow-unpinned
    """
    # Our bars replace the hub clients' per-file tqdm bars (huggingface_hub and modelscope_hub).
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if upgrade and frozen:
        raise typer.BadParameter("--upgrade re-resolves revisions; it cannot be combined with --frozen")
    catalog = Catalog(manifests)
    store_root = store or constants.store_dir()
    options = FetchOptions(frozen=frozen, allow_unpinned=allow_unpinned, upgrade=upgrade, workers=workers)
    selected = select_models(catalog, profile, models)
    table = Table("model", "commit", "files", "size", "fetched", "time", "lock", title=f"store: {store_root}")
    for manifest in selected:
        started = time.monotonic()
        try:
            with _bar() as bar:
                task = bar.add_task(manifest.name, total=None)
                report = fetch_model(
                    manifest,
                    catalog.lock_path(manifest.name),
                    store_root,
                    options,
                    progress=lambda done, total, task=task: bar.update(task, completed=done, total=total),
                )
        except FetchInterrupted as exc:  # click would turn it into a bare Abort (exit 1)
            raise Interrupted(str(exc)) from None
        table.add_row(
            manifest.name,
            report.commit[:12],
            str(report.files),
            human_bytes(report.total_bytes),
            "up to date" if report.up_to_date else human_bytes(report.downloaded_bytes),
            f"{time.monotonic() - started:.1f}s",
            "written" if report.lock_written else "unchanged",
        )
    out.print(table)


def verify(
    models: ModelsArg = None,
    profile: ProfileOpt = None,
    store: StoreOpt = None,
    manifests: ManifestsOpt = None,
    deep: Annotated[
        bool, typer.Option("--deep/--fast", help="--fast: file set and sizes (boot). --deep: re-hash every file.")
    ] = False,
    workers: Annotated[int, typer.Option(min=1, help="Files hashed at once (--deep).")] = constants.hash_workers(),
) -> None:
    """Prove the store holds exactly what the locks say: no missing, extra, short or altered file.

    Exit status 1 names every bad file. --fast is sub-second for any store size; --deep re-hashes
    everything in parallel at disk speed.

    Examples:

      appliance verify --profile tiny-cpu --deep

      appliance verify --store /models dots-ocr
    """
    catalog = Catalog(manifests)
    store_root = store or constants.store_dir()
    problems = []
    for manifest in select_models(catalog, profile, models):
        lock = read_lock(catalog.lock_path(manifest.name))
        if lock is None:
            raise LockError(
                f"{manifest.name}: no lock at {catalog.lock_path(manifest.name)}; nothing to verify against"
            )
        model_dir = store_root / manifest.name
        started = time.monotonic()
        if deep:
            with _bar() as bar:
                task = bar.add_task(manifest.name, total=lock.total_size)
                found = verify_deep(model_dir, lock, workers, progress=lambda n, task=task: bar.advance(task, n))
        else:
            found = verify_fast(model_dir, lock)
        elapsed = time.monotonic() - started
        status = "[green]ok[/]" if not found else f"[red]{len(found)} problem(s)[/]"
        out.print(
            f"{manifest.name}: {status} ({len(lock.files)} files, {human_bytes(lock.total_size)}, {elapsed:.2f}s)"
        )
        problems.extend(found)
    if problems:
        raise VerifyError(problems)


def models(manifests: ManifestsOpt = None) -> None:
    """List every model manifest and profile, and whether each model has a lock."""
    catalog = Catalog(manifests)
    errors = catalog.check_all()
    table = Table("model", "engine", "source", "revision", "lock", title="models")
    for name in catalog.model_names():
        try:
            manifest = catalog.model(name)
        except ApplianceError:
            continue
        try:
            lock = read_lock(catalog.lock_path(name))
            locked = f"{lock.commit[:12]} ({human_bytes(lock.total_size)})" if lock else "-"
        except LockError:
            locked = "[red]invalid[/]"
        table.add_row(name, manifest.engine, str(manifest.source), str(manifest.revision or "-"), locked)
    out.print(table)
    profiles = Table("profile", "target", "models", title="profiles")
    for name in catalog.profile_names():
        try:
            prof = catalog.profile(name)
        except ApplianceError:
            continue
        target = f"{prof.target.device} {prof.target.gpu_memory_gib or ''}".strip()
        profiles.add_row(name, target, ", ".join(m.model for m in prof.models))
    out.print(profiles)
    if errors:
        raise ApplianceError("\n".join(str(e) for e in errors))


def register(app: typer.Typer) -> None:
    app.command()(fetch)
    app.command()(verify)
    app.command()(models)
