"""`primage import pacs`: studies from a hospital PACS over DIMSE (pynetdicom).

Listing: C-ECHO, then Study Root C-FIND at STUDY level for the selection (patients,
accession numbers, a StudyDate range, a modality), then SERIES and IMAGE level for every
study. An item is one instance, keyed by its SOP Instance UID and grouped by study; its
locator is `study/series/sop`; its size is unknown (0) until it arrives. A modality selects
whole studies that contain it: ModalitiesInStudy is asked for, and checked against the
series' Modality because many PACS (dcmqrscp among them) ignore that key.

Fetching, study by study: a C-MOVE to the storage SCP this importer starts (the PACS must
know its AE title, host and port), or a C-GET on the importer's own association. Instances
are handed on as they arrive, as Part 10 bytes in the transfer syntax they came in (file
meta written, data set not decoded); which syntax that is, the association decides (see
SCP_TRANSFER_SYNTAXES and GET_STORAGE_CLASSES below). Between the PACS and the runner sits
a bounded inbox: when the platform is slower than the PACS, the storage SCP answers later
and the PACS waits, so memory stays bounded whatever the study's size. A study with few pending
instances (a resumed job, `jobs retry-failed`) is retrieved instance by instance (IMAGE
level) instead. An instance the PACS did not deliver fails with the retrieve's status.

Preview (--dry-run): counts come from the IMAGE level C-FIND; one instance per series is
retrieved, and its header (and size, which stands for the series' other instances: the
bytes are an estimate) goes to the de-identification preview. Quarantine is judged on
those samples and on what the C-FIND answers carry (SOP Class, BurnedInAnnotation, when
the PACS returns them).
"""

from __future__ import annotations

import io
import logging
import socket
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from itertools import groupby
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    StoragePresentationContexts,
    build_role,
    evt,
    sop_class,
)
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from .ledger import Item, Listed
from .runner import SourceError

log = logging.getLogger("primage.import")

