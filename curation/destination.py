"""Where imported items go: STOW-RS to a platform, or the archive in this process (DICOM);
a FHIR transaction per patient to a platform, or the FHIR service in this process (clinical).

All answer per item, in the order sent: stored, quarantined (the gateway held it back,
e.g. burned-in annotation) or failed, with the reason. Over HTTP the reasons come from the
STOW response's `Warning` header, which names each refused part by its position
(dicomweb-client returns the response body only, so the importer posts with httpx), or from
a refused transaction's OperationOutcome. Transient trouble (connection refused or reset,
timeouts, 429, 502-504) is retried with exponential back-off before it is given up as failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from dicomweb.errors import Failure
from dicomweb.service import Archive
from fhir_server.audit import Actor
from fhir_server.interactions import Request
from fhir_server.repository import Repository
from fhir_server.service import FhirService

from .ledger import FAILED, QUARANTINED, STORED

log = logging.getLogger("primage.import")

Outcome = tuple[str, str, str | None]  # (key, state, reason)
_WARNING = re.compile(r'299 \S+ "part (\d+): ((?:[^"\\]|\\.)*)"')
TRANSIENT = {429, 502, 503, 504}


class Destination(Protocol):
    name: str

    def send(self, parts: Sequence[tuple[str, bytes]]) -> list[Outcome]:
        """Store (key, Part 10 bytes) pairs; one outcome per pair, in order."""
        ...


def multipart(parts: Sequence[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    chunks = []
    for _, data in parts:
        chunks.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        chunks.append(data)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={boundary}'


def classify(reason: str) -> str:
    """A refused instance: held back by de-identification, or failed."""
    return QUARANTINED if reason.startswith("quarantined") else FAILED


@dataclass
class _Platform:
    """A platform over HTTP: `base` its /dicomweb or /fhir URL, `http` an authenticated
    client; transient failures are retried `attempts` times from `backoff` seconds on."""

    base: str
    http: httpx.Client
    attempts: int = 6
    backoff: float = 0.5
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.base.rstrip("/")


@dataclass
class StowDestination(_Platform):
    """STOW-RS to `base` (the platform's /dicomweb) with an authenticated httpx client."""

    def send(self, parts: Sequence[tuple[str, bytes]]) -> list[Outcome]:
        body, content_type = multipart(parts)
        try:
            response = self._post(body, content_type)
        except httpx.HTTPError as exc:
            reason = f"platform unreachable: {type(exc).__name__}"
            return [(key, FAILED, reason) for key, _ in parts]
        if response.status_code not in (200, 202, 409):
            reason = f"HTTP {response.status_code}: {response.text[:200]}"
            return [(key, FAILED, reason) for key, _ in parts]
        refused = {
            int(n): text.replace('\\"', '"')
            for n, text in _WARNING.findall(response.headers.get("warning", ""))
        }
        outcomes: list[Outcome] = []
        for n, (key, _) in enumerate(parts, 1):
            reason = refused.get(n)
            if reason is None and response.status_code != 200:
                # refused, but beyond the 20 reasons the header carries: say so, retryable
                failed = response.json().get("00081198", {}).get("Value", [])
                if len(failed) > len(refused):
                    outcomes.append((key, FAILED, "refused; the reason was not reported"))
                    continue
            state = STORED if reason is None else classify(reason)
            outcomes.append((key, state, reason))
        return outcomes

    def _post(self, body: bytes, content_type: str) -> httpx.Response:
        url = f"{self.name}/studies"
        headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
        return post(self.http, url, body, headers, self.attempts, self.backoff, "STOW")


def post(
    http: httpx.Client,
    url: str,
    body: bytes,
    headers: dict[str, str],
    attempts: int,
    backoff: float,
    what: str,
) -> httpx.Response:
    """POST, retrying transient trouble with exponential back-off; raises httpx errors."""
    for attempt in range(1, attempts + 1):
        try:
            response = http.post(url, content=body, headers=headers)
        except (httpx.TransportError, httpx.TimeoutException):
            if attempt == attempts:
                raise
        else:
            if response.status_code not in TRANSIENT or attempt == attempts:
                return response
        delay = backoff * 2 ** (attempt - 1)
        log.warning("%s to %s: transient failure, retrying in %.1f s", what, url, delay)
        time.sleep(delay)
    raise AssertionError("unreachable")


@dataclass
class ArchiveDestination:
    """The archive of this process, as a site's client: the gateway pseudonymises."""

    archive: Archive
    site: str
    base: str
    client_id: str = "primage-import"
    name: str = "local"

    @property
    def write(self) -> Callable[[], AbstractContextManager[Repository]]:
        """The platform's store, for what the importer reports there (its Task)."""
        return self.archive.write

    def send(self, parts: Sequence[tuple[str, bytes]]) -> list[Outcome]:
        body, content_type = multipart(parts)

        async def chunks() -> AsyncIterator[bytes]:
            yield body

        actor = Actor(self.client_id, self.site, None)
        result = asyncio.run(self.archive.store(chunks(), content_type, None, self.base, actor))
        outcomes: list[Outcome] = []
        for (key, _), outcome in zip(parts, result.outcomes, strict=False):
            failure: Failure | None = outcome.failure
            if failure is None:
                outcomes.append((key, STORED, None))
            else:
                outcomes.append((key, classify(failure.reason), failure.reason))
        return outcomes


# --- clinical imports: one transaction Bundle per item --------------------------------------------


def transaction_outcome(status: int, body: object) -> tuple[str, str | None]:
    """(state, reason) of one posted transaction: all of it stored, or none of it."""
    if status == 200:
        return STORED, None
    diagnostics = []
    if isinstance(body, dict):
        for issue in body.get("issue") or []:
            if isinstance(issue, dict) and issue.get("diagnostics"):
                diagnostics.append(str(issue["diagnostics"]))
    detail = "; ".join(diagnostics[:3]) or "refused"
    return FAILED, f"HTTP {status}: {detail}"[:500]


@dataclass
class FhirDestination(_Platform):
    """Transaction Bundles POSTed to a platform's FHIR base (`.../fhir`), one per item (a
    patient): a refused transaction fails its own patient, never the others in the batch."""

    def send(self, parts: Sequence[tuple[str, bytes]]) -> list[Outcome]:
        headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
        outcomes: list[Outcome] = []
        for key, body in parts:
            try:
                response = post(
                    self.http, self.name, body, headers, self.attempts, self.backoff, "FHIR"
                )
            except httpx.HTTPError as exc:
                outcomes.append((key, FAILED, f"platform unreachable: {type(exc).__name__}"))
                continue
            try:
                answer = response.json()
            except ValueError:
                answer = None
            outcomes.append((key, *transaction_outcome(response.status_code, answer)))
        return outcomes


@dataclass
class FhirServiceDestination:
    """The FHIR service of this process, as a site's client: the gateway pseudonymises."""

    service: FhirService
    site: str
    base: str
    client_id: str = "primage-import"
    name: str = "local"

    @property
    def write(self) -> Callable[[], AbstractContextManager[Repository]]:
        """The platform's store, for what the importer reports there (its Task)."""
        return self.service.bundles.write

    def send(self, parts: Sequence[tuple[str, bytes]]) -> list[Outcome]:
        actor = Actor(self.client_id, self.site, None)
        outcomes: list[Outcome] = []
        for key, body in parts:
            request = Request(
                method="POST",
                path="",
                headers={"content-type": "application/fhir+json"},
                body=json.loads(body),
                base=self.base,
                actor=actor,
            )
            _, response = self.service.handle(request)
            answer = response.body
            if isinstance(answer, bytes):
                answer = json.loads(answer)
            outcomes.append((key, *transaction_outcome(response.status, answer)))
        return outcomes
