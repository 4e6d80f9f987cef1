"""How a gateway reaches the linkage service: in process, or over HTTP when stand-alone.

Both send only what `encoding` made: the gateway's key never leaves the gateway.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import httpx

from pseudonymisation.encoding import Encoding
from pseudonymisation.linkage.service import LinkageService, Registration


class Linkage(Protocol):
    def register(
        self, context: str, identity_encoding: Encoding, local_token: str, sealed: str
    ) -> Registration: ...


class LocalLinkage:
    """The service in the same process (the platform with linkage built in)."""

    def __init__(self, service: LinkageService) -> None:
        self.service = service

    def register(
        self, context: str, identity_encoding: Encoding, local_token: str, sealed: str
    ) -> Registration:
        return self.service.register(context, local_token, sealed, identity_encoding)


class HttpLinkage:
    """The service at `base_url`; `token` is a bearer token or a callable returning a fresh
    one per request (so an OAuth client can renew it)."""

    def __init__(
        self,
        base_url: str,
        token: str | Callable[[], str],
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._token = token
        self._http = httpx.Client(base_url=base_url, timeout=timeout, transport=transport)

    def register(
        self, context: str, identity_encoding: Encoding, local_token: str, sealed: str
    ) -> Registration:
        """Raises httpx.HTTPStatusError on a refusal (the JSON `detail` says why)."""
        token = self._token() if callable(self._token) else self._token
        response = self._http.post(
            "/identity/registrations",
            json={
                "context": context,
                "local_token": local_token,
                "sealed_local_id": sealed,
                "encoding": identity_encoding.to_json(),
            },
            headers={"Authorization": f"Bearer {token}"} if token else {},
        )
        response.raise_for_status()
        data = response.json()
        return Registration(data["research_pseudonym"], data["context_pseudonym"], data["status"])

    def close(self) -> None:
        self._http.close()
