"""`primage import ...` and `primage jobs ...`: automatic feeding from the command line.

Each importer is a Source (curation/) run by curation.runner against a destination built
by primage/imports.py; the commands add options, progress bars and the summary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.progress import ProgressColumn
from rich.text import Text

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
                help="The platform: its root URL, or its /dicomweb or /fhir base "
                "(default: this platform, as --site).",
            ),
            click.option("--site", default=None, help="With no --to: the site the data is from."),
            click.option("--client-id", envvar="PRIMAGE_IMPORT_CLIENT_ID", default=None),
            click.option("--client-secret", envvar="PRIMAGE_IMPORT_CLIENT_SECRET", default=None),
            click.option("--dry-run", is_flag=True, help="List and preview; send nothing."),
            click.option(
                "--batch",
                default=16,
                show_default=True,
                help="Items per request (instances per STOW; patients for clinical).",
            ),
            click.option("--workers", default=2, show_default=True, help="Requests in flight."),
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


_DATE = click.DateTime(formats=["%Y-%m-%d", "%Y%m%d"])


@import_group.command("pacs")
@click.option("--host", required=True, help="The PACS's host name or address.")
@click.option("--port", type=int, required=True, help="The PACS's DICOM port.")
@click.option("--called-ae", required=True, help="The PACS's AE title.")
@click.option("--calling-ae", default="PRIMAGE", show_default=True, help="This importer's.")
@click.option("--patient", "patients", multiple=True, help="A Patient ID (repeatable).")
@click.option(
    "--patients-csv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A CSV file with a PatientID column.",
)
@click.option("--accession", "accessions", multiple=True, help="An accession number (repeatable).")
@click.option("--date-from", type=_DATE, default=None, help="Studies on or after (StudyDate).")
@click.option("--date-to", type=_DATE, default=None, help="Studies on or before (StudyDate).")
@click.option("--modality", default=None, help="Studies with a series of this modality.")
@click.option("--retrieve", type=click.Choice(["move", "get"]), default="move", show_default=True)
@click.option("--scp-ae", default=None, help="C-MOVE destination AE title [default: --calling-ae].")
@click.option("--scp-port", type=int, default=11113, show_default=True, help="Its port.")
@click.option("--scp-bind", default=None, help="Its address [default: every interface].")
@_import_options
def import_pacs(
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    patients: tuple[str, ...],
    patients_csv: Path | None,
    accessions: tuple[str, ...],
    date_from: Any,
    date_to: Any,
    modality: str | None,
    retrieve: str,
    scp_ae: str | None,
    scp_port: int,
    scp_bind: str | None,
    **options: Any,
) -> None:
    """Studies from a PACS: C-FIND by patients, accession numbers, dates and modality, then
    C-MOVE to a storage SCP this command starts (the PACS must know --scp-ae at this host
    and --scp-port) or C-GET."""
    from curation.pacs import EVERY_INTERFACE, PacsError, PacsSource, Selection

    if patients_csv is not None:
        patients = (*patients, *_csv_patients(patients_csv))
    selection = Selection(
        patients=tuple(dict.fromkeys(patients)),
        accessions=tuple(dict.fromkeys(accessions)),
        date_from=date_from.strftime("%Y%m%d") if date_from else None,
        date_to=date_to.strftime("%Y%m%d") if date_to else None,
        modality=modality,
    )
    if not selection:
        raise click.UsageError("Select studies: --patient, --patients-csv, --accession or dates")
    source = PacsSource(
        host,
        port,
        called_ae,
        calling_ae,
        selection,
        retrieve=retrieve,
        scp_ae=scp_ae,
        scp_port=scp_port,
        scp_bind=scp_bind or EVERY_INTERFACE,
    )
    try:
        source.echo()  # before a job is created: an unreachable PACS leaves no trace
        _import(source, **options)
    except PacsError as exc:
        raise click.ClickException(str(exc)) from None


def _csv_patients(path: Path) -> list[str]:
    import csv

    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        column = next(
            (name for name in reader.fieldnames or () if name.strip().lower() == "patientid"), None
        )
        if column is None:
            raise click.UsageError(f"{path.name} has no PatientID column")
        return [row[column].strip() for row in reader if (row[column] or "").strip()]


# --- dicomweb: primage import dicomweb (curation/dicomweb_source.py) ------------------------


@import_group.command("dicomweb")
@click.argument("source_url")
@click.option("--patient", "patients", multiple=True, help="Patient ID at the source (repeatable).")
@click.option("--accession", default=None, help="Accession Number.")
@click.option("--date-from", default=None, help="Study Date from (YYYY-MM-DD).")
@click.option("--date-to", default=None, help="Study Date to (YYYY-MM-DD), inclusive.")
@click.option("--modality", "modalities", multiple=True, help="Modality in study (repeatable).")
@click.option("--study", "studies", multiple=True, help="Study Instance UID (repeatable).")
@click.option("--all", "everything", is_flag=True, help="Every study the source holds.")
@click.option(
    "--source-token", envvar="PRIMAGE_IMPORT_SOURCE_TOKEN", default=None, help="Bearer token."
)
@click.option("--source-client-id", envvar="PRIMAGE_IMPORT_SOURCE_CLIENT_ID", default=None)
@click.option("--source-client-secret", envvar="PRIMAGE_IMPORT_SOURCE_CLIENT_SECRET", default=None)
@click.option(
    "--source-token-url", default=None, help="Default: /oauth/token beside the source's /dicomweb."
)
@_import_options
def import_dicomweb(
    source_url: str,
    patients: tuple[str, ...],
    accession: str | None,
    date_from: str | None,
    date_to: str | None,
    modalities: tuple[str, ...],
    studies: tuple[str, ...],
    everything: bool,
    source_token: str | None,
    source_client_id: str | None,
    source_client_secret: str | None,
    source_token_url: str | None,
    **options: Any,
) -> None:
    """Studies from the DICOMweb archive at SOURCE_URL, chosen by QIDO (repeated options
    are ORed, different ones ANDed). Source credentials may come from the environment
    (PRIMAGE_IMPORT_SOURCE_TOKEN, ..._CLIENT_ID, ..._CLIENT_SECRET), as `jobs resume` needs."""
    from curation.dicomweb_source import DicomwebSource, Selection, SourceError, dicom_date, session

    from . import imports

    try:
        selection = Selection(
            patients, accession, dicom_date(date_from), dicom_date(date_to), modalities, studies
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if selection.empty and not everything:
        raise click.UsageError("Choose studies (--patient, --study, --date-from...) or --all")
    if source_token and source_client_id:
        raise click.UsageError("--source-token or --source-client-id/secret, not both")
    if bool(source_client_id) != bool(source_client_secret):
        raise click.UsageError("--source-client-id and --source-client-secret go together")
    auth = imports.source_auth(
        source_url, source_token, source_client_id, source_client_secret, source_token_url
    )
    source = DicomwebSource(source_url, selection, session(auth), token_url=source_token_url)
    try:
        source.check()
        _import(source, **options)
    except SourceError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        source.close()


# --- clinical: primage import clinical (curation/clinical.py) -------------------------------


@import_group.command("clinical")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--mapping",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="How the export's columns become FHIR (mappings/*.yaml).",
)
@_import_options
def import_clinical(file: Path, mapping: Path, **options: Any) -> None:
    """A registry or trial export FILE (CSV or XLSX) as FHIR R4B, column by column as the
    mapping says: one transaction per patient, through the pseudonymisation gateway. A
    patient with a bad row is not sent (the reasons name row and column). --to is the
    platform (its root or its /fhir URL); without it, this platform as --site."""
    from curation.clinical import ClinicalSource, ExportError
    from curation.clinical_mapping import MappingError

    from . import imports

    source = ClinicalSource(file, mapping)
    try:
        source.groups  # noqa: B018 (read and check it all before a job exists)
    except (MappingError, ExportError) as exc:
        raise click.ClickException(str(exc)) from None
    to, site, dry_run = options.pop("to"), options.pop("site"), options.pop("dry_run")
    if dry_run:
        _clinical_dry_run(source, options.get("report"))
        return
    if to is None and not site:
        raise click.UsageError("Say where to: --to URL, or --site SITE for this platform")
    _import(source, to=imports.fhir_destination_name(to, site), site=site, dry_run=False, **options)


def _clinical_dry_run(source: Any, report: str | None) -> None:
    document = source.report()

    def rows(numbers: list[int]) -> str:
        return f"row{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))}"

    def counted(counts: dict[str, int]) -> str:
        return ", ".join(f"{n} {type_}" for type_, n in sorted(counts.items())) or "nothing"

    good = document["would_import"]
    click.echo(
        f"would import {document['patients']} patients ({sum(len(p['rows']) for p in good)} "
        f"rows of {document['rows']}): {counted(document['resources'])}"
    )
    for patient in good:
        click.echo(
            f"  {patient['patient']} ({rows(patient['rows'])}): {counted(patient['resources'])}"
        )
    if document["not_imported"]:
        click.echo(f"would not import {len(document['not_imported'])} (none of it is sent):")
        for patient in document["not_imported"]:
            click.echo(f"  {patient['patient'] or '(no patient id)'} ({rows(patient['rows'])}):")
            for problem in patient["problems"]:
                click.echo(f"    {problem}")
    if document["unmapped_columns"]:
        click.echo(f"not in the mapping, not imported: {', '.join(document['unmapped_columns'])}")
    if report:
        Path(report).write_text(json.dumps(document, indent=2, ensure_ascii=False))


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
    if to is None or not to.endswith("/fhir"):  # (a clinical import's is named already)
        to = imports.dicomweb_destination_name(to, site)
    job = ledger.create(source.kind, source.spec(), to)
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
    from curation import runner

    from . import imports

    credentials = imports.Credentials(client_id, client_secret)
    try:
        counts = _run(ledger, job, source, settings, credentials, batch, workers)
    except runner.SourceError as exc:  # e.g. the PACS down when a job is resumed
        raise click.ClickException(f"{exc} (job {job.id} can be resumed)") from None
    _summary(ledger, job.id, counts, report)


def _run(
    ledger: Any,
    job: Any,
    source: Any,
    settings: Settings,
    credentials: Any,
    batch: int,
    workers: int,
) -> dict:
    from contextlib import ExitStack

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from curation import runner
    from curation.destination import ArchiveDestination, FhirServiceDestination
    from curation.ledger import PENDING

    from . import imports
    from .job_task import TaskPublisher

    with ExitStack() as stack:
        destination = imports.destination_of(job.destination, settings, credentials, stack)
        runner.plan(ledger, job, source)
        job = ledger.job(job.id)
        pending = ledger.counts(job.id)[PENDING]
        publisher = None
        if isinstance(destination, ArchiveDestination | FhirServiceDestination):
            # run inside the platform: its progress is a Task there
            write = destination.write
            publisher = TaskPublisher(write, destination.site, job, lambda: ledger.counts(job.id))
            publisher.publish("in-progress")
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f} items"),
            TextColumn("{task.fields[mb]:.1f} MB"),
            _Rate(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, transient=False) as progress:
            bar = progress.add_task(f"job {job.id}", total=pending["items"], mb=0.0)
            sent = [0]

            def advance(n: int, size: int) -> None:
                sent[0] += size
                progress.update(bar, advance=n, mb=sent[0] / 1e6)
                if publisher is not None:
                    publisher.progress()

            try:
                counts = runner.run(
                    ledger, job, source, destination, batch=batch, workers=workers, advance=advance
                )
            except BaseException:
                if publisher is not None:
                    publisher.finish(failed=True)
                raise
        if publisher is not None:
            publisher.finish()
    return counts


class _Rate(ProgressColumn):
    """Items per second and MB per second since the bar started."""

    def render(self, task: Any) -> Text:
        elapsed = task.elapsed or 0
        if not elapsed:
            return Text("")
        return Text(f"{task.completed / elapsed:.0f}/s {task.fields['mb'] / elapsed:.1f} MB/s")


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