FIND = StudyRootQueryRetrieveInformationModelFind
MOVE = StudyRootQueryRetrieveInformationModelMove
GET = StudyRootQueryRetrieveInformationModelGet
# Transfer syntaxes, in the order the importer prefers them. pynetdicom accepts, of what a
# PACS proposes in one presentation context, the first in our list, so: lossless compressed
# first (a PACS that holds them sends them as stored, and to compress losslessly harms
# nothing), then explicit VR little endian, then lossy ones (a PACS proposing lossy
# compression next to explicit VR for an original is not asked to compress it), implicit VR
# (private tags' VRs unknown to de-identification) and big endian last.
LOSSLESS = [
    RLELossless,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEG2000Lossless,
]
LOSSY = [JPEGBaseline8Bit, JPEGExtended12Bit, JPEG2000, JPEGLSNearLossless]
UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
SCP_TRANSFER_SYNTAXES = [
    *LOSSLESS,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    *LOSSY,
    *(
        ts
        for ts in ALL_TRANSFER_SYNTAXES
        if ts not in {*LOSSLESS, *LOSSY, *UNCOMPRESSED, DeflatedExplicitVRLittleEndian}
    ),
    ImplicitVRLittleEndian,
]
# A C-GET association must propose what it will receive, 128 presentation contexts at most:
# two for each of these storage classes (uncompressed, and compressed as a PACS may hold it),
# so the PACS can send every instance as it is without converting it.
GET_STORAGE_CLASSES = [
    getattr(sop_class, name)
    for name in (
        "CTImageStorage",
        "EnhancedCTImageStorage",
        "LegacyConvertedEnhancedCTImageStorage",
        "MRImageStorage",
        "EnhancedMRImageStorage",
        "EnhancedMRColorImageStorage",
        "LegacyConvertedEnhancedMRImageStorage",
        "MRSpectroscopyStorage",
        "NuclearMedicineImageStorage",
        "PositronEmissionTomographyImageStorage",
        "EnhancedPETImageStorage",
        "LegacyConvertedEnhancedPETImageStorage",
        "ComputedRadiographyImageStorage",
        "DigitalXRayImageStorageForPresentation",
        "DigitalXRayImageStorageForProcessing",
        "DigitalMammographyXRayImageStorageForPresentation",
        "BreastTomosynthesisImageStorage",
        "UltrasoundImageStorage",
        "UltrasoundMultiFrameImageStorage",
        "EnhancedUSVolumeStorage",
        "XRayAngiographicImageStorage",
        "XRayRadiofluoroscopicImageStorage",
        "RTImageStorage",
        "RTDoseStorage",
        "RTStructureSetStorage",
        "RTPlanStorage",
        "RTIonPlanStorage",
        "RTBeamsTreatmentRecordStorage",
        "SpatialRegistrationStorage",
        "DeformableSpatialRegistrationStorage",
        "SegmentationStorage",
        "ParametricMapStorage",
        "RealWorldValueMappingStorage",
        "SecondaryCaptureImageStorage",
        "MultiFrameSingleBitSecondaryCaptureImageStorage",
        "MultiFrameGrayscaleByteSecondaryCaptureImageStorage",
        "MultiFrameGrayscaleWordSecondaryCaptureImageStorage",
        "MultiFrameTrueColorSecondaryCaptureImageStorage",
        "VLPhotographicImageStorage",
        "EncapsulatedPDFStorage",
        "GrayscaleSoftcopyPresentationStateStorage",
        "BasicTextSRStorage",
        "EnhancedSRStorage",
        "ComprehensiveSRStorage",
        "Comprehensive3DSRStorage",
        "KeyObjectSelectionDocumentStorage",
        "XRayRadiationDoseSRStorage",
    )
]
COMPRESSED = [*LOSSLESS, *LOSSY, DeflatedExplicitVRLittleEndian]
QUERY_TIMEOUT = 120.0  # seconds: association, C-ECHO and C-FIND answers
# Seconds without a message from the PACS during a retrieve: some PACS send no pending
# responses, only the final one after the whole study, and a slow platform makes the
# storage SCP answer late on purpose (back-pressure).
RETRIEVE_TIMEOUT = 3600.0
FEW = 32  # a study with at most this many pending instances is retrieved per instance
INBOX_BYTES = 128 << 20  # received, not yet handed to the runner
MAX_PDU = 1 << 20  # what the importer receives in one PDU (pynetdicom's default is 16 KiB)
SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700
# The storage SCP listens where the PACS can reach it: by default on every interface.
EVERY_INTERFACE = "0.0.0.0"  # noqa: S104


class PacsError(SourceError):
    """The PACS cannot be reached, refuses the association, or refuses a query.

    The message names the PACS (host, port, AE titles) and the DIMSE or association
    status, never a patient or a UID."""


@dataclass(frozen=True)
class Selection:
    """What to import: patients OR'ed, accession numbers OR'ed, the lists AND'ed with each
    other, with the StudyDate range (YYYYMMDD, inclusive) and the modality."""

    patients: tuple[str, ...] = ()
    accessions: tuple[str, ...] = ()
    date_from: str | None = None
    date_to: str | None = None
    modality: str | None = None

    def __bool__(self) -> bool:
        return bool(self.patients or self.accessions or self.date_from or self.date_to)

    def queries(self) -> Iterator[Dataset]:
        """STUDY level C-FIND identifiers (PatientID and AccessionNumber take one value)."""
        dates = ""
        if self.date_from or self.date_to:
            dates = f"{self.date_from or ''}-{self.date_to or ''}"
        for patient in self.patients or ("",):
            for accession in self.accessions or ("",):
                ds = Dataset()
                ds.QueryRetrieveLevel = "STUDY"
                ds.StudyInstanceUID = ""
                ds.PatientID = patient
                ds.AccessionNumber = accession
                ds.StudyDate = dates
                ds.ModalitiesInStudy = self.modality or ""
                yield ds


