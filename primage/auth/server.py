"""The authorization server's HTTP endpoints (RFC 6749 4.4, RFC 7523, RFC 7662, RFC 7009,
RFC 8414, SMART App Launch 2 Backend Services).

    POST /oauth/token        client_credentials; client auth: client_secret_basic,
                             client_secret_post, private_key_jwt (RS384, ES384)
    POST /oauth/introspect   RFC 7662, for authenticated clients
    POST /oauth/revoke       RFC 7009, a client revokes its own tokens
    GET  /oauth/jwks         the keys that sign access tokens
    GET  /.well-known/smart-configuration (also under /fhir)
    GET  /.well-known/oauth-authorization-server
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from . import scopes as smart
from .clients import Client, Clients
from .tokens import ASSERTION_ALGORITHMS, ASSERTION_TYPE, InvalidClient, InvalidToken, Tokens

log = logging.getLogger("primage.auth")
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
MAX_FORM_BYTES = 64 * 1024


@dataclass
class OAuthError(Exception):
    """An RFC 6749 5.2 error response."""

    error: str
    description: str
    status: int = 400
    basic: bool = False  # the client tried HTTP Basic: answer with a Basic challenge

    def response(self) -> JSONResponse:
        headers = dict(NO_STORE)
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="primage"' if self.basic else "Bearer"
        body = {"error": self.error, "error_description": self.description}
        return JSONResponse(body, self.status, headers=headers)


class RateLimit:
    """A token bucket per client id at the token endpoint (per worker process)."""

    def __init__(self, per_second: float, burst: int) -> None:
        self.rate, self.burst = per_second, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            level, last = self._buckets.get(key, (float(self.burst), now))
            level = min(self.burst, level + (now - last) * self.rate)
            if level < 1:
                self._buckets[key] = (level, now)
                return False
            self._buckets[key] = (level - 1, now)
            return True


@dataclass
class AuthServer:
    clients: Clients
    tokens: Tokens
    issuer: str | None  # configured public base of the server; else from each request
    limit: RateLimit

    def issuer_for(self, request: Request) -> str:
        return self.issuer or str(request.base_url).rstrip("/")

    def metadata(self, base: str) -> dict[str, Any]:
        return {
            "issuer": base,
            "jwks_uri": f"{base}/oauth/jwks",
            "token_endpoint": f"{base}/oauth/token",
            "introspection_endpoint": f"{base}/oauth/introspect",
            "revocation_endpoint": f"{base}/oauth/revoke",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": [
                "private_key_jwt",
                "client_secret_basic",
                "client_secret_post",
            ],
            "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
            "scopes_supported": ["system/*.cruds", "system/*.rs", *sorted(smart.EXTRA)],
            "response_types_supported": ["token"],
            "capabilities": [
                "client-confidential-asymmetric",
                "client-confidential-symmetric",
                "permission-v1",
                "permission-v2",
            ],
        }

    # --- client authentication -------------------------------------------------------------

    def authenticate(self, request: Request, form: Mapping[str, str], issuer: str) -> Client:
        basic = request.headers.get("authorization", "")
        assertion = form.get("client_assertion")
        if basic.lower().startswith("basic "):
            client_id, secret = _basic(basic)
            client = self._client(client_id, basic=True)
            if not client.check_secret(secret):
                raise OAuthError("invalid_client", "Client authentication failed", 401, True)
            return client
        if assertion is not None:
            if form.get("client_assertion_type") != ASSERTION_TYPE:
                raise OAuthError(
                    "invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}"
                )
            client_id = _unverified_issuer(assertion)
            client = self._client(client_id)
            audiences = {f"{issuer}/oauth/token", f"{self.issuer_for(request)}/oauth/token"}
            try:
                self.tokens.check_assertion(assertion, client, audiences)
            except InvalidClient as exc:
                log.info("client assertion refused: %s", exc)
                raise OAuthError("invalid_client", str(exc), 401) from None
            return client
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if client_id and secret:
            client = self._client(client_id)
            if not client.check_secret(secret):
                raise OAuthError("invalid_client", "Client authentication failed", 401)
            return client
        raise OAuthError("invalid_client", "No client authentication", 401)

    def _client(self, client_id: str, *, basic: bool = False) -> Client:
        client = self.clients.get(client_id) if len(client_id) <= 64 else None
        if client is None or client.disabled:
            # the same answer for unknown and disabled clients: no client enumeration
            raise OAuthError("invalid_client", "Client authentication failed", 401, basic)
        return client

    # --- endpoints -------------------------------------------------------------------------

    def token(self, request: Request, form: Mapping[str, str]) -> JSONResponse:
        issuer = self.issuer_for(request)
        client = self.authenticate(request, form, issuer)
        if not self.limit.allow(client.client_id):
            response = OAuthError("slow_down", "Too many token requests", 429).response()
            response.headers["Retry-After"] = "1"
            return response
        if form.get("grant_type") != "client_credentials":
            raise OAuthError("unsupported_grant_type", "Only client_credentials is supported")
        requested = (form.get("scope") or "").split()
        if not requested:
            raise OAuthError("invalid_scope", "scope is required")
        try:
            granted = smart.grantable(requested, list(client.scopes))
        except ValueError as exc:
            raise OAuthError("invalid_scope", str(exc)) from None
        if not granted:
            raise OAuthError("invalid_scope", "None of the requested scopes is allowed")
        token, lifetime = self.tokens.issue(client, granted, issuer)
        log.info("token issued to client %s (%d scopes)", client.client_id, len(granted))
        body = {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": lifetime,
            "scope": " ".join(granted),
        }
        return JSONResponse(body, headers=NO_STORE)

    def introspect(self, request: Request, form: Mapping[str, str]) -> JSONResponse:
        """RFC 7662 for a client's own tokens (another client's look inactive)."""
        issuer = self.issuer_for(request)
        client = self.authenticate(request, form, issuer)
        try:
            principal = self.tokens.validate(form.get("token", ""), issuer)
        except InvalidToken:
            return JSONResponse({"active": False}, headers=NO_STORE)
        if principal.client_id != client.client_id:
            return JSONResponse({"active": False}, headers=NO_STORE)
        body = {
            "active": True,
            "scope": " ".join(principal.scopes),
            "client_id": principal.client_id,
            "sub": principal.client_id,
            "token_type": "Bearer",
            "exp": principal.expires,
            "iss": issuer,
            "aud": issuer,
            "jti": principal.jti,
        }
        if principal.site:
            body["site"] = principal.site
        return JSONResponse(body, headers=NO_STORE)

    def revoke(self, request: Request, form: Mapping[str, str]) -> JSONResponse:
        issuer = self.issuer_for(request)
        client = self.authenticate(request, form, issuer)
        try:
            principal = self.tokens.validate(form.get("token", ""), issuer)
        except InvalidToken:
            return JSONResponse({}, headers=NO_STORE)  # RFC 7009: unknown tokens are fine
        if principal.client_id == client.client_id:
            self.tokens.revocations.revoke(principal.jti, principal.expires)
            log.info("token revoked by client %s", client.client_id)
        return JSONResponse({}, headers=NO_STORE)


def _basic(header: str) -> tuple[str, str]:
    """RFC 6749 2.3.1: client id and secret, each form-urlencoded, in HTTP Basic."""
    try:
        decoded = base64.b64decode(header.split(" ", 1)[1], validate=True).decode()
        client_id, _, secret = decoded.partition(":")
    except (binascii.Error, UnicodeDecodeError, IndexError):
        raise OAuthError("invalid_client", "Malformed Basic credentials", 401, True) from None
    return unquote_plus(client_id), unquote_plus(secret)


def _unverified_issuer(assertion: str) -> str:
    """The assertion's iss, to find the client whose keys then verify it."""
    try:
        payload = assertion.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims["iss"])
    except (IndexError, ValueError, KeyError, TypeError, binascii.Error):
        raise OAuthError("invalid_client", "Malformed client assertion", 401) from None


