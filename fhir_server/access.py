"""Who may do what: the FHIR layer's view of an authorised caller.

The FHIR layer knows interactions and resource types, not tokens: the HTTP layer puts an
`Access` on each Request, and `Interactions.run` asks it before running anything (so a
Bundle entry is checked exactly like the same request on its own). No Access means the
server runs without authorisation (tests, a trusted local deployment).
"""

from __future__ import annotations

from typing import Protocol

from .errors import FhirError

# SMART v2 permission letters per interaction (create, read, update, delete, search); all
# of an interaction's letters are needed: a patch answers with the whole resource (r), a
# conditional interaction searches (s).
PERMISSION = {
    "read": "r",
    "vread": "r",
    "history-instance": "r",
    "search-type": "s",
    "history-type": "s",
    "search-system": "s",
    "history-system": "s",
    "create": "c",
    "update": "u",
    "patch": "ur",
    "delete": "d",
    "conditional-update": "us",
    "conditional-patch": "urs",
    "conditional-delete": "ds",
    # the terminology operations read the resource they name and search its type
    "operation": "rs",
}
PUBLIC = {"capabilities", "batch/transaction"}  # a Bundle's entries are checked one by one
READS = {i for i, letters in PERMISSION.items() if set(letters) <= {"r", "s"}} | PUBLIC
# Types a site client may read but never write: search behaviour and the archive's own
# resources are the platform's (a site's SearchParameter would change every site's search).
PLATFORM_TYPES = {"SearchParameter", "Endpoint", "ImagingStudy"}


class Forbidden(FhirError):
    status = 403
    code = "forbidden"


class Access(Protocol):
    def allows(self, resource_type: str, permission: str) -> bool:
        """May the caller use `permission` (one of c r u d s) on `resource_type`?
        "*" as the type asks about every type at once (system-level interactions)."""
        ...


def check_platform(resource_type: str | None) -> None:
    """For a site client's write: refuse the platform's types."""
    if resource_type in PLATFORM_TYPES:
        raise Forbidden(f"{resource_type} resources are written by the platform, not by a site")


def check(access: Access | None, interaction: str, types: list[str] | None) -> None:
    """Raise Forbidden unless `access` permits `interaction` on every one of `types`
    (None: the interaction spans all types)."""
    if access is None or interaction in PUBLIC:
        return
    letters = PERMISSION.get(interaction)
    if letters is None:
        raise Forbidden(f"No scope grants {interaction}")
    for type_ in types or ["*"]:
        if not all(access.allows(type_, letter) for letter in letters):
            raise Forbidden(f"The token's scopes do not allow {interaction} on {type_}")


def may_see(caller: str | None, owner: str | None) -> bool:
    """Site isolation in one rule: a caller without a site sees everything, a site sees
    its own data and the platform's (owner None)."""
    return caller is None or owner is None or owner == caller