@dataclass
class PacsSource:
    host: str
    port: int
    called_ae: str
    calling_ae: str = "PRIMAGE"
    selection: Selection = field(default_factory=Selection)
    retrieve: str = "move"  # move | get
    scp_ae: str | None = None  # the C-MOVE destination; default: the calling AE title
    scp_port: int = 11113
    scp_bind: str = EVERY_INTERFACE
    kind: str = "pacs"
    _receiving: _Receiving | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.retrieve not in ("move", "get"):
            raise ValueError(f"retrieve must be move or get, not {self.retrieve!r}")

    @property
    def destination_ae(self) -> str:
        return self.scp_ae or self.calling_ae

    def spec(self) -> dict[str, Any]:
        selection = asdict(self.selection)
        selection["patients"] = list(self.selection.patients)
        selection["accessions"] = list(self.selection.accessions)
        return {
            "host": self.host,
            "port": self.port,
            "called_ae": self.called_ae,
            "calling_ae": self.calling_ae,
            "selection": selection,
            "retrieve": self.retrieve,
            "scp_ae": self.destination_ae,
            "scp_port": self.scp_port,
            "scp_bind": self.scp_bind,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> PacsSource:
        selection = dict(spec.get("selection") or {})
        return cls(
            host=spec["host"],
            port=int(spec["port"]),
            called_ae=spec["called_ae"],
            calling_ae=spec.get("calling_ae", "PRIMAGE"),
            selection=Selection(
                patients=tuple(selection.get("patients") or ()),
                accessions=tuple(selection.get("accessions") or ()),
                date_from=selection.get("date_from"),
                date_to=selection.get("date_to"),
                modality=selection.get("modality"),
            ),
            retrieve=spec.get("retrieve", "move"),
            scp_ae=spec.get("scp_ae"),
            scp_port=int(spec.get("scp_port", 11113)),
            scp_bind=spec.get("scp_bind", EVERY_INTERFACE),
        )

    # --- the PACS's side ---------------------------------------------------------------

    def echo(self) -> None:
        """C-ECHO; PacsError if the PACS is unreachable, refuses us, or answers badly."""
        with self._association([Verification]) as assoc:
            self._echo(assoc)

    def _echo(self, assoc: Association) -> None:
        status = assoc.send_c_echo()
        code = status.get("Status") if status else None
        if code != SUCCESS:
            raise PacsError(f"{self._name()} answered C-ECHO with {_status(code)}")

    def listing(self) -> Iterator[Listed]:
        for study, series, image in self._instances():
            sop = str(image.SOPInstanceUID)
            yield Listed(
                key=sop,
                group=str(study.StudyInstanceUID),
                locator=f"{study.StudyInstanceUID}/{series.SeriesInstanceUID}/{sop}",
            )

    def preview(self) -> Iterator[tuple[Any, int]]:
        """(header, size) of every instance; see the module's docstring."""
        with self._retriever() as retriever:
            rows = self._instances()
            for _, in_series in groupby(rows, key=lambda row: row[1].SeriesInstanceUID):
                (study, series, first), *others = in_series
                header, size = retriever.sample(study, series, first)
                yield header, size
                for study, series, image in others:
                    yield _find_header(study, series, image), size

    def fetch(self, items: Sequence[Item]) -> Iterator[tuple[Item, bytes | str]]:
        with self._retriever() as retriever:
            for study, pending in groupby(items, key=lambda item: item.group):
                yield from retriever.study(study, list(pending))

    # --- queries -----------------------------------------------------------------------

    def _instances(self) -> Iterator[tuple[Dataset, Dataset, Dataset]]:
        """(study, series, image) C-FIND answers for the selection, series by series."""
        if not self.selection:
            raise PacsError("no selection: give patients, accession numbers or a date range")
        with self._association([Verification, FIND]) as assoc:
            self._echo(assoc)
            studies: dict[str, Dataset] = {}
            for query in self.selection.queries():
                for found in _find(assoc, query, self._name()):
                    uid = str(found.get("StudyInstanceUID", ""))
                    if uid and uid not in studies:
                        studies[uid] = found
            modality = self.selection.modality
            for uid, study in studies.items():
                series = list(_find(assoc, _series_query(uid), self._name()))
                if modality and not _has_modality(study, series, modality):
                    continue
                for one in series:
                    query = _image_query(uid, str(one.SeriesInstanceUID))
                    images = [
                        i for i in _find(assoc, query, self._name()) if i.get("SOPInstanceUID")
                    ]
                    for image in images:  # the C-FIND is over before the caller works
                        yield study, one, image

    # --- associations ------------------------------------------------------------------

    def _name(self) -> str:
        return f"the PACS {self.called_ae} at {self.host}:{self.port}"

    def _ae(self, timeout: float) -> AE:
        ae = AE(ae_title=self.calling_ae)
        ae.connection_timeout = 15
        ae.acse_timeout = QUERY_TIMEOUT
        ae.dimse_timeout = timeout
        ae.network_timeout = RETRIEVE_TIMEOUT  # idle: a query association waits on retrieves
        ae.maximum_pdu_size = MAX_PDU
        return ae

    @contextmanager
    def _association(
        self,
        abstract_syntaxes: Sequence[str],
        *,
        timeout: float = QUERY_TIMEOUT,
        storage: bool = False,
        handlers: list[Any] | None = None,
    ) -> Iterator[Association]:
        # A TCP connection first: pynetdicom leaks the socket of a refused connection, and
        # the error says more than a failed association.
        try:
            socket.create_connection((self.host, self.port), timeout=15).close()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise PacsError(f"{self._name()} cannot be reached: {reason}") from None
        ae = self._ae(timeout)
        for uid in abstract_syntaxes:
            ae.add_requested_context(uid)
        roles = []
        if storage:  # C-GET: we are the storage SCP on this association
            for uid in GET_STORAGE_CLASSES:
                ae.add_requested_context(uid, UNCOMPRESSED)
                ae.add_requested_context(uid, COMPRESSED)
                roles.append(build_role(uid, scp_role=True))
        opened = threading.Event()
        assoc = ae.associate(
            self.host,
            self.port,
            ae_title=self.called_ae,
            ext_neg=roles or None,
            evt_handlers=[*(handlers or ()), (evt.EVT_CONN_OPEN, lambda event: opened.set())],
        )
        if not assoc.is_established:
            raise PacsError(self._refusal(assoc, opened.is_set()))
        missing = [
            uid
            for uid in abstract_syntaxes
            if not any(cx.abstract_syntax == uid for cx in assoc.accepted_contexts)
        ]
        if missing:
            assoc.release()
            names = ", ".join(UID(uid).name for uid in missing)
            raise PacsError(f"{self._name()} does not offer {names}")
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def _refusal(self, assoc: Association, connected: bool) -> str:
        if not connected:
            return f"{self._name()} cannot be reached (no connection)"
        if assoc.is_rejected or assoc.acceptor.primitive is None:
            answer = assoc.acceptor.primitive  # None: it closed the connection instead
            reason = (
                getattr(answer, "reason_str", "") or "it closed the connection, or did not answer"
            )
            return (
                f"{self._name()} refused the association from {self.calling_ae}: {reason} "
                "(check the called and calling AE titles, and that the PACS knows this host)"
            )
        return f"{self._name()} accepted none of the services asked for"

    @contextmanager
    def _retriever(self) -> Iterator[_Retriever]:
        if self.retrieve == "get":
            yield _Retriever(self, None)
            return
        ae = self._ae(RETRIEVE_TIMEOUT)
        ae.ae_title = self.destination_ae
        for context in StoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, SCP_TRANSFER_SYNTAXES)
        try:
            server = ae.start_server(
                (self.scp_bind, self.scp_port),
                block=False,
                evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
            )
        except OSError as exc:
            raise PacsError(
                f"cannot listen for C-MOVE on {self.scp_bind}:{self.scp_port}: {exc.strerror}"
            ) from None
        try:
            yield _Retriever(self, server)
        finally:
            server.shutdown()

    def _on_store(self, event: Event) -> int:
        """C-STORE from the PACS: into the current retrieve's inbox, if it asked for it."""
        receiving = self._receiving
        if receiving is None:
            return OUT_OF_RESOURCES  # nothing asked for: not ours to take
        return _take(receiving, event)


