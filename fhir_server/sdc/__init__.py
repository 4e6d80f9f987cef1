"""The cohort e-forms (FHIR SDC): `$extract` turns a completed QuestionnaireResponse into a
transaction Bundle (`extract.py`), `$populate` pre-fills one from the platform's data
(`populate.py`); `forms.py` holds what both read from a Questionnaire.

    QuestionnaireResponse/$extract, QuestionnaireResponse/{id}/$extract,
    Questionnaire/$extract, Questionnaire/{id}/$extract   input questionnaire-response
    Questionnaire/$populate, Questionnaire/{id}/$populate  inputs subject, questionnaire

(https://hl7.org/fhir/uv/sdc/OperationDefinition/QuestionnaireResponse-extract and
Questionnaire-populate). The Questionnaire is the instance, or the stored one the response's
`questionnaire` canonical (or the `questionnaire`/`canonical`/`url` input) names: the e-forms
of profiles/questionnaires/ are loaded as platform data at start. `$extract` answers the
Bundle itself and writes nothing: the client POSTs it to the FHIR base, through the gateway
when it is a site, so the extracted resources are pseudonymised and checked like any write.
"""

from __future__ import annotations

from typing import Any

from .. import access, models
from ..errors import InvalidRequest
from ..operations import Call, Handler
from ..repository import Repository
from ..searchparams import Registry
from ..terminology.store import TerminologyStore
from . import forms
from .extract import extract
from .populate import populate

__all__ = ["extract", "handlers", "populate"]


def handlers(
    registry: Registry, store: TerminologyStore | None = None
) -> dict[tuple[str, str], Handler]:
    """The SDC operations, for the router's table (see fhir_server/operations.py)."""
    terminology = store or TerminologyStore()

    def run_extract(repo: Repository, call: Call) -> dict[str, Any]:
        response, reference = _response(call)
        questionnaire = call.instance if call.type == "Questionnaire" else None
        if questionnaire is None:
            canonical = response.get("questionnaire")
            if not isinstance(canonical, str):
                raise InvalidRequest(
                    "The QuestionnaireResponse names no questionnaire",
                    ("QuestionnaireResponse.questionnaire",),
                )
            questionnaire = forms.questionnaire(repo, registry, call.base, canonical, call.access)
        t = terminology.get(repo.conn)
        return extract(
            questionnaire, response, reference, lambda i, c: forms.fits(i, c, t, call.site)
        )

    def run_populate(repo: Repository, call: Call) -> dict[str, Any]:
        questionnaire = call.instance
        if questionnaire is None:
            given = call.inputs.resource("questionnaire")
            canonical = next(
                (
                    call.inputs.text(n)
                    for n in ("questionnaire", "canonical", "url")
                    if call.inputs.values.get(n) and not isinstance(call.inputs.values[n][0], dict)
                ),
                None,
            )
            if given is not None:
                questionnaire = models.validate(given, "Questionnaire")
            elif canonical:
                questionnaire = forms.questionnaire(
                    repo, registry, call.base, canonical, call.access
                )
            else:
                raise InvalidRequest(
                    "$populate needs a questionnaire (or an instance)", ("questionnaire",)
                )
        patient = _patient(repo, call)

        def find(type_: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
            return forms.find(repo, registry, call.base, type_, params, call.access)

        response = populate(questionnaire, patient, find, terminology.get(repo.conn), call.site)
        return {
            "resourceType": "Parameters",
            "parameter": [{"name": "response", "resource": response}],
        }

    return {
        ("QuestionnaireResponse", "$extract"): run_extract,
        ("Questionnaire", "$extract"): run_extract,
        ("Questionnaire", "$populate"): run_populate,
    }


def _response(call: Call) -> tuple[dict[str, Any], str | None]:
    """The response to extract and, when it is stored, its reference."""
    if call.type == "QuestionnaireResponse" and call.instance is not None:
        return call.instance, f"QuestionnaireResponse/{call.instance['id']}"
    # a Parameters input, or the response itself as the body
    given = call.inputs.resource("questionnaire-response") or call.inputs.resource("resource")
    if given is None or given.get("resourceType") != "QuestionnaireResponse":
        raise InvalidRequest(
            "$extract needs a questionnaire-response (a QuestionnaireResponse)",
            ("questionnaire-response",),
        )
    return given, None


def _patient(repo: Repository, call: Call) -> str:
    """The `subject` input as "Patient/id", which must be a Patient the caller may read."""
    value = (call.inputs.values.get("subject") or [None])[0]
    reference = value.get("reference") if isinstance(value, dict) else value
    if not isinstance(reference, str) or not reference.startswith("Patient/"):
        raise InvalidRequest("$populate needs a subject: a Patient reference", ("subject",))
    id_ = reference.removeprefix("Patient/")
    if "/" in id_ or not id_:
        raise InvalidRequest("The subject must be Patient/{id}", ("subject",))
    access.check(call.access, "read", ["Patient"])
    repo.read("Patient", id_)  # NotFound / Gone
    return f"Patient/{id_}"
