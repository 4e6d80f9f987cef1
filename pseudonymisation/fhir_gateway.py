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
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from fhir_server.errors import InvalidRequest, Unavailable, Unprocessable
from fhir_server.interactions import Request

from .fhir_deid import FhirDeidentifier, Refused
from .gateway import LinkageUnavailable, Patient, Pseudonyms
from .identity import Identity
from .scrub import Scrubber

PATIENT_KEYS = ("subject", "patient", "individual", "beneficiary")
# The ids the platform gives a site's resources: its own (a UUID, on a POST) or the gateway's
# keyed hash of the site's id. Only ids of these shapes are looked up as they are: any other
# id is the site's own, and must not leave the gateway (an edge's lookups are HTTP requests).
PLATFORM_ID = re.compile(
    r"^(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[a-z2-7]{32})$"
)
_ABSOLUTE_PATIENT = re.compile(r"^[a-z][a-z0-9+.-]*://.*/Patient/[^/]+(?:/_history/[^/]+)?$")
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
        entries = _aliased(entries)
        with_resource = [e for e in entries if isinstance(e.get("resource"), dict)]
        local: dict[str, Patient] = {}  # fullUrl / Patient/id in this Bundle -> its patient
        done = iter(
            self._resources([e["resource"] for e in with_resource], site, local, with_resource)
        )
        out_entries = []
        for entry in entries:
            new = dict(entry)
            if isinstance(entry.get("resource"), dict):
                new["resource"] = next(done)  # in the order of with_resource
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
            try:
                patient = self.pseudonyms.patient(site, identity)
            except LinkageUnavailable as exc:
                raise Unavailable(str(exc), retry_after=5) from None
            patients[i] = patient
            scrub_words += _identifying_strings(res)
            if res.get("id"):
                local[f"Patient/{res['id']}"] = patient
            if entries is not None and entries[i].get("fullUrl"):
                local[str(entries[i]["fullUrl"])] = patient
        scrubber = Scrubber(scrub_words)

        def known(type_: str, id_: str) -> bool:
            return PLATFORM_ID.match(id_) is not None and self._lookup(site, type_, id_) is not None

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
        """The patient `res` is about, whose offset its dates move by: by its subject (patient,
        individual, beneficiary), else by the one Patient it refers to anywhere. Refused when
        it is about a patient the gateway cannot place, rather than stored with true dates."""
        type_ = res.get("resourceType")
        for key in PATIENT_KEYS:
            value = res.get(key)
            if not isinstance(value, dict):
                continue
            ref = value.get("reference")
            where = f"{type_}.{key}"
            if not isinstance(ref, str):
                if value.get("identifier") is not None and value.get("type") in (None, "Patient"):
                    raise Unprocessable(
                        f"{where} names its Patient by identifier only: refer to the Patient "
                        "(Patient/id, or its fullUrl in the same Bundle)",
                        (where,),
                    )
                continue
            if ref in local or ref.startswith(("Patient/", "urn:")) or _ABSOLUTE_PATIENT.match(ref):
                return self._patient(ref, site, local, where)
        refs = sorted(
            {r for r in _references(res) if r in local or r.startswith("Patient/")}
            | {r for r in _references(res) if _ABSOLUTE_PATIENT.match(r)}
        )
        if not refs:
            return None
        found = {self._patient(r, site, local, str(type_)) for r in refs}
        if len(found) > 1:
            raise Unprocessable(
                f"{type_} refers to more than one Patient: whose dates would it carry?",
                (str(type_),),
            )
        return found.pop()

    def _patient(self, ref: str, site: str, local: dict[str, Patient], where: str) -> Patient:
        if ref in local:
            return local[ref]
        type_, _, id_ = ref.partition("/")
        if type_ != "Patient" or not id_:  # an outside URL, a urn: no entry of the Bundle has
            raise Unprocessable(
                f"{where} refers to a Patient the gateway cannot place: use Patient/id, or the "
                "fullUrl of a Patient in the same Bundle",
                (where,),
            )
        id_ = id_.split("/", 1)[0]
        stored = self._lookup(site, type_, self.deid.resource_id(site, type_, id_))
        if stored is None and PLATFORM_ID.match(id_):  # an id the platform gave the site
            stored = self._lookup(site, type_, id_)
        pseudonym = _pseudonym_of(stored, self.deid.pseudonym_system) if stored else None
        if pseudonym is None:
            raise Unprocessable(
                f"{where} refers to a Patient the platform does not hold: send the Patient "
                "first (or in the same Bundle)",
                (where,),
            )
        return Patient(pseudonym, self.pseudonyms.offset(pseudonym), "known")


def _references(node: Any) -> Iterator[str]:
    """Every Reference.reference in `node`, contained resources aside (they are refused if a
    Patient, and their own references are the container's)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            elif key != "contained":
                yield from _references(value)
    elif isinstance(node, list):
        for value in node:
            yield from _references(value)


def _aliased(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A Bundle whose entries use absolute fullUrls (http://ehr/fhir/Patient/1, the usual
    export) with references to them, made one that uses urn:uuid: fullUrls: the absolute
    URL would point at the site and be dropped, and the entries would lose their links and
    their patient's date offset. A relative Type/id naming such an entry goes the same way."""
    aliases: dict[str, str] = {}
    for entry in entries:
        full_url = entry.get("fullUrl")
        if not isinstance(full_url, str) or full_url.startswith("urn:"):
            continue
        alias = f"urn:uuid:{uuid.uuid4()}"
        aliases[full_url] = alias
        resource = entry.get("resource")
        tail = "/".join(full_url.rstrip("/").split("/")[-2:])
        if isinstance(resource, dict) and tail.startswith(f"{resource.get('resourceType')}/"):
            aliases.setdefault(tail, alias)
    if not aliases:
        return entries
    out = []
    for entry in entries:
        new = dict(entry)
        if isinstance(entry.get("fullUrl"), str) and entry["fullUrl"] in aliases:
            new["fullUrl"] = aliases[entry["fullUrl"]]
        if isinstance(entry.get("resource"), dict):
            new["resource"] = _realias(entry["resource"], aliases)
        out.append(new)
    return out


def _realias(node: Any, aliases: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {
            k: aliases.get(v, v)
            if k == "reference" and isinstance(v, str)
            else _realias(v, aliases)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_realias(v, aliases) for v in node]
    return node


def _pseudonym_of(resource: dict[str, Any], system: str) -> str | None:
    return next(
        (i.get("value") for i in resource.get("identifier") or [] if i.get("system") == system),
        None,
    )
