"""The DICOM archive as one object: STOW, QIDO, WADO and delete over the index and blobs.

HTTP-free: the API module turns requests into these calls and results into responses.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from fhir_server import audit as audit_events
from fhir_server.repository import Repository

from . import imaging_study, negotiation, qido, store, wado
from .blobs import BlobStore
from .errors import BadRequest, Failure, PayloadTooLarge
from .instance import frames as frame_count
from .schema import dicom_instance
from .stow import Outcome, Receiver, Transform, boundary_of, prepare
from .stow_json import JSON_BODY_LIMIT, assemble

log = logging.getLogger("primage.dicomweb")


@dataclass
class StoreResult:
    outcomes: list[Outcome]

    @property
    def status(self) -> int:
        stored = sum(1 for o in self.outcomes if o.failure is None)
        if stored == len(self.outcomes):
            return 200
        return 202 if stored else 409


@dataclass
class Archive:
    read: Callable[[], AbstractContextManager[Repository]]
    write: Callable[[], AbstractContextManager[Repository]]
    blobs: BlobStore
    duplicates: store.DuplicatePolicy = "reject"
    max_results: int = 1000
    extra_tags: dict[str, str] = field(default_factory=dict)  # keyword -> GGGGEEEE
    patient_system: str = "https://primage.eu/fhir/NamingSystem/research-pseudonym"
    # The pseudonymisation gateway: per site, the transformation a site's instances go
    # through (raising Failure quarantines one); guard: the last check before any instance
    # is stored, whoever sent it (raises Failure for what still carries identity).
    gateway: Callable[[str], Transform] | None = None
    guard: Callable[[Dataset], None] | None = None
    batch: int = 64
    # Blobs no row names are deleted only once this old: a concurrent STOW of the same
    # bytes re-commits the blob (refreshing its time) before inserting its row.
    blob_grace: float = 300.0
    public_base: str | None = None  # PRIMAGE_DICOMWEB_BASE_URL: the Endpoint's address
    max_body_bytes: int | None = None
    audit: audit_events.Sink | None = None  # AuditEvents: with the write, or queued

    # --- STOW ---------------------------------------------------------------------------------

    async def store(
        self,
        body: AsyncIterator[bytes],
        content_type: str | None,
        study_uid: str | None,
        base: str,
        actor: audit_events.Actor | None = None,
    ) -> StoreResult:
        boundary, part_type = boundary_of(content_type)
        with_metadata = part_type == "application/dicom+json"
        limit = self.max_body_bytes
        if with_metadata:  # assembled in memory: a tighter bound
            limit = min(limit or JSON_BODY_LIMIT, JSON_BODY_LIMIT)
        receiver = Receiver(self.blobs, boundary, limit)
        transform = None
        if self.gateway is not None and actor is not None and actor.needs_gateway:
            transform = self.gateway(str(actor.site))
        outcomes: list[Outcome] = []
        waiting: list[Outcome] = []
        try:
            async for chunk in body:
                receiver.feed(chunk)
                if with_metadata:
                    continue  # instances are built once all their bulk data has arrived
                if done := receiver.take():
                    prepared = await run_in_threadpool(self._prepare, done, study_uid, transform)
                    outcomes += prepared
                    waiting += [o for o in prepared if o.prepared]
                    if len(waiting) >= self.batch:
                        await run_in_threadpool(self._commit, waiting, base, actor)
                        waiting = []
            receiver.close()
            if with_metadata:
                built, outcomes = await run_in_threadpool(assemble, self.blobs, receiver.take())
                prepared = await run_in_threadpool(self._prepare, built, study_uid, transform)
                outcomes += prepared
                waiting += [o for o in prepared if o.prepared]
        except (BadRequest, PayloadTooLarge) as error:
            receiver.discard()
            if not outcomes:
                raise
            # Parts before the fault were whole and are kept; say where the body went wrong
            # instead of a 400 that would hide what was stored.
            reason = f"the body broke off or went malformed here: {error.reason}"
            outcomes.append(Outcome(failure=Failure.cannot_understand(reason)))
        except BaseException:
            receiver.discard()
            if waiting:  # what was read completely before the fault is still stored
                await run_in_threadpool(self._commit, waiting, base, actor)
            raise
        if waiting:
            await run_in_threadpool(self._commit, waiting, base, actor)
        if not outcomes:
            raise BadRequest("The multipart body has no parts")
        result = StoreResult(outcomes)
        if result.status == 409:  # nothing stored, so no write carried an event
            self.record(None, actor, "stow", 409)
        refused = [f"{o.failure.code:04X}" for o in outcomes if o.failure is not None]
        # counts and reason codes only: UIDs and attribute values stay out of the logs
        log.info(
            "STOW: %d stored, %d refused %s",
            len(outcomes) - len(refused),
            len(refused),
            sorted(set(refused)),
        )
        return result

    def _prepare(
        self, done: list[Any], study_uid: str | None, transform: Transform | None
    ) -> list[Outcome]:
        return [
            prepare(self.blobs, part, study_uid, transform, self.extra_tags, self.guard)
            for part in done
        ]

    def record(
        self,
        repo: Repository | None,
        actor: audit_events.Actor | None,
        service: str,
        status: int,
        studies: Sequence[str] = (),
        query: str | None = None,
    ) -> None:
        """An AuditEvent for a DICOMweb request (none without an authenticated caller)."""
        if self.audit is not None and actor is not None:
            event = audit_events.dicom_event(actor, service, status, sorted(set(studies)), query)
            self.audit(repo, event)

    def _commit(
        self, waiting: list[Outcome], base: str, actor: audit_events.Actor | None = None
    ) -> None:
        items = [o.prepared for o in waiting if o.prepared is not None]
        self.blobs.sync(p.blob for p in items)  # durable before any row names them
        for attempt in (1, 2):
            try:
                with self.write() as repo:
                    site = actor.site if actor is not None else None
                    saved, refused, touched = store.save(repo.conn, items, self.duplicates, site)
                    self.sync_studies(repo, touched, base)
                    stored = [s.prepared.study_uid for s in saved]
                    if stored:
                        self.record(repo, actor, "stow", 200, stored)
                break
            except IntegrityError:
                if attempt == 2:  # a concurrent writer won twice: report, don't guess
                    self._fail(waiting, Failure(Failure.PROCESSING_FAILURE, "concurrent write"))
                    return
            except Failure as failure:
                self._fail(waiting, failure)
                return
            except Exception:
                log.exception("STOW commit failed")
                self._fail(waiting, Failure(Failure.PROCESSING_FAILURE, "database error"))
                return
        reasons = {id(p): failure for p, failure in refused}
        for outcome in waiting:
            if id(outcome.prepared) in reasons:
                outcome.failure = reasons[id(outcome.prepared)]
        replaced = [s.replaced_blob for s in saved if s.replaced_blob]
        self._drop_blobs([p.blob for p, _ in refused] + replaced)

    def sync_studies(self, repo: Repository, study_pks: set[int], base: str) -> None:
        """Studies left empty go (with their ImagingStudy); the others' ImagingStudy is
        rewritten from the index."""
        gone = store.drop_empty_studies(repo.conn, study_pks)
        for uid in gone.values():
            imaging_study.remove(repo, uid)
        configured = self.public_base is not None
        for study_pk in sorted(study_pks - set(gone)):
            imaging_study.sync(
                repo,
                study_pk,
                self.public_base or base,
                self.patient_system,
                configured_base=configured,
            )

    def _fail(self, waiting: list[Outcome], failure: Failure) -> None:
        for outcome in waiting:
            outcome.failure = failure
        self._drop_blobs([o.prepared.blob for o in waiting if o.prepared is not None])

    def _drop_blobs(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        with self.read() as repo:
            orphans = store.unreferenced(repo.conn, keys)
        for key in orphans:
            self.blobs.delete(key, self.blob_grace)

    def collect_garbage(self, batch: int = 1000) -> int:
        """Delete blobs no instance names (refused or replaced STOWs, deletes inside the
        grace period) once older than the grace period; returns how many were examined."""
        seen = 0
        keys = self.blobs.keys()
        while chunk := list(itertools.islice(keys, batch)):
            seen += len(chunk)
            self._drop_blobs(chunk)
        return seen

    # --- QIDO ---------------------------------------------------------------------------------

    def search(
        self,
        level: qido.Level,
        params: Sequence[tuple[str, str]],
        scope: Mapping[str, str],
        site: str | None = None,
    ) -> tuple[list[dict[str, Any]], list[str]]:
        query = qido.parse(level, params, tuple(self.extra_tags))
        with self.read() as repo:
            if scope:
                study, series = scope["StudyInstanceUID"], scope.get("SeriesInstanceUID")
                store.scope(repo.conn, study, series, site=site)
            found, cut = qido.run(repo.conn, query, scope, self.max_results, site)
        warnings = list(query.warnings)
        if query.ignored:
            names = ", ".join(query.ignored)
            warnings.append(f"Not supported as matching keys, ignored: {names}")
        if cut:
            warnings.append(qido.TRUNCATED)
        return found, warnings

    # --- WADO ---------------------------------------------------------------------------------

    def rows(
        self,
        study: str,
        series: str | None = None,
        instance: str | None = None,
        site: str | None = None,
    ) -> list[Any]:
        """What WADO needs to serve the addressed instances' blobs and frames."""
        columns = [
            dicom_instance.c.sop_uid,
            dicom_instance.c.blob,
            dicom_instance.c.transfer_syntax,
            dicom_instance.c.number_of_frames,
            dicom_instance.c.pixel_offset,
            dicom_instance.c.frame_length,
        ]
        with self.read() as repo:
            return store.lookup(repo.conn, columns, study, series, instance, site)

    def frames(
        self,
        study: str,
        series: str,
        instance: str,
        numbers: str,
        accept: list[negotiation.MediaRange],
        site: str | None = None,
    ) -> tuple[str, str, list[bytes]]:
        """(media type, part content type, frames) for a frame list ("all": every frame)."""
        row = self.rows(study, series, instance, site)[0]
        media, decode = negotiation.frame_media(accept, row.transfer_syntax)
        if row.pixel_offset is not None:  # native pixels: ranged reads, no parsing
            wanted = _frame_list(numbers, row.number_of_frames or 1)
            data = wado.native_frames(self.blobs, row, wanted)
        else:
            dataset = wado.load(self.blobs, row.blob)
            wanted = _frame_list(numbers, frame_count(dataset))
            data = [wado.frame_bytes(dataset, n, decode) for n in wanted]
        own = decode or media == "application/octet-stream"
        part_type = media if own else f"{media}; transfer-syntax={row.transfer_syntax}"
        return media, part_type, data

    def metadata(
        self,
        study: str,
        series: str | None = None,
        instance: str | None = None,
        site: str | None = None,
    ) -> list[bytes]:
        with self.read() as repo:
            column = [dicom_instance.c.metadata]
            rows = store.lookup(repo.conn, column, study, series, instance, site)
        return [row.metadata for row in rows]

    # --- delete -------------------------------------------------------------------------------

    def delete(
        self,
        study: str,
        series: str | None,
        instance: str | None,
        base: str,
        actor: audit_events.Actor | None = None,
    ) -> int:
        now = datetime.now(UTC)
        with self.write() as repo:
            conn = repo.conn
            site = actor.site if actor is not None else None
            clause = store.scope(conn, study, series, instance, site, owned=True)
            count = len(conn.execute(select(dicom_instance.c.pk).where(clause)).all())
            keys, studies = store.remove(conn, clause)
            store.refresh_counts(conn, studies, now)
            self.sync_studies(repo, studies, base)
            self.record(repo, actor, "delete", 204, [study])
        for key in keys:
            self.blobs.delete(key, self.blob_grace)
        return count


def _frame_list(numbers: str, count: int) -> list[int]:
    return list(range(1, count + 1)) if numbers == "all" else wado.frame_numbers(numbers, count)
