"""Profile validation: StructureDefinitions compiled from the store (`store.py`,
`profile.py`), checked against a resource's JSON (`validator.py`), served as `$validate`
(resource-operation-validate.html of R4B) and applied to writes of resources that claim a
known profile in `meta.profile`.

    POST /fhir/{type}/$validate        body: Parameters (resource, mode, profile) or the resource
    POST /fhir/{type}/{id}/$validate   the stored resource unless one is given
    GET  /fhir/{type}/{id}/$validate?profile=URL

`$validate` answers 200 with an OperationOutcome whatever it found (errors included);
a write of a resource that fails a profile it claims is refused with 422.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidRequest, Issue, Unprocessable, operation_outcome
from ..models import validate as validate_base
from ..operations import Call, Handler
from ..repository import Repository
from ..terminology import TerminologyStore
from .profile import Profile, compile_profile
from .store import Known, ProfileStore
from .validator import Validator

__all__ = ["Profile", "ProfileStore", "Profiles", "Validator", "compile_profile"]
MODES = ("create", "update", "delete", "profile")


class Profiles:
    """The server's profile checks: one ProfileStore, the shared TerminologyStore."""

    def __init__(self, terminology: TerminologyStore, store: ProfileStore | None = None) -> None:
        self.terminology = terminology
        self.store = store or ProfileStore()
        self._supported: tuple[Known | None, dict[str, list[str]]] = (None, {})

    def check(
        self, repo: Repository, resource: dict[str, Any], urls: list[str], *, strict: bool
    ) -> list[Issue]:
        """Issues of `resource` against each of `urls`; `strict`: an unknown profile is an
        error ($validate's `profile` parameter), else a warning (meta.profile)."""
        known = self.store.get(repo.conn).visible(repo.site)
        validator = Validator(known.get, self.terminology.get(repo.conn), repo.site)
        issues: list[Issue] = []
        for url in dict.fromkeys(urls):
            profile = known.get(url)
            if profile is None:
                issues.append(
                    Issue(
                        "error" if strict else "warning",
                        "not-found",
                        f"Profile {url[:200]} is not known to this server; not checked",
                        ("meta.profile",) if not strict else (),
                    )
                )
                continue
            issues += validator.validate(resource, profile)
        return issues

    def supported(self, repo: Repository) -> dict[str, list[str]]:
        """The canonical URLs of the platform's stored profiles (derivation constraint) by
        the type they constrain: the CapabilityStatement's `supportedProfile`. /metadata is
        served without a token, so a site's own profiles are never listed there."""
        known = self.store.get(repo.conn)
        if known is not self._supported[0]:  # grouped again only when the store changed
            grouped: dict[str, set[str]] = {}
            for profile in known.platform.values():
                grouped.setdefault(profile.type, set()).add(profile.url)
            self._supported = (known, {t: sorted(urls) for t, urls in grouped.items()})
        return self._supported[1]

    def check_write(self, repo: Repository, resource: dict[str, Any]) -> None:
        """Refuse (422) a resource that fails a profile it claims and this server knows.
        A resource claiming no profile costs one dict lookup."""
        claimed = _claimed(resource)
        if not claimed:
            return
        known = self.store.get(repo.conn).visible(repo.site)
        urls = [u for u in claimed if u in known]
        if not urls:
            return
        issues = self.check(repo, resource, urls, strict=True)
        errors = [i for i in issues if i.severity in ("error", "fatal")]
        if errors:
            raise Unprocessable(
                f"{resource.get('resourceType')} does not conform to {', '.join(urls)[:300]}: "
                f"{len(errors)} error(s)",
                issues=issues,
            )

    def handlers(self) -> dict[tuple[str, str], Handler]:
        return {("*", "$validate"): self.validate_operation}

    def validate_operation(self, repo: Repository, call: Call) -> dict[str, Any]:
        mode = call.inputs.text("mode")
        if mode is not None and mode not in MODES:
            raise InvalidRequest(f"mode must be one of {', '.join(MODES)}", ("mode",))
        given = call.inputs.resource("resource")
        body = given if given is not None else call.instance
        if mode == "delete":
            if call.instance is None:
                raise InvalidRequest("mode=delete needs an instance: /{type}/{id}/$validate")
            return _outcome(
                [
                    Issue(
                        "information", "informational", "No rule of this server prevents the delete"
                    )
                ]
            )
        if body is None:
            raise InvalidRequest(
                "Give the resource to validate (parameter resource or the body)", ("resource",)
            )
        issues: list[Issue] = []
        try:
            validate_base(body, call.type)
        except InvalidRequest as exc:
            issues += exc.issues or [Issue("error", exc.code, exc.diagnostics, exc.expression)]
            if body.get("resourceType") != call.type:
                return _outcome(issues)
        if mode == "update":
            if not isinstance(body.get("id"), str):
                issues.append(
                    Issue("error", "required", "An update needs the resource id", ("id",))
                )
            elif call.instance is not None and body["id"] != call.instance.get("id"):
                issues.append(
                    Issue("error", "invalid", "The id differs from the instance's", ("id",))
                )
        requested = [u for u in call.inputs.values.get("profile", []) if isinstance(u, str)]
        issues += self.check(repo, body, requested, strict=True)
        if mode != "profile":
            claimed = [u for u in _claimed(body) if u not in requested]
            issues += self.check(repo, body, claimed, strict=False)
        return _outcome(issues)


def _claimed(resource: dict[str, Any]) -> list[str]:
    meta = resource.get("meta")
    profiles = meta.get("profile") if isinstance(meta, dict) else None
    return [p for p in profiles if isinstance(p, str)] if isinstance(profiles, list) else []


def _outcome(issues: list[Issue]) -> dict[str, Any]:
    if not any(i.severity in ("error", "fatal") for i in issues):
        issues = [*issues, Issue("information", "informational", "No errors found")]
    return operation_outcome(issues)