@dataclass
class _Receiving:
    expected: dict[str, Item]
    inbox: _Inbox


class _Inbox:
    """Received instances waiting for the runner: at most `budget` bytes, and always room
    for one, so a single instance larger than the budget still passes."""

    def __init__(self, budget: int = INBOX_BYTES) -> None:
        self._entries: deque[tuple[Any, ...]] = deque()
        self._bytes = 0
        self._budget = budget
        self._closed = False
        self._changed = threading.Condition()

    def put(self, entry: tuple[Any, ...], size: int = 0) -> bool:
        """Blocks while full; False once closed (the retrieve was given up)."""
        with self._changed:
            while self._entries and self._bytes + size > self._budget and not self._closed:
                self._changed.wait()
            if self._closed:
                return False
            self._entries.append((entry, size))
            self._bytes += size
            self._changed.notify_all()
            return True

    def get(self) -> tuple[Any, ...]:
        with self._changed:
            while not self._entries:
                self._changed.wait()
            entry, size = self._entries.popleft()
            self._bytes -= size
            self._changed.notify_all()
            return entry

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._entries.clear()
            self._changed.notify_all()


class _Retriever:
    """C-MOVE (to `server`, the storage SCP) or C-GET, one retrieve at a time."""

    def __init__(self, source: PacsSource, server: Any) -> None:
        self.source = source
        self.server = server
        self.verb = "C-MOVE" if server is not None else "C-GET"

    def study(self, study: str, items: list[Item]) -> Iterator[tuple[Item, bytes | str]]:
        """Every pending item of one study: its bytes, or why the PACS did not deliver it."""
        if len(items) > FEW:
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = study
            yield from self._retrieve([query], items)
            return
        queries = []
        for series, in_series in groupby(items, key=lambda item: item.locator.split("/")[1]):
            query = _image_key(study, series, [item.key for item in in_series])
            queries.append(query)
        yield from self._retrieve(queries, items)

    def sample(self, study: Dataset, series: Dataset, image: Dataset) -> tuple[Dataset, int]:
        """One instance's header and size (the C-FIND answer and 0 if it does not come)."""
        sop = str(image.SOPInstanceUID)
        locator = f"{study.StudyInstanceUID}/{series.SeriesInstanceUID}/{sop}"
        item = Item(sop, str(study.StudyInstanceUID), locator, 0, "pending", None)
        query = _image_key(str(study.StudyInstanceUID), str(series.SeriesInstanceUID), [sop])
        for _, data in list(self._retrieve([query], [item])):
            if isinstance(data, bytes):
                return dcmread(io.BytesIO(data), stop_before_pixels=True), len(data)
            log.warning("dry run: a sample instance was not delivered: %s", data)
        return _find_header(study, series, image), 0

    def _retrieve(
        self, queries: list[Dataset], items: list[Item]
    ) -> Iterator[tuple[Item, bytes | str]]:
        source = self.source
        expected = {item.key: item for item in items}
        inbox = _Inbox()
        receiving = _Receiving(expected, inbox)
        handlers = None
        if self.server is None:
            handlers = [(evt.EVT_C_STORE, lambda event: _take(receiving, event))]
        else:
            source._receiving = receiving
        received: set[str] = set()
        outcome = "no final status"
        try:
            model = GET if self.server is None else MOVE
            with source._association(
                [model], timeout=RETRIEVE_TIMEOUT, storage=self.server is None, handlers=handlers
            ) as assoc:
                worker = threading.Thread(
                    target=self._work,
                    args=(assoc, queries, inbox),
                    name="pacs-retrieve",
                    daemon=True,
                )
                worker.start()
                try:
                    while True:
                        entry = inbox.get()
                        if entry[0] == "done":
                            outcome = entry[1]
                            break
                        _, sop, data = entry
                        if sop in received:
                            continue
                        received.add(sop)
                        yield expected[sop], data
                finally:
                    if worker.is_alive():  # given up (the runner stopped): stop the PACS
                        inbox.close()
                        assoc.abort()
                    worker.join(timeout=30)
        finally:
            source._receiving = None
            inbox.close()
        for sop, item in expected.items():
            if sop not in received:
                yield item, f"not delivered by the PACS: {outcome}"

    def _work(self, assoc: Association, queries: list[Dataset], inbox: _Inbox) -> None:
        """Runs the retrieves (the C-STOREs come to the inbox meanwhile); then 'done'."""
        outcomes = []
        try:
            for query in queries:
                if self.server is None:
                    responses = assoc.send_c_get(query, GET)
                else:
                    responses = assoc.send_c_move(query, self.source.destination_ae, MOVE)
                final: Dataset | None = None
                for status, _ in responses:
                    if status and "Status" in status:
                        final = status
                outcomes.append(self._describe(final))
        except Exception as exc:  # the association died under us
            outcomes.append(f"{self.verb} failed: {type(exc).__name__}")
        inbox.put(("done", "; ".join(sorted(set(outcomes))) or "nothing retrieved"))

    def _describe(self, final: Dataset | None) -> str:
        if final is None:
            return f"{self.verb} gave no final status (association aborted or timed out)"
        text = f"{self.verb} status {_status(final.Status)}"
        failed = final.get("NumberOfFailedSuboperations")
        if failed:
            text += f", {failed} failed sub-operations"
        return text


