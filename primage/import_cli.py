"""`primage import ...` and `primage jobs ...`: automatic feeding from the command line.

Each importer is a Source (curation/) run by curation.runner against a destination built
by primage/imports.py; the commands add options, progress bars and the summary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .settings import Settings


@click.group(name="import")
def import_group() -> None:
    """Automatic feeding: import from a PACS, a DICOMweb archive, folders, registry exports."""


def _import_options(f: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--to",
                "to",
                default=None,
                help="A platform's DICOMweb base URL (default: this platform, as --site).",
            ),
            click.option("--site", default=None, help="With no --to: the site the data is from."),
            click.option("--client-id", envvar="PRIMAGE_IMPORT_CLIENT_ID", default=None),
            click.option("--client-secret", envvar="PRIMAGE_IMPORT_CLIENT_SECRET", default=None),
            click.option("--dry-run", is_flag=True, help="List and preview; send nothing."),
            click.option("--batch", default=16, show_default=True, help="Instances per STOW."),
            click.option("--workers", default=2, show_default=True, help="STOWs in flight."),
            click.option("--report", type=click.Path(dir_okay=False), default=None),
        ]
    ):
        f = option(f)
    return f


@import_group.command("folder")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@_import_options
def import_folder(path: Path, **options: Any) -> None:
    """DICOM files under PATH (recursive), zip files, or a DICOMDIR."""
    from curation.folder import FolderSource

    _import(FolderSource(path), **options)


# --- pacs: primage import pacs (curation/pacs.py) ------------------------------------------

# --- dicomweb: primage import dicomweb (curation/dicomweb_source.py) ------------------------

# --- clinical: primage import clinical (curation/clinical.py) -------------------------------


def _import(
    source: Any, *, to: str | None, site: str | None, dry_run: bool, **options: Any
) -> None:
    from . import imports

    if dry_run:
        _dry_run(source, options.get("report"))
        return
    if to is None and not site:
        raise click.UsageError("Say where to: --to URL, or --site SITE for this platform")
    settings = Settings()
    ledger = imports.ledger(settings)
    job = ledger.create(source.kind, source.spec(), to or f"local:{site}")
    click.echo(f"import job {job.id}: {source.kind} -> {job.destination}")
    _work(ledger, job, source, settings, **options)


def _work(
    ledger: Any,
    job: Any,
    source: Any,
    settings: Settings,
    *,
    client_id: str | None,
    client_secret: str | None,
    batch: int,
    workers: int,
    report: str | None,
) -> None:
    from contextlib import ExitStack

    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from curation import runner
    from curation.ledger import PENDING

    from . import imports

    credentials = imports.Credentials(client_id, client_secret)
    with ExitStack() as stack:
        destination = imports.destination_of(job.destination, settings, credentials, stack)
        runner.plan(ledger, job, source)
        job = ledger.job(job.id)
        counts = ledger.counts(job.id)
        pending = counts[PENDING]
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, transient=False) as progress:
            task = progress.add_task(f"job {job.id}", total=pending["bytes"] or None)
            items = progress.add_task("instances", total=pending["items"], visible=False)

            def advance(n: int, size: int) -> None:
                progress.update(task, advance=size)
                progress.update(items, advance=n)

            counts = runner.run(
                ledger, job, source, destination, batch=batch, workers=workers, advance=advance
            )
    _summary(ledger, job.id, counts, report)


def _summary(ledger: Any, job_id: int, counts: dict, report: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    from curation.ledger import FAILED, QUARANTINED

    job = ledger.job(job_id)
    table = Table(title=f"import job {job_id}: {job.status}")
    table.add_column("state")
    table.add_column("items", justify="right")
    table.add_column("bytes", justify="right")
    for state, figures in counts.items():
        table.add_row(state, str(figures["items"]), str(figures["bytes"]))
    Console().print(table)
    problems = [
        {"key": i.key, "state": i.state, "reason": i.reason}
        for i in ledger.items(job_id, (FAILED, QUARANTINED))
    ]
    for problem in problems[:20]:
        click.echo(f"  {problem['state']}: {problem['key']}: {problem['reason']}")
    if report:
        document = {
            "job": job_id,
            "kind": job.kind,
            "destination": job.destination,
            "status": job.status,
            "counts": counts,
            "problems": problems,
        }
        Path(report).write_text(json.dumps(document, indent=2))


def _dry_run(source: Any, report: str | None) -> None:
    from curation import preview

    summary = preview.summarise(source.preview())
    click.echo(
        f"would import {summary['instances']} instances ({summary['bytes']} bytes): "
        f"{summary['patients']} patients, {summary['studies']} studies, "
        f"{summary['series']} series"
    )
    for study in summary["per_study"]:
        click.echo(
            f"  study {study['date'] or '(no date)'} {'/'.join(study['modalities'])}: "
            f"{study['series']} series, {study['instances']} instances"
        )
    deid = summary["deidentification"]
    click.echo(f"de-identification would remove: {', '.join(deid['removed']) or 'nothing'}")
    click.echo(f"  and replace: {', '.join(deid['replaced']) or 'nothing'}")
    for reason, count in deid["quarantined"].items():
        click.echo(f"  quarantine {count}: {reason}")
    if report:
        Path(report).write_text(json.dumps(summary, indent=2))


@click.group()
def jobs() -> None:
    """Import jobs: list, show, resume, retry what failed."""


@jobs.command("list")
def jobs_list() -> None:
    from . import imports

    ledger = imports.ledger(Settings())
    for job in ledger.jobs():
        counts = ledger.counts(job.id)
        figures = " ".join(f"{s}={c['items']}" for s, c in counts.items() if c["items"])
        click.echo(f"{job.id}\t{job.kind}\t{job.status}\t{job.destination}\t{figures}")


@jobs.command("show")
@click.argument("job_id", type=int)
@click.option("--report", type=click.Path(dir_okay=False), default=None)
def jobs_show(job_id: int, report: str | None) -> None:
    from . import imports

    ledger = imports.ledger(Settings())
    _summary(ledger, _job(ledger, job_id).id, ledger.counts(job_id), report)


def _job(ledger: Any, job_id: int) -> Any:
    try:
        return ledger.job(job_id)
    except KeyError:
        raise click.UsageError(f"No import job {job_id}") from None


def _resume_options(f: Any) -> Any:
    for option in reversed(
        [
            click.option("--client-id", envvar="PRIMAGE_IMPORT_CLIENT_ID", default=None),
            click.option("--client-secret", envvar="PRIMAGE_IMPORT_CLIENT_SECRET", default=None),
            click.option("--batch", default=16, show_default=True),
            click.option("--workers", default=2, show_default=True),
            click.option("--report", type=click.Path(dir_okay=False), default=None),
        ]
    ):
        f = option(f)
    return f


@jobs.command("resume")
@click.argument("job_id", type=int)
@_resume_options
def jobs_resume(job_id: int, **options: Any) -> None:
    """Carry on where a killed or interrupted import stopped."""
    from . import imports

    settings = Settings()
    ledger = imports.ledger(settings)
    job = _job(ledger, job_id)
    _work(ledger, job, imports.source_of(job.kind, job.spec), settings, **options)


@jobs.command("retry-failed")
@click.argument("job_id", type=int)
@_resume_options
def jobs_retry_failed(job_id: int, **options: Any) -> None:
    """Send the failed items again (not the quarantined ones)."""
    from . import imports

    settings = Settings()
    ledger = imports.ledger(settings)
    job = _job(ledger, job_id)
    click.echo(f"{ledger.retry_failed(job_id)} failed items pending again")
    _work(ledger, ledger.job(job.id), imports.source_of(job.kind, job.spec), settings, **options)
