"""The resource-server side: every /fhir and /dicomweb request carries a valid bearer token.

Pure ASGI, in front of the routes: a request without a token gets 401 with
`WWW-Authenticate: Bearer` (RFC 6750 3), a bad, expired or revoked one 401 with
`error="invalid_token"`, in the API's own error format (OperationOutcome for FHIR, a
PS3.18 status and Warning for DICOMweb). A valid token puts its Principal and Grant on the
request state for the routes' scope checks. A refused token is audited (not a missing
one); the token itself is never logged nor recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy.exc import DBAPIError
from starlette.types import ASGIApp, Receive, Scope, Send

from fhir_server.audit import Actor, refused_token_event
from fhir_server.errors import Issue, operation_outcome

from .scopes import GATEWAY
from .tokens import InvalidToken, Tokens

log = logging.getLogger("primage.auth")
PROTECTED = ("/fhir", "/dicomweb", "/identity")
PUBLIC = {"/fhir/metadata", "/fhir/.well-known/smart-configuration"}


class BearerAuth:
    def __init__(
        self,
        app: ASGIApp,
        tokens: Tokens,
        issuer: str | None,
        audit: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.app = app
        self.tokens = tokens
        self.issuer = issuer
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):  # route on the path the app's router will see
            path = path[len(root) :]
        if (
            scope["type"] != "http"
            or scope["method"] == "OPTIONS"  # CORS preflight carries no credentials
            or path in PUBLIC
            or not _under(path)
        ):
            await self.app(scope, receive, send)
            return
        header = _header(scope, b"authorization")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await _deny(scope, send, path, "Bearer", "An access token is required")
            return
        issuer = self.issuer or _base(scope)
        try:
            principal = self.tokens.validate(token.strip(), issuer)
        except InvalidToken as exc:
            log.info("bearer token refused: %s", exc)
            if self.audit is not None:
                client = scope.get("client")
                address = client[0] if client else None
                self.audit(refused_token_event(address, scope["method"], path, str(exc)))
            challenge = 'Bearer error="invalid_token"'
            await _deny(scope, send, path, challenge, str(exc))
            return
        except DBAPIError:  # keys or revocations unreadable: the database is down
            log.error("bearer token not checked: database unavailable")
            await _deny(scope, send, path, "", "The database is unavailable; retry", 503)
            return
        state = scope.setdefault("state", {})
        state["principal"] = principal
        state["access"] = principal.grant
        client = scope.get("client")
        state["actor"] = Actor(
            principal.client_id,
            principal.site,
            client[0] if client else None,
            pseudonymised=GATEWAY in principal.scopes,
        )
        await self.app(scope, receive, send)


def _base(scope: Scope) -> str:
    """The server root the client addressed (as Starlette's base_url, without the URL
    object): tokens are issued for, and checked against, this issuer."""
    host = _header(scope, b"host")
    if not host:
        server = scope.get("server") or ("localhost", 80)
        host = f"{server[0]}:{server[1]}"
    return f"{scope['scheme']}://{host}{scope.get('root_path', '')}".rstrip("/")


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


def _under(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in PROTECTED)


async def _deny(
    scope: Scope, send: Send, path: str, challenge: str, reason: str, status: int = 401
) -> None:
    if path.startswith("/fhir"):
        code = "login" if status == 401 else "transient"
        body = orjson.dumps(operation_outcome([Issue("error", code, reason)]))
        headers = [(b"content-type", b"application/fhir+json")]
    else:
        body = (reason + "\n").encode()
        safe = reason.replace('"', "'").encode("ascii", "backslashreplace")
        headers = [(b"content-type", b"text/plain"), (b"warning", b'299 primage "' + safe + b'"')]
    headers.append((b"content-length", str(len(body)).encode()))
    if challenge:
        headers.append((b"www-authenticate", challenge.encode()))
    if status == 503:
        headers.append((b"retry-after", b"1"))
    scope.setdefault("state", {})["route_label"] = "auth:denied"
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
