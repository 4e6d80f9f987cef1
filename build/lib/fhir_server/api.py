"""HTTP binding of the FHIR service: content negotiation, body limits, headers, Prefer.

One catch-all route hands every /fhir request to `FhirService`, which also serves Bundle
entries; this module only translates between HTTP and `Request`/`Response`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request as HttpRequest
from starlette.responses import Response as HttpResponse

from . import jsonio
from .errors import (
    FhirError,
    InvalidRequest,
    NotAcceptable,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from .interactions import Request, Response, error_response, prefer_return
from .service import FhirService

FHIR_JSON = "application/fhir+json"
JSON_TYPES = {FHIR_JSON, "application/json", "json", "application/*", "*/*", "*"}
_FORMAT_ALIASES = {"json": FHIR_JSON, "application/json": "application/json"}
_NON_JSON_FHIR = ("xml", "turtle", "ttl", "application/fhir+xml", "application/xml", "text/xml")
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
_BODY_METHODS = {"POST", "PUT", "PATCH"}
_WRITES = {"create", "update", "patch", "conditional-update", "conditional-patch"}


def build_router(service: FhirService, *, max_body_bytes: int, base_url: str | None) -> APIRouter:
    router = APIRouter()

    async def endpoint(request: HttpRequest) -> HttpResponse:
        media_type = FHIR_JSON
        pretty = False
        try:
            media_type = negotiate(request)
            pretty = request.query_params.get("_pretty") == "true"
            body = await _read_body(request, max_body_bytes)
            fhir_req = Request(
                method=request.method,
                path=request.path_params.get("path", ""),
                params=_params(request, body),
                headers={k: v for k, v in request.headers.items()},
                body=_parse_body(request, body),
                base=base_url or str(request.base_url).rstrip("/") + "/fhir",
                access=getattr(request.state, "access", None),
                actor=getattr(request.state, "actor", None),
            )
        except FhirError as err:
            request.state.route_label = "fhir:rejected"
            return _http(error_response(err), media_type, pretty, request.method, "")
        interaction, response = await run_in_threadpool(service.handle, fhir_req)
        request.state.route_label = f"fhir:{interaction}"
        wanted = prefer_return(fhir_req) if interaction in _WRITES else "representation"
        return _http(response, media_type, pretty, request.method, wanted)

    router.add_api_route("/fhir", endpoint, methods=METHODS, include_in_schema=False)
    router.add_api_route("/fhir/{path:path}", endpoint, methods=METHODS, include_in_schema=False)
    return router


def negotiate(request: HttpRequest) -> str:
    """The response media type from _format or Accept; 406 for anything but JSON."""
    fmt = request.query_params.get("_format")
    if fmt:
        kind = fmt.split(";")[0].strip().lower()
        if kind in {FHIR_JSON, "json", "application/json"}:
            return _FORMAT_ALIASES.get(kind, FHIR_JSON)
        raise NotAcceptable(f"_format {fmt[:40]} is not supported; this server speaks JSON")
    accept = request.headers.get("accept")
    if not accept:
        return FHIR_JSON
    ranges = []
    for i, part in enumerate(accept.split(",")):
        kind, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
            elif name.strip() == "fhirVersion" and value.strip() not in {"4.3", "4.3.0"}:
                q = 0.0
        ranges.append((-q, i, kind.lower()))
    for neg_q, _, kind in sorted(ranges):
        if neg_q < 0 and kind in JSON_TYPES:
            return "application/json" if kind == "application/json" else FHIR_JSON
    raise NotAcceptable("Only application/fhir+json (FHIR 4.3) is available")


async def _read_body(request: HttpRequest, limit: int) -> bytes:
    if request.method not in _BODY_METHODS:
        return b""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body exceeds {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _content_type(request: HttpRequest) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _params(request: HttpRequest, body: bytes) -> list[tuple[str, str]]:
    params = list(request.query_params.multi_items())
    if (
        request.method == "POST"
        and request.path_params.get("path", "").endswith("_search")
        and _content_type(request) == "application/x-www-form-urlencoded"
    ):
        params += parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    return params


def _parse_body(request: HttpRequest, body: bytes) -> Any:
    if request.method not in _BODY_METHODS:
        return None
    kind = _content_type(request)
    path = request.path_params.get("path", "")
    if request.method == "POST" and path.endswith("_search"):
        if kind not in {"application/x-www-form-urlencoded", ""}:
            raise UnsupportedMediaType("POST _search takes application/x-www-form-urlencoded")
        return None
    if request.method == "PATCH":
        if kind != "application/json-patch+json":
            raise UnsupportedMediaType(
                "PATCH takes application/json-patch+json (FHIRPath Patch is not supported)"
            )
    elif kind not in {FHIR_JSON, "application/json"}:
        if any(x in kind for x in ("xml", "turtle")):
            raise UnsupportedMediaType("This server reads FHIR JSON only")
        raise UnsupportedMediaType(f"Content-Type must be {FHIR_JSON}")
    if not body.strip():
        raise InvalidRequest("The request body is empty", code="required")
    try:
        return jsonio.loads(body)
    except jsonio.InvalidJson as exc:
        raise InvalidRequest(str(exc), code="structure") from None


def _http(
    response: Response, media_type: str, pretty: bool, method: str, wanted: str
) -> HttpResponse:
    headers = dict(response.headers)
    body: bytes | dict[str, Any] | None = response.body
    if not response.is_error and wanted == "minimal":
        body = None
    elif not response.is_error and wanted == "OperationOutcome":
        body = response.outcome
    if response.status in (204, 304):
        body = None
    content = b""
    if body is not None:
        if isinstance(body, bytes):
            content = jsonio.dumps(jsonio.loads(body), pretty=True) if pretty else body
        else:
            content = jsonio.dumps(body, pretty=pretty)
    if method == "HEAD":
        headers["Content-Length"] = str(len(content))
        content = b""
    if body is None and method != "HEAD":
        return HttpResponse(status_code=response.status, headers=headers)
    return HttpResponse(
        content, response.status, headers, media_type=f"{media_type}; charset=utf-8"
    )
