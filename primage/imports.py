"""Wiring for `primage import` and `primage jobs`: a job's source and destination from
its ledger record, so a resumed job talks to the same source and platform.

The destination is `local:SITE` (this platform's archive, as SITE's client, through the
gateway) or a platform's DICOMweb URL, reached with OAuth2 client credentials that are
given again on every run and never stored in the ledger.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from authlib.integrations.httpx_client import OAuth2Client

from curation.destination import ArchiveDestination, Destination, StowDestination
from curation.folder import FolderSource
from curation.ledger import Ledger
from curation.runner import Source

from . import db
from .settings import Settings

STOW_SCOPE = "system/ImagingStudy.c"


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
    # pacs: curation/pacs.py
    # dicomweb: curation/dicomweb_source.py
    # clinical: curation/clinical.py
    raise ValueError(f"unknown import kind {kind!r}")


def destination_of(
    name: str, settings: Settings, credentials: Credentials, stack: ExitStack
) -> Destination:
    """`local:SITE` or a platform's DICOMweb base URL; resources closed with `stack`."""
    if name.startswith("local:"):
        from .app import create_app

        if settings.database().startswith("sqlite"):
            db.upgrade(settings.database())
        app = create_app(settings)
        stack.callback(app.state.database.engine.dispose)
        base = settings.dicomweb_base_url or "http://127.0.0.1:8080/dicomweb"
        return ArchiveDestination(app.state.archive, name.removeprefix("local:"), base)
    return StowDestination(name, stack.enter_context(platform_client(name, credentials)))


def platform_client(dicomweb_base: str, credentials: Credentials) -> httpx.Client:
    """An httpx client whose requests carry a client-credentials token."""
    auth = None
    if credentials.client_id and credentials.client_secret:
        root = dicomweb_base.rstrip("/").removesuffix("/dicomweb")
        auth = ClientCredentials(f"{root}/oauth/token", credentials)
    return httpx.Client(timeout=300, auth=auth)


class ClientCredentials(httpx.Auth):
    """RFC 6749 4.4 with authlib fetching the token: fetched before the first request,
    again when it is about to expire, and once more if the platform answers 401."""

    def __init__(self, token_url: str, credentials: Credentials) -> None:
        self._token_url = token_url
        self._oauth = OAuth2Client(
            credentials.client_id, credentials.client_secret, scope=credentials.scope, timeout=60
        )
        self._lock = threading.Lock()

    def _token(self, renew: bool = False) -> str:
        with self._lock:
            token = self._oauth.token
            if renew or not token or token.is_expired(leeway=30):
                token = self._oauth.fetch_token(self._token_url, grant_type="client_credentials")
            return str(token["access_token"])

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        request.headers["Authorization"] = f"Bearer {self._token()}"
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = f"Bearer {self._token(renew=True)}"
            yield request
