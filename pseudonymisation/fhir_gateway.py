"""A site's FHIR write through the gateway: the request rewritten before the FHIR layer runs it.

- Patient: registered with the linkage service; stored with the research pseudonym as its
  only identifier, dates shifted by that person's offset.
- Any other resource: de-identified with the offset of the Patient it is about (found in the
  same Bundle, or stored on the platform); a resource about no patient is not date-shifted.
- Ids the site chose (PUT, references to them) become keyed hashes; a reference to an id
  the platform already holds for the site (one it assigned on a POST) is kept.
- Writes that could not be de-identified as a whole are refused with a clear 422: PATCH
  (a patch can put a name back) and conditional writes (their search criteria are the
  site's identifiers, which the platform never sees). A site replays with PUT instead: its
  own ids map to the same platform ids every time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from fhir_server.errors import InvalidRequest, Unprocessable
from fhir_server.interactions import Request

from .fhir_deid import FhirDeidentifier, Refused
from .gateway import Patient, Pseudonyms
from .identity import Identity
from .scrub import Scrubber

PATIENT_KEYS = ("subject", "patient", "individual", "beneficiary")
REFUSED_INTERACTIONS = {
    "patch": "PATCH",
    "conditional-update": "conditional update",
    "conditional-patch": "conditional patch",
    "conditional-delete": "conditional delete",
}


def identity_of(patient: dict[str, Any]) -> Identity:
    names = patient.get("name") or []
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    identifiers = patient.get("identifier") or []
    mrn = next(
        (
            i
            for i in identifiers
            if any(c.get("code") == "MR" for c in (i.get("type") or {}).get("coding", []))
        ),
        identifiers[0] if identifiers else None,
    )
    place = next(
        (
            e.get("valueAddress", {}).get("city")
            for e in patient.get("extension") or []
            if e.get("url", "").endswith("/patient-birthPlace")
        ),
        None,
    )
    return Identity(
        given=tuple(name.get("given") or ()),
        family=(name["family"],) if name.get("family") else (),
        birth_date=patient.get("birthDate"),
        sex=patient.get("gender"),
        place_of_birth=place,
        local_id=(mrn or {}).get("value") or patient.get("id"),
    )


def _identifying_strings(patient: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for name in patient.get("name") or []:
        out += [name.get("family") or "", *(name.get("given") or []), name.get("text") or ""]
    out += [i.get("value") or "" for i in patient.get("identifier") or []]
    out += [t.get("value") or "" for t in patient.get("telecom") or []]
    for address in patient.get("address") or []:
        out += [*(address.get("line") or []), address.get("postalCode") or ""]
    return [s for s in out if s]


# (site, type, id) -> the current resource the site may see, or None: the platform's
# repository in-process, the upstream's FHIR API at a hospital's edge
Lookup = Callable[[str, str, str], dict[str, Any] | None]


class FhirGateway:
    def __init__(
        self,
        pseudonyms: Pseudonyms,
        deid: FhirDeidentifier,
        lookup: Lookup,
    ) -> None:
        self.pseudonyms = pseudonyms
        self.deid = deid
        self._lookup = lookup

    def rewrite(self, req: Request, interaction: str, site: str) -> Request:
        if interaction in REFUSED_INTERACTIONS:
            raise Unprocessable(
                f"{REFUSED_INTERACTIONS[interaction]} is not accepted through the "
                "pseudonymisation gateway: send the whole resource with PUT"
            )
        if req.header("if-none-exist"):
            raise Unprocessable(
                "Conditional create is not accepted through the pseudonymisation gateway: "
                "PUT with the site's own id is idempotent"
            )
        if interaction == "batch/transaction":
            return dataclasses.replace(req, body=self._bundle(req.body, site))
        path = self._path(req.path, site)
        body = req.body
        if interaction in ("create", "update"):
            if not isinstance(body, dict):
                raise InvalidRequest("The body must be a FHIR resource")
            body = self._resources([body], site, {})[0]
        return dataclasses.replace(req, path=path, body=body)

    def _path(self, path: str, site: str) -> str:
        parts = path.strip("/").split("/")
        if len(parts) >= 2 and parts[1]:
            parts[1] = self.deid.resource_id(site, parts[0], parts[1])
        return "/".join(parts)

    def _bundle(self, bundle: Any, site: str) -> Any:
        if not isinstance(bundle, dict) or not isinstance(bundle.get("entry"), list):
            return bundle  # the FHIR layer says what is wrong with it
        entries = [e for e in bundle["entry"] if isinstance(e, dict)]
        for i, entry in enumerate(entries):
            request = entry.get("request") or {}
            if "?" in str(request.get("url", "")) or request.get("ifNoneExist"):
                raise Unprocessable(
                    "Conditional entries are not accepted through the pseudonymisation "
                    "gateway: use PUT with the site's own ids",
                    (f"Bundle.entry[{i}].request",),
                )
            if request.get("method") == "PATCH":
                raise Unprocessable(
                    "PATCH is not accepted through the pseudonymisation gateway",
                    (f"Bundle.entry[{i}].request",),
                )
        with_resource = [e for e in entries if isinstance(e.get("resource"), dict)]
        local: dict[str, Patient] = {}  # fullUrl / Patient/id in this Bundle -> its patient
        done = self._resources([e["resource"] for e in with_resource], site, local, with_resource)
        out_entries = []
        for entry in entries:
            new = dict(entry)
            if isinstance(entry.get("resource"), dict):
                new["resource"] = done[with_resource.index(entry)]
            full_url = entry.get("fullUrl")
            if isinstance(full_url, str) and not full_url.startswith("urn:"):
                del new["fullUrl"]
            request = entry.get("request")
            if isinstance(request, dict) and isinstance(request.get("url"), str):
                new["request"] = {**request, "url": self._path(request["url"], site)}
            out_entries.append(new)
        return {**bundle, "entry": out_entries}

    def _resources(
        self,
        resources: list[dict[str, Any]],
        site: str,
        local: dict[str, Patient],
        entries: list[dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """De-identified copies, Patients first so the others find their offsets."""
        out: list[dict[str, Any] | None] = [None] * len(resources)
        scrub_words: list[str] = []
        patients: dict[int, Patient] = {}
        for i, res in enumerate(resources):
            if res.get("resourceType") != "Patient":
                continue
            identity = identity_of(res)
            if not (identity.family or identity.given) or not identity.local_id:
                raise Unprocessable(
                    "A Patient sent through the gateway needs a name and an identifier (or id) "
                    "to be pseudonymised",
                    ("Patient.name", "Patient.identifier"),
                )
            patient = self.pseudonyms.patient(site, identity)
            patients[i] = patient
            scrub_words += _identifying_strings(res)
            if res.get("id"):
                local[f"Patient/{res['id']}"] = patient
            if entries is not None and entries[i].get("fullUrl"):
                local[str(entries[i]["fullUrl"])] = patient
        scrubber = Scrubber(scrub_words)

        def known(type_: str, id_: str) -> bool:
            return self._lookup(site, type_, id_) is not None

        for i, res in enumerate(resources):
            patient = patients.get(i) or self._subject(res, site, local)
            try:
                out[i] = self.deid.deidentify(
                    res,
                    site=site,
                    offset_days=patient.offset_days if patient else None,
                    pseudonym=patient.research_pseudonym if i in patients else None,
                    scrubber=scrubber,
                    keep=known,
                )
            except Refused as exc:
                raise Unprocessable(str(exc), ("resourceType",)) from None
        return [r for r in out if r is not None]

    def _subject(self, res: dict[str, Any], site: str, local: dict[str, Patient]) -> Patient | None:
        for key in PATIENT_KEYS:
            ref = (res.get(key) or {}).get("reference") if isinstance(res.get(key), dict) else None
            if not isinstance(ref, str) or not (ref.startswith(("Patient/", "urn:"))):
                continue
            if ref in local:
                return local[ref]
            type_, _, id_ = ref.partition("/")
            stored = self._lookup(site, type_, id_) or self._lookup(
                site, type_, self.deid.resource_id(site, type_, id_)
            )
            pseudonym = _pseudonym_of(stored, self.deid.pseudonym_system) if stored else None
            if pseudonym is None:
                raise Unprocessable(
                    f"{res.get('resourceType')}.{key} refers to a Patient the platform does not "
                    "hold: send the Patient first (or in the same Bundle)",
                    (f"{res.get('resourceType')}.{key}",),
                )
            return Patient(pseudonym, self.pseudonyms.offset(pseudonym), "known")
        return None


def _pseudonym_of(resource: dict[str, Any], system: str) -> str | None:
    return next(
        (i.get("value") for i in resource.get("identifier") or [] if i.get("system") == system),
        None,
    )
