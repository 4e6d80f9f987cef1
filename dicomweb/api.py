"""The DICOMweb HTTP surface under /dicomweb: PS3.18 paths, negotiation and error responses."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from . import negotiation, qido, wado
from .errors import DicomWebError, Forbidden, NotAcceptable
from .instance import frames
from .service import Archive, StoreResult

DICOM_JSON = "application/dicom+json"
STUDY = "/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{instance}"
KEYS = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID"}


def _warning(text: str) -> str:
    """A Warning header value (RFC 7234 5.5) as PS3.18 8.6.4 uses it: 299 + quoted text."""
    text = text.replace('"', "'").replace("\r", " ").replace("\n", " ")
    # header values are Latin-1 on the wire: anything else is escaped, never a 500
    return '299 primage "{}"'.format(text.encode("ascii", "backslashreplace").decode())


def error_response(exc: DicomWebError) -> Response:
    return Response(
        exc.reason + "\n",
        exc.status,
        media_type="text/plain",
        headers={"Warning": _warning(exc.reason)},
    )


# DICOMweb maps to ImagingStudy scopes (SMART v2 letters).
SEARCH, READ, CREATE, DELETE = "s", "r", "c", "d"


def _require(request: Request, permission: str) -> None:
    """403 unless the caller's token allows `permission` on ImagingStudy (no Access on the
    request: the server runs without authorisation)."""
    access = getattr(request.state, "access", None)
    if access is not None and not access.allows("ImagingStudy", permission):
        raise Forbidden(f"The token's scopes do not allow this on ImagingStudy ({permission})")


def _base(request: Request, configured: str | None) -> str:
    return configured.rstrip("/") if configured else str(request.base_url).rstrip("/") + "/dicomweb"


def _json_accepted(request: Request) -> None:
    for item in negotiation.parse_accept(request.headers.get("accept")):
        if not item.multipart and any(
            negotiation.covers(item.media, m) for m in (DICOM_JSON, "application/json")
        ):
            return
    raise NotAcceptable("Acceptable: application/dicom+json")


def _json(document: Any, headers: dict[str, str] | None = None, status: int = 200) -> Response:
    return Response(orjson.dumps(document), status, headers=headers, media_type=DICOM_JSON)


def build_router(archive: Archive, base_url: str | None = None) -> APIRouter:
    router = APIRouter(prefix="/dicomweb", tags=["DICOMweb"])

    def audited(service: str, handler: Any) -> Any:
        """Records a queued AuditEvent for a read (QIDO or WADO), failures included."""

        async def wrapper(request: Request) -> Response:
            actor = _actor(request)
            study = request.path_params.get("study")
            studies = [study] if study else []
            query = str(request.query_params) if service == "qido" else None
            # A site behind the gateway may type identifying values (a name, an original UID):
            # those stay out of the trail, which is data at rest.
            masked = archive.gateway is not None and actor is not None and bool(actor.site)
            if masked and query is not None:
                query = urlencode([(k, "***") for k, _ in request.query_params.multi_items()])
            try:
                response = await handler(request)
            except DicomWebError as err:
                archive.record(None, actor, service, err.status, [] if masked else studies, query)
                raise
            archive.record(None, actor, service, response.status_code, studies, query)
            return response

        return wrapper

    # --- STOW-RS ---------------------------------------------------------------------------

    def refusals_audited(service: str, handler: Any) -> Any:
        """For writes, whose successes are audited in their own transaction: record the
        refusals (403, 400, 413, 404...) too."""

        async def wrapper(request: Request) -> Response:
            try:
                return await handler(request)
            except DicomWebError as err:
                actor = _actor(request)
                study = request.path_params.get("study")
                # a site's STOW names the study by its original UID: not for the trail
                masked = archive.gateway is not None and actor is not None and bool(actor.site)
                studies = [study] if study and not masked else []
                archive.record(None, actor, service, err.status, studies)
                raise

        return wrapper

    async def stow(request: Request) -> Response:
        _require(request, CREATE)
        _json_accepted(request)
        study = request.path_params.get("study")
        base = _base(request, base_url)
        result = await archive.store(
            request.stream(), request.headers.get("content-type"), study, base, _actor(request)
        )
        reasons = [
            _warning(f"part {n}: {o.failure.reason}")
            for n, o in enumerate(result.outcomes, 1)
            if o.failure is not None
        ][:20]
        headers = {"Warning": ", ".join(reasons)} if reasons else None
        return _json(_stow_response(result, base), headers, status=result.status)

    router.add_api_route("/studies", refusals_audited("stow", stow), methods=["POST"])
    router.add_api_route(STUDY, refusals_audited("stow", stow), methods=["POST"])

    # --- QIDO-RS ---------------------------------------------------------------------------

    def search(level: qido.Level) -> Any:
        async def handler(request: Request) -> Response:
            _require(request, SEARCH)
            _json_accepted(request)
            path = request.path_params
            where = {KEYS[k]: v for k, v in path.items() if k in KEYS}
            found, warnings = await run_in_threadpool(
                archive.search, level, request.query_params.multi_items(), where, _site(request)
            )
            base = _base(request, base_url)
            for document in found:
                document["00081190"] = {"vr": "UR", "Value": [_retrieve_url(base, level, document)]}
            headers = {"Warning": ", ".join(map(_warning, warnings))} if warnings else None
            if not found:  # PS3.18 10.6.3: a search without matches is 204 No Content
                return Response(status_code=204, headers=headers)
            return _json(found, headers)

        return handler

    for path, level in (
        ("/studies", "study"),
        ("/series", "series"),
        ("/instances", "instance"),
        (STUDY + "/series", "series"),
        (STUDY + "/instances", "instance"),
        (SERIES + "/instances", "instance"),
    ):
        router.add_api_route(path, audited("qido", search(level)), methods=["GET"])

    # --- WADO-RS: instances ----------------------------------------------------------------

    async def retrieve(request: Request) -> Response:
        _require(request, READ)
        accept = negotiation.parse_accept(request.headers.get("accept"))
        rows = await run_in_threadpool(archive.rows, *_uids(request), _site(request))
        syntax = negotiation.instance_syntax(accept, {r.transfer_syntax for r in rows})
        mark = wado.boundary()
        return StreamingResponse(
            wado.multipart(wado.instance_parts(archive.blobs, rows, syntax), mark),
            media_type=f'multipart/related; type="application/dicom"; boundary={mark}',
        )

    for path in (STUDY, SERIES, INSTANCE):
        router.add_api_route(path, audited("wado", retrieve), methods=["GET"])

    async def metadata(request: Request) -> Response:
        _require(request, READ)
        _json_accepted(request)
        documents = await run_in_threadpool(archive.metadata, *_uids(request), _site(request))
        body = wado.metadata_body(documents, _base(request, base_url))
        return Response(body, media_type=DICOM_JSON)

    for path in (STUDY, SERIES, INSTANCE):
        router.add_api_route(path + "/metadata", audited("wado", metadata), methods=["GET"])

    # --- WADO-RS: frames, bulk data, rendered ----------------------------------------------

    async def instance_dataset(request: Request) -> tuple[Any, Any]:
        rows = await run_in_threadpool(archive.rows, *_uids(request), _site(request))
        dataset = await run_in_threadpool(wado.load, archive.blobs, rows[0].blob)
        return rows[0], dataset

    async def frame_list(request: Request, numbers: str | None = None) -> Response:
        _require(request, READ)
        accept = negotiation.parse_accept(request.headers.get("accept"))
        wanted = numbers or request.path_params["numbers"]
        media, part_type, data = await run_in_threadpool(
            archive.frames, *_uids(request), wanted, accept, _site(request)
        )
        mark = wado.boundary()
        body = b"".join(wado.multipart([(part_type, [d]) for d in data], mark, batch=1 << 62))
        return Response(body, media_type=f'multipart/related; type="{media}"; boundary={mark}')

    router.add_api_route(
        INSTANCE + "/frames/{numbers}", audited("wado", frame_list), methods=["GET"]
    )

    async def bulkdata(request: Request) -> Response:
        _require(request, READ)
        tag = request.path_params["tag"]
        if tag.upper() == "7FE00010":  # pixel data: every frame, as the frames resource
            return await frame_list(request, "all")
        _, dataset = await instance_dataset(request)
        data = wado.bulk_value(dataset, tag)
        mark = wado.boundary()
        body = b"".join(wado.multipart([("application/octet-stream", [data])], mark))
        return Response(
            body, media_type=f'multipart/related; type="application/octet-stream"; boundary={mark}'
        )

    router.add_api_route(INSTANCE + "/bulkdata/{tag}", audited("wado", bulkdata), methods=["GET"])

    async def rendered(request: Request) -> Response:
        return await _render(request, thumbnail=False)

    async def thumbnail(request: Request) -> Response:
        return await _render(request, thumbnail=True)

    async def _render(request: Request, *, thumbnail: bool) -> Response:
        """One frame as an image; a multi-frame instance renders its first frame (its middle
        one as a thumbnail), and a study's or series' thumbnail is its middle instance's."""
        _require(request, READ)
        media = negotiation.rendered_media(negotiation.parse_accept(request.headers.get("accept")))
        rows = await run_in_threadpool(archive.rows, *_uids(request), _site(request))
        row = rows[len(rows) // 2]
        dataset = await run_in_threadpool(wado.load, archive.blobs, row.blob)
        count = frames(dataset)
        numbers = request.path_params.get("numbers")
        if numbers:
            number = wado.frame_numbers(numbers, count)[0]
        else:
            number = (count + 1) // 2 if thumbnail else 1
        params = request.query_params
        viewport = params.get("viewport") or ("128,128" if thumbnail else None)
        image = await run_in_threadpool(
            lambda: wado.render(
                dataset,
                number,
                media,
                window=params.get("window"),
                viewport=viewport,
                quality=params.get("quality"),
            )
        )
        return Response(image, media_type=media)

    for path in (INSTANCE + "/rendered", INSTANCE + "/frames/{numbers}/rendered"):
        router.add_api_route(path, audited("wado", rendered), methods=["GET"])
    for path in (STUDY, SERIES, INSTANCE, INSTANCE + "/frames/{numbers}"):
        router.add_api_route(path + "/thumbnail", audited("wado", thumbnail), methods=["GET"])

    # --- delete ----------------------------------------------------------------------------

    async def remove(request: Request) -> Response:
        _require(request, DELETE)
        base = _base(request, base_url)
        await run_in_threadpool(archive.delete, *_uids(request), base, _actor(request))
        return Response(status_code=204)

    for path in (STUDY, SERIES, INSTANCE):
        router.add_api_route(path, refusals_audited("delete", remove), methods=["DELETE"])
    return router


def _actor(request: Request) -> Any:
    return getattr(request.state, "actor", None)


def _site(request: Request) -> str | None:
    actor = _actor(request)
    return actor.site if actor is not None else None


def _uids(request: Request) -> tuple[str, str | None, str | None]:
    path = request.path_params
    return path["study"], path.get("series"), path.get("instance")


def _retrieve_url(base: str, level: str, document: dict[str, Any]) -> str:
    def uid(tag: str) -> str:
        return document[tag]["Value"][0]

    url = f"{base}/studies/{uid('0020000D')}"
    if level in ("series", "instance"):
        url += f"/series/{uid('0020000E')}"
    if level == "instance":
        url += f"/instances/{uid('00080018')}"
    return url


def _stow_response(result: StoreResult, base: str) -> dict[str, Any]:
    """The Store Instances Response Module (PS3.18 Table 10.5.3-1) as DICOM JSON."""
    referenced, failed = [], []
    studies = set()
    for outcome in result.outcomes:
        item: dict[str, Any] = {}
        if outcome.sop_class_uid:
            item["00081150"] = {"vr": "UI", "Value": [outcome.sop_class_uid]}
        if outcome.sop_uid:
            item["00081155"] = {"vr": "UI", "Value": [outcome.sop_uid]}
        if outcome.failure is not None:
            item["00081197"] = {"vr": "US", "Value": [outcome.failure.code]}
            failed.append(item)
        elif outcome.prepared is not None:
            p = outcome.prepared
            studies.add(p.study_uid)
            url = f"{base}/studies/{p.study_uid}/series/{p.series_uid}/instances/{p.sop_uid}"
            item["00081190"] = {"vr": "UR", "Value": [url]}
            referenced.append(item)
    document: dict[str, Any] = {}
    if len(studies) == 1:
        document["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{studies.pop()}"]}
    if failed:
        document["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        document["00081199"] = {"vr": "SQ", "Value": referenced}
    return document
