"""The gateway stand-alone at a hospital's edge: `primage gateway --upstream URL ...`.

It exposes the platform's write endpoints locally (FHIR create/update/delete and
transaction/batch, DICOMweb STOW-RS), runs the same pipeline the platform runs in-process,
and forwards only pseudonymised data upstream, authenticated as the site's OAuth2 client
(SMART Backend Services, private_key_jwt). Identified data never leaves the hospital;
quarantined DICOM objects stay in the edge's quarantine folder for review.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydicom import dcmwrite
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from dicomweb import instance
from dicomweb.blobs import FileBlobStore
from dicomweb.errors import DicomWebError
from dicomweb.stow import Receiver, boundary_of
from fhir_server.errors import FhirError, InvalidRequest, Issue, Unprocessable, operation_outcome
from fhir_server.interactions import Request as FhirRequest
from fhir_server.interactions import route

from .dicom_deid import Quarantined
from .dicom_gateway import DicomGateway
from .encoding import open_local_id
from .fhir_deid import FhirDeidentifier, FhirPolicy
from .fhir_gateway import FhirGateway
from .gateway import LinkageUnavailable, Pseudonyms
from .linkage.client import HttpLinkage

# What the edge's OAuth2 client asks for: writes, reads of its own (to resolve references),
# registration with the linkage service, reading its own ids back, and the edge role
SCOPE = "system/*.cruds primage/identity.register primage/identity.reidentify primage/gateway"

log = logging.getLogger("primage.edge")
FHIR_JSON = "application/fhir+json"
DICOM_JSON = "application/dicom+json"
RELAYED = ("location", "etag", "last-modified", "content-type", "warning")
BATCH = 32  # instances per upstream STOW request
WRITES = {"create", "update", "delete", "batch/transaction"}  # what the edge forwards


class _Assertion(PrivateKeyJWT):
    """SMART Backend Services: each assertion lives five minutes at most and has its own jti
    (authlib would reuse one claims dict, and with it the jti, for every token request)."""

    def sign(self, auth: Any, token_endpoint: str) -> Any:
        self.claims = {"exp": int(time.time()) + 240}
        return super().sign(auth, token_endpoint)


class Upstream:
    """The platform as the edge's one peer, with a token fetched (and renewed) on demand."""

    def __init__(self, base: str, client_id: str, key: Any, scope: str, alg: str) -> None:
        self.base = base.rstrip("/")
        token_url = httpx.get(f"{self.base}/.well-known/smart-configuration", timeout=10).json()[
            "token_endpoint"
        ]
        self._session = OAuth2Client(
            client_id=client_id,
            client_secret=key,
            token_endpoint_auth_method=_Assertion(token_url, alg=alg),
            scope=scope,
            timeout=120,
        )
        self._token_url = token_url
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            token = self._session.token
            if not token or token.is_expired(leeway=30):
                token = self._session.fetch_token(self._token_url, grant_type="client_credentials")
            return str(token["access_token"])

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**kwargs.pop("headers", {}), "Authorization": f"Bearer {self.token()}"}
        return httpx.request(method, f"{self.base}{path}", headers=headers, timeout=300, **kwargs)

    def lookup(self, site: str, type_: str, id_: str) -> dict[str, Any] | None:
        r = self.request("GET", f"/fhir/{type_}/{id_}", headers={"Accept": FHIR_JSON})
        return r.json() if r.status_code == 200 else None


def load_key(path: Path) -> tuple[Any, str]:
    """The client's private key (a JWK as JSON, or PEM) and its algorithm (RS384 / ES384)."""
    text = path.read_text()
    if text.lstrip().startswith("{"):
        jwk = json.loads(text)
        return jwk, jwk.get("alg") or ("ES384" if jwk.get("kty") == "EC" else "RS384")
    return text, "ES384" if "EC PRIVATE KEY" in text else "RS384"