def _take(receiving: _Receiving, event: Event) -> int:
    """A C-STORE sub-operation: the instance as received, in Part 10, to the inbox."""
    sop = str(event.request.AffectedSOPInstanceUID)
    if sop not in receiving.expected:
        return SUCCESS  # part of a study whose other instances are stored already
    data = event.encoded_dataset(include_meta=True)
    if receiving.inbox.put(("instance", sop, data), len(data)):
        return SUCCESS
    return OUT_OF_RESOURCES  # the retrieve was given up


def _find(assoc: Association, query: Dataset, name: str) -> Iterator[Dataset]:
    """The C-FIND's matches; PacsError when the PACS refuses it or the association dies."""
    for status, identifier in assoc.send_c_find(query, FIND):
        code = status.get("Status") if status else None
        if code in (0xFF00, 0xFF01):
            if identifier is not None:
                yield identifier
        elif code == SUCCESS:
            return
        else:
            level = query.QueryRetrieveLevel
            raise PacsError(f"{name} answered a {level} level C-FIND with {_status(code)}")


def _series_query(study: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = ""
    ds.Modality = ""
    ds.SeriesNumber = ""
    return ds


def _image_query(study: str, series: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = ""
    ds.SOPClassUID = ""
    ds.InstanceNumber = ""
    ds.BurnedInAnnotation = ""
    return ds


def _image_key(study: str, series: str, sops: list[str]) -> Dataset:
    """IMAGE level retrieve identifier: the instances by UID list matching (PS3.4 C.2.2.2.2)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = sops if len(sops) > 1 else sops[0]
    return ds


def _has_modality(study: Dataset, series: list[Dataset], modality: str) -> bool:
    listed = study.get("ModalitiesInStudy")
    if listed:
        values = [listed] if isinstance(listed, str) else list(listed)
        if modality in values:
            return True
    return any(str(one.get("Modality", "")) == modality for one in series)


def _find_header(study: Dataset, series: Dataset, image: Dataset) -> Dataset:
    """What the C-FIND answers say about one instance, as a header for the preview."""
    ds = Dataset()
    for source in (study, series, image):
        for element in source:
            if element.keyword not in ("QueryRetrieveLevel", "RetrieveAETitle"):
                ds[element.tag] = element
    return ds


def _status(code: int | None) -> str:
    return "no answer (association aborted or timed out)" if code is None else f"0x{code:04X}"
