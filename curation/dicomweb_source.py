"""`primage import dicomweb`: studies from another DICOMweb archive (QIDO-RS, WADO-RS).

The selection is a study-level QIDO (patients, accession number, study date range,
modalities in study, study UIDs); repeated values are ORed, different options ANDed. Every
query is paged with limit/offset until the source answers an empty page, so a server
maximum smaller than our page is not a silent cut. Each matching study is listed instance
by instance (instance-level QIDO, paged too): an item is one instance, keyed by its SOP
Instance UID, grouped by study, located as `study/series/sop`.

Instances come by WADO-RS as the source stores them (`transfer-syntax=*`): a whole series
in one streamed request when more than one of its instances is pending, else one by one,
and one by one again for whatever a series request did not deliver. An instance that
cannot be had (404, a server error after the retries) is handed back with the reason.

Transient trouble (connection errors, 429, 502-504) is retried with exponential back-off
by the session's transport. Credentials for the source travel in the session's auth, never
in the spec (the ledger) or a reason.
"""

from __future__ import annotations

import io
import logging
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import httpx
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .ledger import Item, Listed
from .runner import SourceError

log = logging.getLogger("primage.import")

READ_SCOPE = "system/ImagingStudy.rs"
TRANSIENT = (429, 502, 503, 504)
AS_STORED = (("application/dicom", "*"),)  # PS3.18 8.7.3.5.2: each instance as stored
INSTANCE_FIELDS = [
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "BitsAllocated",
]
# what the dry run's summary reads from every instance (the full header: one per series)
PREVIEW_FIELDS = ["PatientID", "StudyDate", "Modality", "BurnedInAnnotation"]
_TAGS = {
    "StudyInstanceUID": "0020000D",
    "SeriesInstanceUID": "0020000E",
    "SOPInstanceUID": "00080018",
    "Rows": "00280010",
    "Columns": "00280011",
    "NumberOfFrames": "00280008",
    "BitsAllocated": "00280100",
}


