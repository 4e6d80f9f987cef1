"""SMART App Launch 2 scopes for Backend Services: parsing, granting, checking.

    system/Observation.rs        v2: permissions c r u d s, in that order
    system/*.cruds               v2 wildcard type
    system/Observation.read      v1: read = r s, write = c u d, * = c r u d s
    system/Observation.rs?category=laboratory   v2 with a constraint (not supported: such
                                 a scope is refused at the token endpoint, never widened)

Only `system/` scopes exist here (Backend Services); `user/` and `patient/` come with the
authorization-code flow. An `Grant` answers the FHIR layer's `Access.allows`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

V1 = {"read": "rs", "write": "cud", "*": "cruds"}
ORDER = "cruds"
_SCOPE = re.compile(r"^system/(?P<type>\*|[A-Z][A-Za-z]{1,63})\.(?P<perm>[a-z*]+)$")
AUDIT = "primage/audit.read"
IDENTITY_REGISTER = "primage/identity.register"  # a site registers its patients for linkage
IDENTITY_REVIEW = "primage/identity.review"  # a curator resolves possible matches
IDENTITY_REIDENTIFY = "primage/identity.reidentify"  # a site reads back its own local id
# An edge gateway: what it writes it pseudonymised itself (the platform's guard still checks)
GATEWAY = "primage/gateway"
# the non-SMART scopes this server knows
EXTRA = {AUDIT, IDENTITY_REGISTER, IDENTITY_REVIEW, IDENTITY_REIDENTIFY, GATEWAY}


@dataclass(frozen=True, slots=True)
class Scope:
    type: str  # a resource type or "*"
    permissions: frozenset[str]

    def covers(self, other: Scope) -> bool:
        return self.type in ("*", other.type) and other.permissions <= self.permissions


def parse(text: str) -> Scope | None:
    """A resource scope, or None for what is not one (e.g. `primage/audit.read`)."""
    match = _SCOPE.match(text)
    if match is None:
        return None
    perm = match["perm"]
    letters = V1.get(perm, perm)
    if letters != "".join(c for c in ORDER if c in letters) or not letters:
        raise ValueError(f"Invalid permissions {perm!r} (v2: a subset of cruds, in order)")
    return Scope(match["type"], frozenset(letters))


def grantable(requested: list[str], allowed: list[str]) -> list[str]:
    """The requested scopes a client registered for `allowed` may have (SMART: the server
    may grant fewer than asked). Raises ValueError for a malformed scope."""
    allowed_scopes = [s for s in (parse(a) for a in allowed) if s is not None]
    out = []
    for text in requested:
        if "?" in text:
            continue  # constrained scopes are not supported: not granted, never widened
        scope = parse(text)
        if scope is None:
            if text in allowed and text in EXTRA:
                out.append(text)
        elif any(a.covers(scope) for a in allowed_scopes):
            out.append(text)
    return out


def narrowed(requested: list[str], allowed: list[str]) -> list[str]:
    """Each requested scope cut down to what `allowed` permits (an external provider's
    system/*.cruds under an allow-list of system/*.rs becomes system/*.rs)."""
    allowed_scopes = [s for s in (parse(a) for a in allowed) if s is not None]
    out: list[str] = []
    for text in requested:
        scope = None if "?" in text else parse(text)
        if scope is None:
            if text in allowed and text in EXTRA:
                out.append(text)
            continue
        for limit in allowed_scopes:
            if limit.type not in ("*", scope.type) and scope.type != "*":
                continue
            type_ = scope.type if limit.type == "*" else limit.type
            letters = "".join(c for c in ORDER if c in scope.permissions & limit.permissions)
            if letters and f"system/{type_}.{letters}" not in out:
                out.append(f"system/{type_}.{letters}")
    return out


@dataclass(frozen=True)
class Grant:
    """The scopes of one access token, as the FHIR layer's Access."""

    scopes: tuple[str, ...]

    def __post_init__(self) -> None:
        parsed = [s for s in (parse(t) for t in self.scopes if "?" not in t) if s is not None]
        object.__setattr__(self, "_parsed", tuple(parsed))

    def allows(self, resource_type: str, permission: str) -> bool:
        if resource_type == "AuditEvent":  # the server writes them; an audit scope reads
            return permission in "rs" and AUDIT in self.scopes
        if resource_type == "*" and permission in "rs" and AUDIT not in self.scopes:
            return False  # all types at once would include AuditEvents
        for scope in self._parsed:  # type: ignore[attr-defined]
            if permission in scope.permissions and scope.type in ("*", resource_type):
                return True
        return False

    def has(self, scope: str) -> bool:
        return scope in self.scopes
