"""FHIR de-identification: one resource from a site, made fit for the platform, per the policy
in data/fhir_policy.json.

- Patient: names, telecom, address, photo, contact go; its identifiers become the one
  research pseudonym; birthDate is shifted (or cut to month / year).
- Every resource: narrative goes; dates (found by value: FHIR date, dateTime, instant) move by
  the patient's offset, the same offset the DICOM side applies; other identifiers keep their
  system but their value becomes a keyed hash; ids and relative references are mapped by a
  keyed hash of (site, type, id), so references between a site's resources keep working and
  the same resource sent again lands on the same id; Reference.display goes (it often holds
  a name); free text is scrubbed (or dropped).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from importlib import resources
from typing import Any

from .scrub import Scrubber

_DATE = re.compile(r"^(\d{4})-(\d{2})(?:-(\d{2}))?(T.*)?$")
_RELATIVE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
# Data types recognised by shape wherever they sit (an extension's value, a backbone element):
# the keys each may carry.
_HUMAN_NAME = {"id", "extension", "use", "text", "family", "given", "prefix", "suffix", "period"}
_CONTACT_POINT = {"id", "extension", "system", "value", "use", "rank", "period"}
_CONTACT_SYSTEMS = {"phone", "fax", "email", "pager", "url", "sms", "other"}
_IDENTIFIER = {"id", "extension", "use", "type", "system", "value", "period", "assigner"}
_ATTACHMENT = {
    "id",
    "extension",
    "contentType",
    "language",
    "data",
    "url",
    "size",
    "hash",
    "title",
    "creation",
}


class Refused(ValueError):
    """A resource the policy does not let onto the platform at all."""


@dataclass(frozen=True)
class FhirPolicy:
    refuse: frozenset[str]
    remove: dict[str, frozenset[str]]
    remove_extensions: frozenset[str]
    drop_keys: frozenset[str]
    dates: str  # shift | keep
    birth_date: str  # shift | month | year
    identifiers: str  # hash | drop
    free_text: str  # scrub | drop | scrub-or-drop (scrub when the names are known)
    free_text_keys: frozenset[str]
    date_exempt: frozenset[str]

    @classmethod
    def load(cls, path: str | None = None) -> FhirPolicy:
        if path is None:
            text = resources.files("pseudonymisation").joinpath("data/fhir_policy.json")
            raw = json.loads(text.read_text())
        else:
            with open(path) as f:
                raw = json.load(f)
        policy = cls(
            refuse=frozenset(raw["refuse"]),
            remove={k: frozenset(v) for k, v in raw["remove"].items()},
            remove_extensions=frozenset(raw["remove_extensions"]),
            drop_keys=frozenset(raw["drop_keys"]),
            dates=raw["dates"],
            birth_date=raw["birth_date"],
            identifiers=raw["identifiers"],
            free_text=raw["free_text"],
            free_text_keys=frozenset(raw["free_text_keys"]),
            date_exempt=frozenset(raw["date_exempt"]),
        )
        for name, value, allowed in [
            ("dates", policy.dates, {"shift", "keep"}),
            ("birth_date", policy.birth_date, {"shift", "month", "year"}),
            ("identifiers", policy.identifiers, {"hash", "drop"}),
            ("free_text", policy.free_text, {"scrub", "drop", "scrub-or-drop"}),
        ]:
            if value not in allowed:
                raise ValueError(f"FHIR policy: {name} must be one of {sorted(allowed)}")
        return policy


def shift_date(value: str, days: int) -> str:
    """A FHIR date/dateTime/instant moved by `days`, keeping its precision, time and zone."""
    match = _DATE.match(value)
    if match is None:
        return value
    year, month, day, rest = match.groups()
    try:
        moved = date(int(year), int(month), int(day or 1)) + timedelta(days=days)
    except (ValueError, OverflowError):  # 2021-02-30, 2021-13: no date to move, nor to keep
        raise Refused("A value shaped like a date is not a valid date") from None
    if day is None:
        return f"{moved:%Y-%m}"
    return f"{moved:%Y-%m-%d}{rest or ''}"


def shift_dates(node: Any, days: int, exempt: frozenset[str], key: str = "") -> Any:
    """`node` (a stored, de-identified resource) with every date moved by `days`."""
    if isinstance(node, dict):
        return {k: shift_dates(v, days, exempt, k) for k, v in node.items()}
    if isinstance(node, list):
        return [shift_dates(v, days, exempt, key) for v in node]
    if isinstance(node, str) and key not in exempt and _DATE.match(node):
        return shift_date(node, days)
    return node


class FhirDeidentifier:
    def __init__(self, policy: FhirPolicy, key: bytes, pseudonym_system: str) -> None:
        self.policy = policy
        self._key = key
        self.pseudonym_system = pseudonym_system

    def resource_id(self, site: str, type_: str, id_: str) -> str:
        """The platform id of a site's resource: stable, and says nothing of the local id."""
        digest = hmac.new(self._key, f"id|{site}|{type_}|{id_}".encode(), hashlib.sha256)
        return base64.b32encode(digest.digest()[:20]).decode().lower()

    def identifier_value(self, site: str, system: str | None, value: str) -> str:
        digest = hmac.new(self._key, f"identifier|{site}|{system}|{value}".encode(), "sha256")
        return base64.b32encode(digest.digest()[:20]).decode().lower()

    def contained_id(self, site: str, id_: str) -> str:
        """A contained resource's id (and the #id references to it), keyed like the others."""
        return self.resource_id(site, "#", id_)

    def reference(
        self, site: str, ref: str, keep: Callable[[str, str], bool] | None = None
    ) -> str | None:
        """A relative reference mapped like the ids (unless `keep` says it names a platform
        id already); a contained (#id) one mapped like the contained id; urn: references as
        they are (a Bundle's own); an absolute URL points outside the platform and is
        dropped."""
        if ref == "#" or ref.startswith(("urn:uuid:", "urn:oid:")):
            return ref
        if ref.startswith("#"):
            return f"#{self.contained_id(site, ref[1:])}"
        match = _RELATIVE.match(ref)
        if match is None:
            return None
        type_, id_ = match.groups()
        if keep is not None and keep(type_, id_):
            return f"{type_}/{id_}"
        return f"{type_}/{self.resource_id(site, type_, id_)}"

    def deidentify(
        self,
        resource: dict[str, Any],
        *,
        site: str,
        offset_days: int | None,
        pseudonym: str | None = None,
        scrubber: Scrubber | None = None,
        keep: Callable[[str, str], bool] | None = None,
    ) -> dict[str, Any]:
        """A de-identified copy of `resource` (the input is left as it was). `keep(type, id)`
        says a relative reference already names a platform id (one the server assigned)."""
        type_ = resource.get("resourceType", "")
        walker = _Walker(self, site, offset_days, scrubber or Scrubber(), keep)
        out = walker.resource(resource)
        if type_ == "Patient":
            out["identifier"] = (
                [{"system": self.pseudonym_system, "value": pseudonym}] if pseudonym else []
            )
            if not out["identifier"]:
                del out["identifier"]
            if "birthDate" in resource:
                out["birthDate"] = self._birth_date(resource["birthDate"], offset_days)
        return out

    def _birth_date(self, value: str, offset_days: int | None) -> str:
        if offset_days is not None and self.policy.dates == "shift":
            value = shift_date(value, offset_days)
        if self.policy.birth_date == "month":
            return value[:7]
        if self.policy.birth_date == "year":
            return value[:4]
        return value


