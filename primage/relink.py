"""Merges and splits a curator decided in the linkage service, carried into the platform.

The research pseudonym is the only link between a child's FHIR Patients (one per site) and
DICOM studies, so re-pointing means rewriting that one value where it is stored:
- every Patient whose identifier is the old pseudonym (a split: only the splitting site's)
  gets a new version with the new pseudonym; its history keeps the old one;
- every DICOM study under the old pseudonym (a split: only that site's) is re-indexed under
  the new one, its instances' DICOM JSON metadata too, and its ImagingStudy re-synced, so
  QIDO, WADO-RS metadata and FHIR all answer with the new pseudonym.

Left as they are, by design: the stored Part 10 bytes (content-addressed; WADO-RS instance
retrieval returns the PatientID the object was stored with until it is sent again) and the
dates (shifted with the old pseudonym's offset: each Patient's data stays consistent in
itself). The last change applied is a checkpoint in the job table, so `primage linkage
sync` resumes where it stopped and can run as often as wanted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime

import orjson
from sqlalchemy import literal, select, update

from dicomweb.instance import name_key
from dicomweb.schema import dicom_instance, dicom_study
from dicomweb.service import Archive
from fhir_server.reindex import Progress, start_job
from fhir_server.repository import Repository
from fhir_server.schema import job, resource, search_token
from pseudonymisation.linkage.service import Change

KIND = "linkage-sync"
log = logging.getLogger("primage.linkage")


def sync(
    changes: Callable[[int], list[Change]],
    write: Callable[[], AbstractContextManager[Repository]],
    archive: Archive,
    system: str,
    base: str,
) -> Iterator[Progress]:
    """Applies the change feed after the checkpoint, one change per transaction."""
    job_pk, position, done, _ = start_job(write, KIND, "{}", select(literal(0)))
    while batch := changes(position):
        for change in batch:
            with write() as repo:
                apply(repo, change, archive, system, base)
                position, done = change.seq, done + 1
                repo.conn.execute(
                    update(job)
                    .where(job.c.pk == job_pk)
                    .values(position=position, done=done, total=done, updated=datetime.now(UTC))
                )
            yield Progress(done, done)


def apply(repo: Repository, change: Change, archive: Archive, system: str, base: str) -> None:
    old, new = change.old_pseudonym, change.new_pseudonym
    site = change.context if change.kind == "split" else None
    patients = (
        select(resource.c.id)
        .select_from(search_token.join(resource, resource.c.pk == search_token.c.resource_pk))
        .where(
            search_token.c.type == "Patient",
            search_token.c.param == "identifier",
            search_token.c.system == system,
            search_token.c.code == old,
            resource.c.deleted.is_(False),
        )
    )
    if site is not None:
        patients = patients.where(resource.c.site == site)
    for id_ in sorted(set(repo.conn.execute(patients).scalars())):
        stored = repo.current("Patient", id_)
        if stored is None or stored.content is None:
            continue
        body = orjson.loads(stored.content)
        body["identifier"] = [
            {**i, "value": new} if i.get("system") == system and i.get("value") == old else i
            for i in body.get("identifier") or []
        ]
        repo.update(body, id_)
    studies = select(dicom_study.c.pk).where(dicom_study.c.patient_id == old)
    if site is not None:
        studies = studies.where(dicom_study.c.site == site)
    study_pks = set(repo.conn.execute(studies).scalars())
    if not study_pks:
        return
    repo.conn.execute(
        update(dicom_study).where(dicom_study.c.pk.in_(study_pks)).values(patient_id=new)
    )
    repo.conn.execute(  # PatientName is the pseudonym too (PRIMAGE_GATEWAY_PATIENT_NAME)
        update(dicom_study)
        .where(dicom_study.c.pk.in_(study_pks), dicom_study.c.patient_name == old)
        .values(patient_name=new, patient_name_key=name_key(new))
    )
    rows = repo.conn.execute(
        select(dicom_instance.c.pk, dicom_instance.c.metadata).where(
            dicom_instance.c.study_pk.in_(study_pks)
        )
    ).all()
    for pk, document in rows:
        meta = orjson.loads(document)
        if "00100020" in meta:
            meta["00100020"]["Value"] = [new]
        if meta.get("00100010", {}).get("Value") == [{"Alphabetic": old}]:
            meta["00100010"]["Value"] = [{"Alphabetic": new}]
        repo.conn.execute(
            update(dicom_instance)
            .where(dicom_instance.c.pk == pk)
            .values(metadata=orjson.dumps(meta))
        )
    archive.sync_studies(repo, study_pks, base)


class Relinker:
    """Runs `sync` every `interval` seconds in the background, so a curator's decision
    reaches both stores without anyone running the CLI (every worker may run one: applying
    a change twice finds nothing left to change)."""

    def __init__(self, run: Callable[[], Iterator[Progress]], interval: float) -> None:
        self._run = run
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="linkage-sync", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                applied = sum(1 for _ in self._run())
            except Exception:  # the database or the linkage service away: next round
                log.exception("linkage sync failed")
                continue
            if applied:
                log.info("linkage sync: %d changes applied", applied)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