@dataclass(frozen=True)
class Selection:
    """Which studies: repeated values are ORed, different options ANDed."""

    patients: tuple[str, ...] = ()
    accession: str | None = None
    date_from: str | None = None  # DICOM DA, YYYYMMDD
    date_to: str | None = None
    modalities: tuple[str, ...] = ()
    studies: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (
            self.patients
            or self.accession
            or self.date_from
            or self.date_to
            or self.modalities
            or self.studies
        )

    def queries(self) -> Iterator[dict[str, str]]:
        """The study-level QIDO filters that together make the selection."""
        common: dict[str, str] = {}
        if self.accession:
            common["AccessionNumber"] = self.accession
        if self.date_from or self.date_to:
            common["StudyDate"] = f"{self.date_from or ''}-{self.date_to or ''}"
        for patient in self.patients or (None,):
            for modality in self.modalities or (None,):
                for study in self.studies or (None,):
                    filters = dict(common)
                    if patient is not None:
                        filters["PatientID"] = patient
                    if modality is not None:
                        filters["ModalitiesInStudy"] = modality
                    if study is not None:
                        filters["StudyInstanceUID"] = study
                    yield filters

    def spec(self) -> dict[str, Any]:
        return {
            "patients": list(self.patients),
            "accession": self.accession,
            "date_from": self.date_from,
            "date_to": self.date_to,
            "modalities": list(self.modalities),
            "studies": list(self.studies),
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Selection:
        return cls(
            patients=tuple(spec.get("patients") or ()),
            accession=spec.get("accession"),
            date_from=spec.get("date_from"),
            date_to=spec.get("date_to"),
            modalities=tuple(spec.get("modalities") or ()),
            studies=tuple(spec.get("studies") or ()),
        )


def dicom_date(value: str | None) -> str | None:
    """YYYY-MM-DD or YYYYMMDD as DICOM DA; ValueError for anything else."""
    if not value:
        return None
    digits = value.replace("-", "")
    if len(digits) != 8 or not digits.isdigit():
        raise ValueError(f"not a date (YYYY-MM-DD): {value!r}")
    return digits


# --- authentication -----------------------------------------------------------------------


class Bearer(requests.auth.AuthBase):
    """A fixed bearer token (masked in repr)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "Bearer(**********)"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request


class HttpxAuth(requests.auth.AuthBase):
    """An `httpx.Auth` whose flow sets a header and may ask once more after a 401 (as
    primage.imports.ClientCredentials does), for a requests session."""

    def __init__(self, auth: httpx.Auth) -> None:
        self.auth = auth

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        flow = self.auth.sync_auth_flow(httpx.Request(request.method or "GET", request.url or ""))
        request.headers["Authorization"] = next(flow).headers["Authorization"]
        request.register_hook("response", partial(self._again, flow))
        return request

    def _again(
        self,
        flow: Generator[httpx.Request, httpx.Response, None],
        response: requests.Response,
        **kwargs: Any,
    ) -> requests.Response:
        if response.status_code != 401 or response.connection is None:
            return response
        try:
            renewed = flow.send(httpx.Response(401))
        except StopIteration:
            return response
        _ = response.content  # read, so that the connection can be reused
        response.close()
        request = response.request.copy()
        request.headers["Authorization"] = renewed.headers["Authorization"]
        again: requests.Response = response.connection.send(request, **kwargs)
        again.history.append(response)
        again.request = request
        return again


def session(
    auth: requests.auth.AuthBase | None = None, *, attempts: int = 5, backoff: float = 0.5
) -> requests.Session:
    """A requests session for dicomweb-client: `auth` on every request, transient failures
    retried with exponential back-off (honouring Retry-After)."""
    http = requests.Session()
    http.auth = auth
    retry = Retry(
        total=attempts - 1,
        connect=attempts - 1,
        read=attempts - 1,
        status=attempts - 1,
        status_forcelist=TRANSIENT,
        allowed_methods=frozenset({"GET"}),
        backoff_factor=backoff,
        raise_on_status=False,
        respect_retry_after_header=True,
    )
    adapter = HTTPAdapter(max_retries=retry)
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    return http


# --- the source ---------------------------------------------------------------------------


@dataclass
class DicomwebSource:
    url: str
    selection: Selection
    http: requests.Session = field(default_factory=session)
    page: int = 500  # QIDO limit; the source's own maximum may be lower
    timeout: float = 300
    token_url: str | None = None  # for resuming: where client credentials get a token
    kind: str = "dicomweb"

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self.web = DICOMwebClient(self.url, session=self.http, timeout=self.timeout)
        self.web.set_http_retry_params(retry=False)  # the session's transport retries
        # dicomweb-client sends `Host` without the port; a server that derives its URLs or
        # its tokens' issuer from Host (primage does) then sees another origin: keep it
        self.web.host = urlsplit(self.url).netloc.rpartition("@")[2]
        self._closed = weakref.finalize(self, self.http.close)

    def close(self) -> None:
        self._closed()

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"url": self.url, "selection": self.selection.spec()}
        if self.token_url:
            spec["token_url"] = self.token_url
        return spec

    @classmethod
    def from_spec(
        cls, spec: dict[str, Any], auth: requests.auth.AuthBase | None = None
    ) -> DicomwebSource:
        selection = Selection.from_spec(spec["selection"])
        return cls(spec["url"], selection, session(auth), token_url=spec.get("token_url"))

    def check(self) -> None:
        """One small QIDO, so that a wrong URL or credentials fail before a job is made."""
        filters = next(self.selection.queries())
        self._call(self.web.search_for_studies, search_filters=filters, limit=1)

    def studies(self) -> Iterator[str]:
        """The selected studies' UIDs, each once."""
        seen: set[str] = set()
        for filters in self.selection.queries():
            search = partial(
                self.web.search_for_studies, search_filters=filters, fields=["StudyInstanceUID"]
            )
            for found in self._paged(search, "StudyInstanceUID"):
                uid = _value(found, "StudyInstanceUID")
                if uid and uid not in seen:
                    seen.add(uid)
                    yield uid

    def instances(self, study: str, extra: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
        """The study's instances as DICOM JSON (instance-level QIDO)."""
        search = partial(
            self.web.search_for_instances,
            study_instance_uid=study,
            fields=[*INSTANCE_FIELDS, *extra],
        )
        yield from self._paged(search, "SOPInstanceUID")

    def listing(self) -> Iterator[Listed]:
        for study in self.studies():
            for found in self.instances(study):
                sop, series = _value(found, "SOPInstanceUID"), _value(found, "SeriesInstanceUID")
                if not sop or not series:
                    continue
                yield Listed(
                    key=sop, group=study, locator=f"{study}/{series}/{sop}", size=_size(found)
                )

    def preview(self) -> Iterator[tuple[Any, int]]:
        """(header, size) of every selected instance: the full header (WADO-RS metadata)
        of the first instance of each series, the QIDO answer for the others."""
        seen: set[str] = set()
        for study in self.studies():
            for found in self.instances(study, PREVIEW_FIELDS):
                series, sop = _value(found, "SeriesInstanceUID"), _value(found, "SOPInstanceUID")
                document = found
                if series and sop and series not in seen:
                    seen.add(series)
                    document = self._call(self.web.retrieve_instance_metadata, study, series, sop)
                yield Dataset.from_json(document, bulk_data_uri_handler=_no_bulk_data), _size(found)

    def fetch(self, items: Sequence[Item]) -> Iterator[tuple[Item, bytes | str]]:
        series: dict[tuple[str, str], list[Item]] = {}
        for item in items:
            study, series_uid, _ = item.locator.split("/")
            series.setdefault((study, series_uid), []).append(item)
        for (study, series_uid), members in series.items():
            if len(members) > 1:
                yield from self._series(study, series_uid, members)
            else:
                yield from self._instances(members)

    def _series(
        self, study: str, series: str, members: list[Item]
    ) -> Iterator[tuple[Item, bytes | str]]:
        wanted = {item.key: item for item in members}
        stream = self.web.iter_series(study, series, media_types=AS_STORED)
        try:
            for ds in stream:
                item = wanted.pop(str(ds.get("SOPInstanceUID", "")), None)
                if item is not None:
                    yield item, part10(ds)
        except (requests.RequestException, InvalidDicomError, ValueError) as exc:
            log.warning("WADO-RS series from %s: %s; instance by instance", self.url, _why(exc))
        finally:
            stream.close()  # type: ignore[attr-defined]  # the response, if not read to its end
        yield from self._instances(list(wanted.values()))

    def _instances(self, items: Iterable[Item]) -> Iterator[tuple[Item, bytes | str]]:
        for item in items:
            study, series, sop = item.locator.split("/")
            try:
                ds = self.web.retrieve_instance(study, series, sop, media_types=AS_STORED)
            except (requests.RequestException, InvalidDicomError, ValueError) as exc:
                yield item, _why(exc)
                continue
            yield item, part10(ds)

    def _paged(self, search: Callable[..., list[dict[str, Any]]], key: str) -> Iterator[dict]:
        """Every match, page by page (limit/offset) until an empty page; a page with
        nothing new ends it too (a source that ignores offset)."""
        offset = 0
        seen: set[str] = set()
        while True:
            found = self._call(search, limit=self.page, offset=offset)
            fresh = [f for f in found if _value(f, key) not in seen]
            if not fresh:
                return
            seen.update(_value(f, key) for f in fresh)
            yield from fresh
            offset += len(found)

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except requests.RequestException as exc:
            raise SourceError(f"DICOMweb source {self.url}: {_why(exc)}") from None


def part10(ds: Dataset) -> bytes:
    """The instance as a Part 10 file, its file meta (and so its transfer syntax) as
    received; completed from the dataset if the source sent none."""
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit = (getattr(ds, "original_encoding", (None, True))[0]) is True
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    if "MediaStorageSOPClassUID" not in meta and "SOPClassUID" in ds:
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    if "MediaStorageSOPInstanceUID" not in meta and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta = meta
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _value(document: dict[str, Any], keyword: str) -> str:
    values = document.get(_TAGS[keyword], {}).get("Value") or [""]
    return str(values[0])


def _size(document: dict[str, Any]) -> int:
    """Pixel bytes, estimated from the QIDO answer (0 when it does not say)."""

    def number(keyword: str, default: int) -> int:
        try:
            return int(_value(document, keyword) or default)
        except ValueError:
            return default

    bits = number("BitsAllocated", 8)
    return (
        number("NumberOfFrames", 1) * number("Rows", 0) * number("Columns", 0) * max(bits // 8, 1)
    )


def _no_bulk_data(tag: str, vr: str, uri: str) -> None:
    """Bulk data (pixels) is not fetched for a preview."""
    return None


def _why(exc: BaseException) -> str:
    """A reason for the ledger: the status or the error's type, no URL or payload."""
    response = getattr(exc, "response", None)
    if response is not None:
        if response.status_code == 404:
            return "not found at the source (HTTP 404)"
        return f"the source answered HTTP {response.status_code}"
    if isinstance(exc, requests.RequestException):
        return f"source unreachable: {type(exc).__name__}"
    return f"unreadable from the source: {type(exc).__name__}"