class _Walker:
    def __init__(
        self,
        deid: FhirDeidentifier,
        site: str,
        offset: int | None,
        scrub: Scrubber,
        keep: Callable[[str, str], bool] | None,
    ) -> None:
        self.deid = deid
        self.keep = keep
        self.policy = deid.policy
        self.site = site
        self.offset = offset if self.policy.dates == "shift" else None
        self.scrub = scrub

    def resource(
        self, res: dict[str, Any], *, nested: bool = False, contained: bool = False
    ) -> dict[str, Any]:
        """The resource sent, or one inside it (contained, a Parameters' resource)."""
        type_ = res.get("resourceType", "")
        if type_ in self.policy.refuse:
            raise Refused(f"{type_} resources are not accepted, contained in another or not")
        if (nested or contained) and type_ == "Patient":  # no pseudonym, no offset of its own
            raise Refused(
                "A Patient inside another resource cannot be pseudonymised: send it on its own"
            )
        gone = self.policy.remove.get("*", frozenset()) | self.policy.remove.get(type_, frozenset())
        out: dict[str, Any] = {}
        for key, value in res.items():
            if key in gone:
                continue
            if key == "id" and isinstance(value, str):
                out[key] = (
                    self.deid.contained_id(self.site, value)
                    if contained
                    else self.deid.resource_id(self.site, type_, value)
                )
            elif key == "meta" and isinstance(value, dict):
                meta = {k: v for k, v in value.items() if k not in ("versionId", "lastUpdated")}
                if meta:
                    out[key] = meta
            elif key == "contained" and isinstance(value, list):
                kept = [
                    self.resource(c, nested=True, contained=True)
                    for c in value
                    if isinstance(c, dict)
                ]
                if kept:
                    out[key] = kept
            else:
                kept = self.value(key, value, free=False)
                if kept is not None:
                    out[key] = kept
        return out

    def value(self, key: str, value: Any, *, free: bool) -> Any:
        if key in self.policy.drop_keys:
            return None
        free = free or key in self.policy.free_text_keys
        if isinstance(value, dict):
            return self.element(key, value, free)
        if isinstance(value, list):
            items = [self.value(key, v, free=free) for v in value]
            kept = [v for v in items if v is not None]
            return kept or None
        if isinstance(value, str):
            return self.text(key, value, free)
        return value

    def element(self, key: str, value: dict[str, Any], free: bool) -> Any:
        if key in ("extension", "modifierExtension"):
            if value.get("url") in self.policy.remove_extensions:
                return None
            kept = self.fields(value, free)
            # an extension whose value went (a name, an address) goes with it
            return kept if kept and set(kept) - {"url", "id"} else None
        if "resourceType" in value:  # a resource inside this one: Parameters.parameter.resource
            return self.resource(value, nested=True)
        if key == "text" and "div" in value:  # narrative, wherever it sits
            return None
        shape = set(value)
        if key == "name" and shape <= _HUMAN_NAME:  # a person's name, wherever it sits
            return None
        if shape <= _CONTACT_POINT and value.get("system") in _CONTACT_SYSTEMS:
            return None  # a phone number, an e-mail address
        if key == "identifier" or key.endswith("Identifier"):
            return self.identifier(value)
        if isinstance(value.get("value"), str) and shape <= _IDENTIFIER:
            return self.identifier(value)  # an Identifier by any name (requisition...)
        if "reference" in value or ("display" in value and _looks_like_reference(value)):
            return self.reference(value)
        if shape <= _ATTACHMENT and ("data" in value or "url" in value):
            return self.attachment(value, free)
        return self.fields(value, free)

    def fields(self, value: dict[str, Any], free: bool) -> dict[str, Any] | None:
        out = {}
        for k, v in value.items():
            kept = self.value(k, v, free=free)
            if kept is not None:
                out[k] = kept
        return out or None

    def attachment(self, value: dict[str, Any], free: bool) -> dict[str, Any] | None:
        """An attachment's content cannot be scrubbed, and its URL and hash point at it:
        only what describes it stays (type, size, the title as free text, a shifted date)."""
        out = {}
        for k, v in value.items():
            if k in ("data", "url", "hash"):
                continue
            kept = self.value(k, v, free=free or k == "title")
            if kept is not None:
                out[k] = kept
        return out or None

    def identifier(self, ident: dict[str, Any]) -> dict[str, Any] | None:
        if self.policy.identifiers == "drop" or "value" not in ident:
            return None
        out = {k: v for k, v in ident.items() if k in ("use", "type", "system")}
        out["value"] = self.deid.identifier_value(self.site, ident.get("system"), ident["value"])
        return out

    def reference(self, ref: dict[str, Any]) -> dict[str, Any] | None:
        out = {k: v for k, v in ref.items() if k == "type"}
        if isinstance(ref.get("reference"), str):
            mapped = self.deid.reference(self.site, ref["reference"], self.keep)
            if mapped is not None:
                out["reference"] = mapped
        if isinstance(ref.get("identifier"), dict):
            ident = self.identifier(ref["identifier"])
            if ident is not None:
                out["identifier"] = ident
        return out if ("reference" in out or "identifier" in out) else None

    def text(self, key: str, value: str, free: bool) -> str | None:
        if key not in self.policy.date_exempt and _DATE.match(value):  # a date, not text
            return shift_date(value, self.offset) if self.offset is not None else value
        if free:
            mode = self.policy.free_text
            if mode == "drop" or (mode == "scrub-or-drop" and not self.scrub.knows_names):
                return None
            return self.scrub.clean(value)
        return value


def _looks_like_reference(value: dict[str, Any]) -> bool:
    """A Reference with only a display (no reference) still carries a name: treat it as one."""
    return set(value) <= {"display", "type", "identifier", "extension", "id"}