def build_router(server: AuthServer) -> APIRouter:
    router = APIRouter(tags=["OAuth2"])

    async def form_of(request: Request) -> dict[str, str]:
        if not request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"
        ):
            raise OAuthError("invalid_request", "Use application/x-www-form-urlencoded")
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            raise OAuthError("invalid_request", "Request too large")
        pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        names = [k for k, _ in pairs]
        if len(names) != len(set(names)):
            raise OAuthError("invalid_request", "Repeated parameters")  # RFC 6749 3.2
        return dict(pairs)

    def endpoint(method: Any) -> Any:
        async def handler(request: Request) -> JSONResponse:
            try:
                form = await form_of(request)
                return await run_in_threadpool(method, request, form)
            except OAuthError as err:
                return err.response()

        return handler

    router.add_api_route("/oauth/token", endpoint(server.token), methods=["POST"])
    router.add_api_route("/oauth/introspect", endpoint(server.introspect), methods=["POST"])
    router.add_api_route("/oauth/revoke", endpoint(server.revoke), methods=["POST"])

    async def jwks() -> JSONResponse:
        keys = await run_in_threadpool(server.tokens.keys.public_jwks)
        return JSONResponse(keys, headers={"Cache-Control": "max-age=60"})

    router.add_api_route("/oauth/jwks", jwks, methods=["GET"])
    for path in ("/.well-known/smart-configuration", "/.well-known/oauth-authorization-server"):
        router.add_api_route(path, discovery_endpoint(server), methods=["GET"])
    return router


def discovery_endpoint(server: AuthServer) -> Callable[[Request], Awaitable[JSONResponse]]:
    """The metadata document; the app also serves it at /fhir/.well-known/smart-configuration,
    a route it places before the FHIR API's catch-all."""

    async def discovery(request: Request) -> JSONResponse:
        return JSONResponse(server.metadata(server.issuer_for(request)))

    return discovery
