"""Wiring for `primage import` and `primage jobs`: a job's source and destination from
its ledger record, so a resumed job talks to the same source and platform.

The destination is `local:SITE` (this platform's archive, as SITE's client, through the
gateway) or a platform's DICOMweb URL, reached with OAuth2 client credentials that are
given again on every run and never stored in the ledger. Clinical imports go to FHIR, and
their destination names end in /fhir: `local:SITE/fhir` or a platform's FHIR base URL.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.rfc6749 import OAuth2Token

from curation.destination import ArchiveDestination, Destination, StowDestination
from curation.folder import FolderSource
from curation.ledger import Ledger
from curation.runner import Source

from . import db
from .settings import Settings

STOW_SCOPE = "system/ImagingStudy.c"
# A clinical import PUTs each resource (the gateway maps the site's ids to the same platform
# ids on every run): update, and create for the types the mappings write.
FHIR_SCOPE = " ".join(
    f"system/{t}.cu" for t in ("Patient", "Condition", "Observation", "Procedure")
)


@dataclass(frozen=True)
class Credentials:
    client_id: str | None
    client_secret: str | None
    scope: str = STOW_SCOPE


def ledger(settings: Settings) -> Ledger:
    return Ledger(db.writer(db.make_engine(settings.import_database(), 4)))


def source_of(kind: str, spec: dict[str, Any]) -> Source:
    if kind == "folder":
        return FolderSource(Path(spec["path"]))
    if kind == "pacs":  # curation/pacs.py
        from curation.pacs import PacsSource

        return PacsSource.from_spec(spec)
    if kind == "dicomweb":  # the source's credentials come again on every run, never stored
        from curation.dicomweb_source import DicomwebSource

        env = os.environ
        auth = source_auth(
            spec["url"],
            env.get("PRIMAGE_IMPORT_SOURCE_TOKEN"),
            env.get("PRIMAGE_IMPORT_SOURCE_CLIENT_ID"),
            env.get("PRIMAGE_IMPORT_SOURCE_CLIENT_SECRET"),
            spec.get("token_url"),
        )
        return DicomwebSource.from_spec(spec, auth)
    if kind == "clinical":  # clinical: curation/clinical.py
        from curation.clinical import ClinicalSource

        return ClinicalSource(Path(spec["path"]), Path(spec["mapping"]))
    raise ValueError(f"unknown import kind {kind!r}")


def destination_of(
    name: str, settings: Settings, credentials: Credentials, stack: ExitStack
) -> Destination:
    """`local:SITE` or a platform's DICOMweb base URL; resources closed with `stack`."""
    if name.endswith("/fhir"):
        return fhir_destination_of(name, settings, credentials, stack)
    if name.startswith("local:"):
        app = _local_app(settings, stack)
        base = settings.dicomweb_base_url or "http://127.0.0.1:8080/dicomweb"
        return ArchiveDestination(app.state.archive, name.removeprefix("local:"), base)
    return StowDestination(name, stack.enter_context(platform_client(name, credentials)))


def _local_app(settings: Settings, stack: ExitStack) -> Any:
    """This platform, in process (its database migrated first when it is SQLite)."""
    from .app import create_app

    if settings.database().startswith("sqlite"):
        db.upgrade(settings.database())
    app = create_app(settings)
    stack.callback(app.state.database.engine.dispose)
    return app


def dicomweb_destination_name(to: str | None, site: str | None) -> str:
    """A DICOM import's destination: `local:SITE`, or the DICOMweb base of the platform
    `to` names (its root, its /dicomweb or its /fhir URL)."""
    if to is None:
        return f"local:{site}"
    root = to.rstrip("/").removesuffix("/fhir").removesuffix("/dicomweb")
    return f"{root}/dicomweb"


def fhir_destination_name(to: str | None, site: str | None) -> str:
    """A clinical import's destination: `local:SITE/fhir`, or the FHIR base of the platform
    `to` names (its root, its /fhir or its /dicomweb URL)."""
    if to is None:
        return f"local:{site}/fhir"
    root = to.rstrip("/").removesuffix("/fhir").removesuffix("/dicomweb")
    return f"{root}/fhir"


def fhir_destination_of(
    name: str, settings: Settings, credentials: Credentials, stack: ExitStack
) -> Destination:
    """`local:SITE/fhir` (this platform's FHIR service, as SITE's client, through the
    gateway) or a platform's FHIR base URL; resources closed with `stack`."""
    from dataclasses import replace

    from curation.destination import FhirDestination, FhirServiceDestination

    if name.startswith("local:"):
        app = _local_app(settings, stack)
        base = settings.base_url or "http://127.0.0.1:8080/fhir"
        site = name.removeprefix("local:").removesuffix("/fhir")
        return FhirServiceDestination(app.state.fhir, site, base)
    if credentials.scope == STOW_SCOPE:
        credentials = replace(credentials, scope=FHIR_SCOPE)
    return FhirDestination(name, stack.enter_context(platform_client(name, credentials)))


def platform_client(base: str, credentials: Credentials) -> httpx.Client:
    """An httpx client whose requests carry a client-credentials token (`base`: the
    platform's /dicomweb or /fhir URL; the token endpoint is /oauth/token beside it)."""
    auth = None
    if credentials.client_id and credentials.client_secret:
        root = base.rstrip("/").removesuffix("/dicomweb").removesuffix("/fhir")
        auth = ClientCredentials(f"{root}/oauth/token", credentials)
    return httpx.Client(timeout=300, auth=auth)


class ClientCredentials(httpx.Auth):
    """RFC 6749 4.4 with authlib fetching the token: fetched before the first request,
    again when it is about to expire, and once more if the platform answers 401."""

    def __init__(self, token_url: str, credentials: Credentials) -> None:
        self._token_url = token_url
        self._credentials = credentials
        self._token: OAuth2Token | None = None
        self._lock = threading.Lock()

    def token(self, renew: bool = False) -> str:
        with self._lock:
            if renew or self._token is None or self._token.is_expired(leeway=30):
                c = self._credentials
                with OAuth2Client(c.client_id, c.client_secret, scope=c.scope, timeout=60) as oauth:
                    self._token = oauth.fetch_token(
                        self._token_url, grant_type="client_credentials"
                    )
            return str(self._token["access_token"])

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = f"Bearer {self.token(renew=True)}"
            yield request


def source_auth(
    url: str,
    token: str | None,
    client_id: str | None,
    client_secret: str | None,
    token_url: str | None = None,
) -> Any:
    """A DICOMweb source's requests auth: client credentials against its token endpoint
    (default: the /oauth/token beside its /dicomweb), else a bearer token, else none."""
    from curation.dicomweb_source import READ_SCOPE, Bearer, HttpxAuth

    if client_id and client_secret:
        root = url.rstrip("/").removesuffix("/dicomweb")
        credentials = Credentials(client_id, client_secret, READ_SCOPE)
        return HttpxAuth(ClientCredentials(token_url or f"{root}/oauth/token", credentials))
    return Bearer(token) if token else None