def build_app(
    upstream: Upstream,
    site: str,
    key: bytes,
    spool: Path,
    quarantine: Path,
    system: str = "https://primage.eu/fhir/NamingSystem/research-pseudonym",
    site_key: bytes | None = None,
) -> FastAPI:
    """`site_key`: the hospital's own secret for its local ids (sealed so only it can read
    them back); without it they are keyed from the gateway key, which the platform holds."""
    pseudonyms = Pseudonyms(HttpLinkage(upstream.base, upstream.token), key, site_key=site_key)
    fhir = FhirGateway(
        pseudonyms, FhirDeidentifier(FhirPolicy.load(), key, system), upstream.lookup
    )
    dicom = DicomGateway(pseudonyms, key)
    blobs = FileBlobStore(spool, fsync=False)
    quarantine.mkdir(parents=True, exist_ok=True)
    app = FastAPI(title="primage edge gateway", docs_url=None, redoc_url=None)

    def fhir_write(method: str, path: str, request: FhirRequest) -> Response:
        try:
            where = route(method, path)
            if where.interaction not in WRITES:  # a POST _search: its body is the site's own
                raise Unprocessable(
                    f"The edge gateway forwards writes only, not {where.interaction}"
                )
            req = fhir.rewrite(request, where.interaction, site)
            prefer = request.header("prefer")
            sent = upstream.request(
                req.method,
                f"/fhir/{req.path}" if req.path else "/fhir",
                # no query parameters: a write needs none, and they are the site's own text
                content=orjson.dumps(req.body) if req.body is not None else None,
                headers={
                    "Content-Type": FHIR_JSON,
                    "Accept": FHIR_JSON,
                    **({"Prefer": prefer} if prefer else {}),
                },
            )
        except FhirError as err:
            return JSONResponse(err.outcome(), err.status, media_type=FHIR_JSON)
        except httpx.HTTPError as exc:
            log.error("the platform is unreachable (%s)", type(exc).__name__)
            outcome = operation_outcome(
                [Issue("error", "transient", "The platform is unreachable")]
            )
            return JSONResponse(outcome, 502, media_type=FHIR_JSON)
        return _relay(sent)

    @app.api_route("/fhir", methods=["POST"])
    @app.api_route("/fhir/{path:path}", methods=["POST", "PUT", "DELETE"])
    async def fhir_endpoint(request: Request, path: str = "") -> Response:
        raw = await request.body()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            err = InvalidRequest("The body is not valid JSON")
            return JSONResponse(err.outcome(), err.status, media_type=FHIR_JSON)
        req = FhirRequest(
            request.method,
            path,
            list(request.query_params.multi_items()),
            {k.lower(): v for k, v in request.headers.items()},
            body,
        )
        return await run_in_threadpool(fhir_write, request.method, path, req)

    @app.post("/identity/reidentify")
    async def reidentify(request: Request) -> Response:
        """A pseudonym back to this hospital's own patient id: the platform answers with the
        sealed id (and audits the call); only this gateway's site key opens it."""
        try:
            pseudonym = str(orjson.loads(await request.body())["pseudonym"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return JSONResponse({"detail": 'the body must be {"pseudonym": "..."}'}, 400)
        answer = await run_in_threadpool(
            upstream.request, "POST", "/identity/reidentify", json={"pseudonym": pseudonym}
        )
        if answer.status_code != 200:
            return _relay(answer)
        context_key = pseudonyms.context_key(site)
        local_id = open_local_id(context_key, answer.json()["sealed_local_id"])
        return JSONResponse({"pseudonym": pseudonym, "local_id": local_id})

    @app.post("/dicomweb/studies")
    async def stow(request: Request) -> Response:
        try:
            boundary, part_type = boundary_of(request.headers.get("content-type"))
            if part_type != "application/dicom":
                return JSONResponse(
                    {"error": "The edge gateway takes application/dicom parts"}, 415
                )
            receiver = Receiver(blobs, boundary)
            async for chunk in request.stream():
                receiver.feed(chunk)
            receiver.close()
        except DicomWebError as err:
            return JSONResponse({"error": err.reason}, err.status)
        parts = receiver.take()
        paths = [p.writer.path for p in parts]
        try:
            return await run_in_threadpool(_forward, upstream, dicom, site, paths, quarantine)
        finally:
            for part in parts:
                part.writer.discard()

    return app


def _relay(sent: httpx.Response) -> Response:
    headers = {k: v for k, v in sent.headers.items() if k.lower() in RELAYED}
    return Response(sent.content, sent.status_code, headers=headers)


def _forward(
    upstream: Upstream, dicom: DicomGateway, site: str, paths: list[Path], quarantine: Path
) -> Response:
    """De-identify each spooled instance and STOW what may leave, in batches; one PS3.18
    response for the whole request (the upstream's answers, plus local refusals)."""
    referenced: list[Any] = []
    failed: list[Any] = []
    batch: list[tuple[bytes, str, str]] = []  # de-identified Part 10, SOP class, SOP instance
    warnings: list[str] = []

    def send() -> None:
        """One upstream STOW; if it fails as a whole, each of its instances is reported
        failed (0xA700), so the hospital knows exactly what to send again."""
        boundary = uuid.uuid4().hex
        try:
            r = upstream.request(
                "POST",
                "/dicomweb/studies",
                content=b"".join(_multipart([body for body, _, _ in batch], boundary)),
                headers={
                    "Content-Type": f'multipart/related; type="application/dicom"; '
                    f"boundary={boundary}",
                    "Accept": DICOM_JSON,
                },
            )
            if r.status_code not in (200, 202, 409) or not r.content:
                raise DicomWebError(502, f"upstream STOW answered {r.status_code}")
            answer = r.json()
        except (httpx.HTTPError, DicomWebError, ValueError) as exc:
            log.error("upstream STOW failed (%s) for %d instances", type(exc).__name__, len(batch))
            failed.extend(_failure(c, u, 0xA700) for _, c, u in batch)
            warnings.append('299 primage-edge "the platform did not store a batch; send again"')
        else:
            referenced.extend(answer.get("00081199", {}).get("Value", []))
            failed.extend(answer.get("00081198", {}).get("Value", []))
            warnings.extend(v for k, v in r.headers.multi_items() if k.lower() == "warning")
        batch.clear()

    for path in paths:
        sop_class = sop = ""
        try:
            ds, _ = instance.read(path)
            sop_class, sop = str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", ""))
            ds = dicom.deidentify(ds, site)
        except LinkageUnavailable:  # no pseudonym, nothing sent: the hospital sends it again
            failed.append(_failure(sop_class, sop, 0xA700))
            continue
        except Quarantined as exc:
            kept = quarantine / f"{hashlib.sha256(path.read_bytes()).hexdigest()}.dcm"
            shutil.copyfile(path, kept)
            log.warning("quarantined one instance: %s", exc.reason)
            failed.append(_failure(sop_class, sop, 0x0124))
            warnings.append(f'299 primage-edge "quarantined: {exc.reason}"')
            continue
        except Exception as exc:  # not DICOM, truncated: refused here like the platform would
            log.warning("refused one part: %s", type(exc).__name__)
            failed.append(_failure("", "", 0xC000))
            continue
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        batch.append((buffer.getvalue(), sop_class, str(ds.SOPInstanceUID)))
        if len(batch) >= BATCH:
            send()
    if batch:
        send()
    document: dict[str, Any] = {}
    if referenced:
        document["00081199"] = {"vr": "SQ", "Value": referenced}
    if failed:
        document["00081198"] = {"vr": "SQ", "Value": failed}
    status = 200 if not failed else 202 if referenced else 409
    headers = [("Warning", w) for w in warnings]
    response = Response(orjson.dumps(document), status, media_type=DICOM_JSON)
    for name, value in headers:
        response.headers.append(name, value)
    return response


def _failure(sop_class: str, sop: str, reason: int) -> dict[str, Any]:
    item: dict[str, Any] = {"00081197": {"vr": "US", "Value": [reason]}}
    if sop_class:
        item["00081150"] = {"vr": "UI", "Value": [sop_class]}
    if sop:
        item["00081155"] = {"vr": "UI", "Value": [sop]}
    return item


def _multipart(bodies: list[bytes], boundary: str) -> Iterator[bytes]:
    for body in bodies:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        yield body
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()
