"""Where imported instances go: STOW-RS to a platform, or the archive in this process.

Both answer per instance, in the order sent: stored, quarantined (the gateway held it back,
e.g. burned-in annotation) or failed, with the reason. Over HTTP the reasons come from the
STOW response's `Warning` header, which names each refused part by its position
(dicomweb-client returns the response body only, so the importer posts with httpx).
Transient trouble (connection refused or reset, timeouts, 429, 502-504) is retried with
exponential back-off before a batch is given up as failed.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from dicomweb.errors import Failure
from dicomweb.service import Archive
from fhir_server.audit import Actor

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
class StowDestination:
    """STOW-RS to `base` (the platform's /dicomweb) with an authenticated httpx client."""

    base: str
    http: httpx.Client
    attempts: int = 6
    backoff: float = 0.5
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.base.rstrip("/")

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
        for attempt in range(1, self.attempts + 1):
            try:
                response = self.http.post(url, content=body, headers=headers)
            except (httpx.TransportError, httpx.TimeoutException):
                if attempt == self.attempts:
                    raise
            else:
                if response.status_code not in TRANSIENT or attempt == self.attempts:
                    return response
            delay = self.backoff * 2 ** (attempt - 1)
            log.warning("STOW to %s: transient failure, retrying in %.1f s", url, delay)
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
