"""HTTP routes of the linkage service, under /identity, with their scope checks.

With OAuth on, `request.state.principal` carries the caller's scopes and site: a site
registers under its own site only, and re-identifies its own registrations only. With
auth off (no principal) the context must be given in the body. Errors are JSON
`{"detail": ...}` with 400 (malformed), 403 (scope or site), 404, 409 (already resolved).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, TypeVar

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from primage.auth.scopes import IDENTITY_REGISTER, IDENTITY_REIDENTIFY, IDENTITY_REVIEW
from pseudonymisation.encoding import Encoding
from pseudonymisation.linkage.service import Conflict, Forbidden, LinkageService, NotFound

M = TypeVar("M", bound=BaseModel)


class RegistrationIn(BaseModel):
    context: str | None = None
    local_token: str
    sealed_local_id: str
    encoding: dict[str, Any]


class ResolutionIn(BaseModel):
    decision: str


class ReidentifyIn(BaseModel):
    context: str | None = None
    pseudonym: str


def build_router(service: LinkageService) -> APIRouter:
    router = APIRouter(prefix="/identity", tags=["identity"])

    @router.post("/registrations")
    async def register(request: Request) -> dict:
        _scoped(request, IDENTITY_REGISTER)  # before the body: no scope, no parsing
        body = await _body(request, RegistrationIn)
        context = _context(request, IDENTITY_REGISTER, body.context)
        try:
            encoding = Encoding.from_json(body.encoding)
        except (ValueError, KeyError, TypeError) as exc:
            raise HTTPException(400, f"invalid encoding: {exc}") from exc
        result = await run_in_threadpool(
            service.register, context, body.local_token, body.sealed_local_id, encoding
        )
        return asdict(result)

    @router.get("/reviews")
    def reviews(request: Request, status: str = "open", after: int = 0, limit: int = 100) -> dict:
        _scoped(request, IDENTITY_REVIEW)
        items = service.reviews(status, after, max(1, min(limit, 1000)))
        return {"reviews": [asdict(item) for item in items]}

    @router.post("/reviews/{review_id}")
    async def resolve(review_id: int, request: Request) -> dict:
        principal = _scoped(request, IDENTITY_REVIEW)
        body = await _body(request, ResolutionIn)
        by = principal.client_id if principal is not None else "anonymous"
        try:
            return asdict(await run_in_threadpool(service.resolve, review_id, body.decision, by))
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except Conflict as exc:
            raise HTTPException(409, str(exc)) from exc

    @router.post("/reidentify")
    async def reidentify(request: Request) -> dict:
        _scoped(request, IDENTITY_REIDENTIFY)
        body = await _body(request, ReidentifyIn)
        context = _context(request, IDENTITY_REIDENTIFY, body.context)
        principal = getattr(request.state, "principal", None)
        actor = principal.client_id if principal is not None else "anonymous"
        try:
            sealed = await run_in_threadpool(service.reidentify, context, body.pseudonym, actor)
        except Forbidden as exc:
            raise HTTPException(403, str(exc)) from exc
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        return {"sealed_local_id": sealed}

    @router.get("/changes")
    def changes(request: Request, since: int = 0, limit: int = 1000) -> dict:
        _scoped(request, IDENTITY_REVIEW)
        items = service.changes(since, max(1, min(limit, 10_000)))
        return {"changes": [asdict(c) for c in items], "last": items[-1].seq if items else since}

    return router


async def _body(request: Request, model: type[M]) -> M:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise HTTPException(400, f"invalid request body: {errors}") from exc


def _scoped(request: Request, *scopes: str) -> Any:
    """The principal (None with auth off), if it holds one of `scopes`; else 403."""
    principal = getattr(request.state, "principal", None)
    if principal is not None and not any(s in principal.scopes for s in scopes):
        raise HTTPException(403, f"requires scope {' or '.join(scopes)}")
    return principal


def _context(request: Request, scope: str, given: str | None) -> str:
    """The caller's context: its site with auth on (a body context must match), the body's
    context with auth off."""
    principal = _scoped(request, scope)
    if principal is None:
        if not given:
            raise HTTPException(400, "context is required")
        return given
    if not principal.site:
        raise HTTPException(403, "only a client bound to a site can do this")
    if given and given != principal.site:
        raise HTTPException(403, f"context {given!r} is not this client's site")
    return principal.site
