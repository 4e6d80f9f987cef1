"""Merges and splits a curator decided in the linkage service, carried into the platform.

The research pseudonym is the only link between a child's FHIR Patients (one per site) and
DICOM studies, so re-pointing means rewriting that one value where it is stored:
- every Patient whose identifier is the old pseudonym (a split: only the splitting site's)
  gets a new version with the new pseudonym; its history keeps the old one;
- every DICOM study under the old pseudonym (a split: only that site's) is re-indexed under
  the new one, its instances' DICOM JSON metadata too, and its ImagingStudy re-synced, so
  QIDO, WADO-RS metadata and FHIR all answer with the new pseudonym.

Dates follow: the gateway shifts a person's dates by an offset derived from the pseudonym,
so what moves to a new pseudonym moves to its offset too (the Patient, every resource that
refers to it, the DICOM index and metadata), and intervals stay true across data sent
before and after the decision. Left as they are: the stored Part 10 bytes (content-
addressed; WADO-RS instance retrieval returns the PatientID and dates the object was stored
with, until it is sent again). The last change applied is a checkpoint in the job table,
so `primage linkage sync` resumes where it stopped and can run as often as wanted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import literal, select, update

from dicomweb.imaging_study import patients_with
from dicomweb.instance import name_key
from dicomweb.schema import dicom_instance, dicom_series, dicom_study
from dicomweb.service import Archive
from fhir_server.reindex import Progress, start_job
from fhir_server.repository import Repository
from fhir_server.schema import job, resource, search_reference
from pseudonymisation.dicom_deid import shift_dicom_date
from pseudonymisation.fhir_deid import shift_dates
from pseudonymisation.linkage.service import Change

KIND = "linkage-sync"
log = logging.getLogger("primage.linkage")


@dataclass
class Relink:
    """What applying a change needs: the stores, the pseudonym system, and the date offset
    between two pseudonyms (data shifted for the old person moves to the new person's
    offset, so intervals stay true across what was sent before and after)."""

    write: Callable[[], AbstractContextManager[Repository]]
    archive: Archive
    system: str
    base: str  # the DICOMweb base for re-synced ImagingStudies
    delta: Callable[[str, str], int]  # (old, new) -> days to move the old person's dates
    exempt: frozenset[str] = frozenset()  # keys whose string values are never dates
    replay: int = 20  # changes re-applied each pass (see sync)

    def sync(self, changes: Callable[[int], list[Change]]) -> Iterator[Progress]:
        """Applies the change feed after the checkpoint, one change per transaction. The
        last `replay` changes are applied again first: a write that used a pseudonym a
        gateway had cached just before a merge landed under the old one, and is moved now
        (re-applying finds nothing left to change otherwise)."""
        job_pk, position, done, _ = start_job(self.write, KIND, "{}", select(literal(0)))
        for change in changes(max(0, position - self.replay)):
            if change.seq > position:
                break
            with self.write() as repo:
                self.apply(repo, change)
        while batch := changes(position):
            for change in batch:
                with self.write() as repo:
                    self.apply(repo, change)
                    position, done = change.seq, done + 1
                    repo.conn.execute(
                        update(job)
                        .where(job.c.pk == job_pk)
                        .values(position=position, done=done, total=done, updated=_now())
                    )
                yield Progress(done, done)

    def apply(self, repo: Repository, change: Change) -> None:
        """Moves what is still under the old pseudonym (in a split: the site's)."""
        old, new = change.old_pseudonym, change.new_pseudonym
        days = self.delta(old, new)
        site = change.context if change.kind == "split" else None
        for id_ in self._patients(repo, old, site):
            stored = repo.current("Patient", id_)
            if stored is None or stored.content is None:
                continue
            body = self._shifted(orjson.loads(stored.content), days)
            body["identifier"] = [
                {**i, "value": new}
                if i.get("system") == self.system and i.get("value") == old
                else i
                for i in body.get("identifier") or []
            ]
            repo.update(body, id_)
            if days:
                self._reshift_compartment(repo, id_, days)
        studies = select(dicom_study.c.pk).where(dicom_study.c.patient_id == old)
        if site is not None:
            studies = studies.where(dicom_study.c.site == site)
        study_pks = set(repo.conn.execute(studies).scalars())
        if study_pks:
            _repoint_studies(repo, study_pks, old, new, days)
            self.archive.sync_studies(repo, study_pks, self.base)

    def _patients(self, repo: Repository, pseudonym: str, site: str | None) -> list[str]:
        query = patients_with(self.system, pseudonym)
        if site is not None:
            query = query.where(resource.c.site == site)
        return sorted(set(repo.conn.execute(query).scalars()))

    def _shifted(self, body: dict[str, Any], days: int) -> dict[str, Any]:
        return shift_dates(body, days, self.exempt) if days else body

    def _reshift_compartment(self, repo: Repository, patient_id: str, days: int) -> None:
        """Every resource that refers to the Patient moves by `days` too."""
        about = (
            select(resource.c.type, resource.c.id)
            .select_from(
                search_reference.join(resource, resource.c.pk == search_reference.c.resource_pk)
            )
            .where(
                search_reference.c.target_type == "Patient",
                search_reference.c.target_id == patient_id,
                resource.c.deleted.is_(False),
                resource.c.type != "Patient",
            )
        )
        for type_, id_ in sorted(set(repo.conn.execute(about).all())):
            stored = repo.current(type_, id_)
            if stored is not None and stored.content is not None:
                repo.update(self._shifted(orjson.loads(stored.content), days), id_)


def _repoint_studies(repo: Repository, study_pks: set[int], old: str, new: str, days: int) -> None:
    """The DICOM index and stored metadata of these studies under `new`, dates moved."""
    conn = repo.conn
    conn.execute(update(dicom_study).where(dicom_study.c.pk.in_(study_pks)).values(patient_id=new))
    conn.execute(  # PatientName is the pseudonym too (PRIMAGE_GATEWAY_PATIENT_NAME)
        update(dicom_study)
        .where(dicom_study.c.pk.in_(study_pks), dicom_study.c.patient_name == old)
        .values(patient_name=new, patient_name_key=name_key(new))
    )
    if days:
        rows = conn.execute(
            select(
                dicom_study.c.pk, dicom_study.c.study_date, dicom_study.c.patient_birth_date
            ).where(dicom_study.c.pk.in_(study_pks))
        ).all()
        for pk, study_date, birth in rows:
            conn.execute(
                update(dicom_study)
                .where(dicom_study.c.pk == pk)
                .values(study_date=_moved(study_date, days), patient_birth_date=_moved(birth, days))
            )
        series = conn.execute(
            select(dicom_series.c.pk, dicom_series.c.pps_start_date).where(
                dicom_series.c.study_pk.in_(study_pks)
            )
        ).all()
        for pk, start in series:
            conn.execute(
                update(dicom_series)
                .where(dicom_series.c.pk == pk)
                .values(pps_start_date=_moved(start, days))
            )
    rows = conn.execute(
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
        if days:
            _shift_json(meta, days)
        conn.execute(
            update(dicom_instance)
            .where(dicom_instance.c.pk == pk)
            .values(metadata=orjson.dumps(meta))
        )


def _moved(value: str | None, days: int) -> str | None:
    return shift_dicom_date(value, days) if value else value


def _shift_json(node: Any, days: int) -> None:
    """DA and DT values of a DICOM JSON dataset (nested sequences too) moved, in place."""
    if isinstance(node, dict):
        if node.get("vr") in ("DA", "DT") and isinstance(node.get("Value"), list):
            node["Value"] = [shift_dicom_date(v, days) if v else v for v in node["Value"]]
            return
        for value in node.values():
            _shift_json(value, days)
    elif isinstance(node, list):
        for value in node:
            _shift_json(value, days)


def _now() -> datetime:
    return datetime.now(UTC)


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
