"""The PRIMAGE profiles (profiles/) and their validation: every example through `$validate`
and through a write (each invalid one fails for its documented reason, at its documented
location), the `profile` and `mode` parameters, instance-level `$validate`, and the clinical
importer's output against the profiles; on both databases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from curation.clinical import ClinicalSource
from fhir_server import models
from fhir_server.terminology import Terminology, load
from fhir_server.validation import Profile, Validator, compile_profile
from pseudonymisation.fhir_deid import FhirDeidentifier, FhirPolicy
from tests.conftest import FHIR_JSON

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "profiles" / "examples").glob("*.json"))
SD = "https://primage.eu/fhir/StructureDefinition/"
PSEUDONYM = "https://primage.eu/fhir/NamingSystem/research-pseudonym"

# the documented reason of each invalid example (profiles/examples/README.md):
# (location, issue code)
INVALID = {
    "primage-patient-invalid-name": ("Patient.name", "structure"),
    "primage-patient-invalid-no-pseudonym": ("Patient.identifier", "required"),
    "primage-nb-diagnosis-invalid-morphology": ("Condition.code", "code-invalid"),
    "primage-nb-diagnosis-invalid-laterality-type": (
        "Condition.bodySite[0].extension[0].valueString",
        "structure",
    ),
    "primage-inrg-stage-invalid-inss-value": ("Observation.valueCodeableConcept", "code-invalid"),
    "primage-mycn-status-invalid-no-gene": ("Observation.component", "required"),
    "primage-urinary-catecholamine-invalid-unit-system": ("Observation.valueQuantity", "value"),
    "primage-dipg-diagnosis-invalid-site": ("Condition.bodySite[0]", "value"),
    "primage-h3k27m-status-invalid-value-type": ("Observation.valueString", "structure"),
    "primage-lansky-score-invalid-range": ("Observation", "invariant"),
    "primage-inss-stage-invalid-inrg-value": ("Observation.valueCodeableConcept", "code-invalid"),
    "primage-genomic-alteration-invalid-code": ("Observation.code", "code-invalid"),
    "primage-karnofsky-score-invalid-range": ("Observation", "invariant"),
    "primage-radiotherapy-course-invalid-no-fractions": ("Procedure.extension", "required"),
    "primage-response-invalid-trend-value": ("Observation.valueCodeableConcept", "code-invalid"),
    "primage-vital-status-invalid-no-date": ("Observation.effective", "required"),
    "primage-research-subject-invalid-no-period": ("ResearchSubject.period", "required"),
    "primage-imaging-study-invalid-timepoint": (
        "ImagingStudy.extension[0].valueCodeableConcept",
        "code-invalid",
    ),
    "primage-histology-invalid-mki-as-grade": (
        "Observation.component[0].valueCodeableConcept",
        "code-invalid",
    ),
    "primage-idrf-invalid-absent-with-factors": ("Observation", "invariant"),
    "primage-metastasis-invalid-primary-site": ("Condition.bodySite[0]", "code-invalid"),
    "primage-risk-group-invalid-histology-value": (
        "Observation.valueCodeableConcept",
        "code-invalid",
    ),
    "primage-surgery-invalid-no-extent": ("Procedure.outcome", "required"),
    "primage-systemic-therapy-invalid-radiotherapy": ("Procedure.code", "code-invalid"),
    "primage-relapse-invalid-no-date": ("Observation.effective", "required"),
    "primage-symptom-duration-invalid-hours": ("Observation.valueQuantity", "code-invalid"),
    "primage-ploidy-invalid-index-as-value": ("Observation.valueQuantity", "structure"),
    "primage-research-study-invalid-no-title": ("ResearchStudy.title", "required"),
}


def _example(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def shipped(app: FastAPI, client: TestClient) -> TestClient:
    paths = load.shipped(app.state.settings.mappings_dir)
    load.load(app.state.database.write, load.read_all(paths))
    return client


def _errors(outcome: dict) -> list[dict]:
    return [i for i in outcome["issue"] if i["severity"] in ("error", "fatal")]


def _post(client: TestClient, path: str, body: dict, **params: str):
    return client.post(path, json=body, params=params, headers={"Content-Type": FHIR_JSON})


def test_every_profile_has_a_valid_and_an_invalid_example():
    definitions = [
        json.loads(p.read_text())
        for p in (ROOT / "profiles" / "structuredefinitions").glob("*.json")
    ]
    claimed: dict[str, set[bool]] = {}
    for path in EXAMPLES:
        for url in _example(path)["meta"]["profile"]:
            claimed.setdefault(url, set()).add(path.stem in INVALID)
    resources = {d["url"] for d in definitions if d["type"] != "Extension"}
    assert {u for u, kinds in claimed.items() if kinds == {True, False}} == resources
    # an extension is checked through the examples of the profiles that use it
    used = " ".join(p.read_text() for p in EXAMPLES)
    assert all(f'"{d["url"]}"' in used for d in definitions if d["type"] == "Extension")
    assert all("-invalid-" in s for s in INVALID) and len(INVALID) == sum(
        "-invalid-" in p.stem for p in EXAMPLES
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_validate_example(shipped, path):
    resource = _example(path)
    r = _post(shipped, f"/fhir/{resource['resourceType']}/$validate", resource)
    assert r.status_code == 200, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    errors = _errors(outcome)
    if path.stem not in INVALID:
        assert errors == [], errors
        assert outcome["issue"][-1]["severity"] == "information"
        return
    where, code = INVALID[path.stem]
    assert any(e["expression"] == [where] and e["code"] == code for e in errors), errors
    assert all(str(v) not in json.dumps(errors) for v in ("Garcia", "NB-0001"))  # no values


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_write_example(shipped, path):
    resource = _example(path)
    type_, id_ = resource["resourceType"], resource["id"]
    r = shipped.put(f"/fhir/{type_}/{id_}", json=resource, headers={"Content-Type": FHIR_JSON})
    if path.stem not in INVALID:
        assert r.status_code in (200, 201), r.text
        return
    assert r.status_code == 422, r.text
    where, code = INVALID[path.stem]
    assert any(e["expression"] == [where] and e["code"] == code for e in _errors(r.json()))
    assert shipped.get(f"/fhir/{type_}/{id_}").status_code == 404
    # create (POST) refuses it the same way, and so does a transaction
    resource.pop("id")
    assert _post(shipped, f"/fhir/{type_}", resource).status_code == 422
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": resource, "request": {"method": "POST", "url": type_}}],
    }
    r = _post(shipped, "/fhir", bundle)
    assert r.status_code == 422, r.text


def test_parameters_body_and_profile_parameter(shipped):
    resource = _example(ROOT / "profiles/examples/primage-lansky-score-invalid-range.json")
    del resource["meta"]
    body = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": resource}]}
    r = _post(shipped, "/fhir/Observation/$validate", body)
    assert _errors(r.json()) == []  # no profile claimed, none asked for: the base model only
    body["parameter"].append({"name": "profile", "valueUri": SD + "PrimageLanskyScore"})
    r = _post(shipped, "/fhir/Observation/$validate", body)
    assert [e["code"] for e in _errors(r.json())] == ["invariant"]
    r = _post(shipped, "/fhir/Observation/$validate", resource, profile=SD + "PrimageINRGStage")
    codes = {(e["expression"][0], e["code"]) for e in _errors(r.json())}
    assert ("Observation.code", "value") in codes  # not the INRG code
    assert ("Observation.focus", "required") in codes
    r = _post(shipped, "/fhir/Observation/$validate", resource, profile=SD + "Nope")
    assert [e["code"] for e in _errors(r.json())] == ["not-found"]
    r = _post(shipped, "/fhir/Patient/$validate", resource, profile=SD + "PrimagePatient")
    assert r.status_code == 200 and _errors(r.json())  # the resource is not a Patient


def test_base_model_errors_are_issues(shipped):
    resource = {"resourceType": "Patient", "active": "perhaps", "birthDate": "2019-03"}
    r = _post(shipped, "/fhir/Patient/$validate", resource, profile=SD + "PrimagePatient")
    assert r.status_code == 200
    where = {e["expression"][0] for e in _errors(r.json())}
    assert "Patient.active" in where and "Patient.identifier" in where


def test_instance_level_and_modes(shipped):
    lansky = _example(ROOT / "profiles/examples/primage-lansky-score-valid.json")
    r = shipped.put(
        f"/fhir/Observation/{lansky['id']}", json=lansky, headers={"Content-Type": FHIR_JSON}
    )
    assert r.status_code in (200, 201)
    path = f"/fhir/Observation/{lansky['id']}/$validate"
    r = shipped.get(path)
    assert r.status_code == 200 and _errors(r.json()) == []
    r = shipped.get(path, params={"profile": SD + "PrimageMYCNStatus"})
    assert {e["expression"][0] for e in _errors(r.json())} >= {"Observation.component"}
    assert _errors(shipped.get(path, params={"mode": "delete"}).json()) == []
    no_id = {k: v for k, v in lansky.items() if k != "id"}
    r = _post(shipped, "/fhir/Observation/$validate", no_id, mode="update")
    assert [e["expression"] for e in _errors(r.json())] == [["id"]]
    assert _post(shipped, "/fhir/Observation/$validate", no_id, mode="nope").status_code == 400
    assert shipped.get("/fhir/Observation/$validate").status_code == 400  # nothing to validate


def test_writes_without_a_known_profile_are_not_profiled(shipped):
    resource = _example(ROOT / "profiles/examples/primage-lansky-score-invalid-range.json")
    resource.pop("id")
    resource["meta"] = {"profile": ["https://example.org/fhir/StructureDefinition/unknown"]}
    assert _post(shipped, "/fhir/Observation", resource).status_code == 201
    del resource["meta"]
    assert _post(shipped, "/fhir/Observation", resource).status_code == 201


# --- the clinical importer's output against the profiles -------------------------------------


@pytest.fixture(scope="module")
def offline() -> tuple[dict[str, Profile], Terminology]:
    """The shipped profiles and terminology, indexed in process (no server)."""
    terminology, profiles = Terminology(), {}
    for res, _ in load.read_all(load.shipped(ROOT / "mappings")):
        if res["resourceType"] in ("CodeSystem", "ValueSet", "ConceptMap"):
            terminology.add(res)
        elif res["resourceType"] == "StructureDefinition":
            profiles[res["url"]] = compile_profile(res)
    return profiles, terminology


@pytest.mark.parametrize(
    "export,mapping,cohort",
    [
        ("neuroblastoma-registry.csv", "neuroblastoma-registry.yaml", "nb"),
        ("dipg-registry.xlsx", "dipg-registry.yaml", "dipg"),
    ],
)
def test_importer_output_conforms(offline, export, mapping, cohort):
    profiles, terminology = offline
    validator = Validator(profiles.get, terminology)
    deid = FhirDeidentifier(FhirPolicy.load(), b"k" * 32, PSEUDONYM)
    source = ClinicalSource(ROOT / "mappings/examples" / export, ROOT / "mappings" / mapping)
    checked = set()
    for group in source.groups:
        if group.bundle is None:
            continue  # the export's deliberately bad rows
        for entry in group.bundle["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] == "Patient":  # as the gateway stores it
                resource = deid.deidentify(resource, site="s", offset_days=-3, pseudonym="PRM-1")
            [claimed] = resource["meta"]["profile"]  # every resource the mapping makes
            models.validate(resource)
            issues = validator.validate(resource, profiles[claimed])
            assert [i for i in issues if i.severity == "error"] == [], (claimed, issues)
            checked.add(claimed.removeprefix(SD))
    expected = {
        "nb": {
            "PrimagePatient",
            "PrimageNeuroblastomaDiagnosis",
            "PrimageINRGStage",
            "PrimageINSSStage",
            "PrimageMYCNStatus",
            "PrimageUrinaryCatecholamine",
        },
        "dipg": {
            "PrimagePatient",
            "PrimageDIPGDiagnosis",
            "PrimageH3K27MStatus",
            "PrimageLanskyScore",
            "PrimageRadiotherapyCourse",
        },
    }
    assert checked == expected[cohort]


# --- rules of the extensions and slices the examples do not break -----------------------------

RT = ROOT / "profiles/examples/primage-radiotherapy-course-valid.json"
IMAGING = ROOT / "profiles/examples/primage-imaging-study-valid.json"
THERAPY = ROOT / "profiles/examples/primage-systemic-therapy-valid.json"
METASTASIS = ROOT / "profiles/examples/primage-metastasis-valid.json"


def _dose_in_cgy(r: dict) -> None:
    r["extension"][0]["valueQuantity"]["code"] = "cGy"


def _dose_without_value(r: dict) -> None:
    del r["extension"][0]["valueQuantity"]["value"]


def _fractions_as_text(r: dict) -> None:
    r["extension"][1] = {"url": r["extension"][1]["url"], "valueString": "30"}


def _no_start(r: dict) -> None:
    r["performedPeriod"] = {"end": "2022-04-29"}


def _reason_not_a_condition(r: dict) -> None:
    r["reasonReference"] = [{"reference": "Observation/x"}]


def _no_study_uid(r: dict) -> None:
    r["identifier"] = [{"system": "urn:example:accession", "value": "A1"}]


def _no_timepoint(r: dict) -> None:
    del r["extension"]


def _no_extension(r: dict) -> None:
    del r["extension"]


def _regimen_not_a_string(r: dict) -> None:
    r["extension"][0] = {"url": r["extension"][0]["url"], "valueInteger": 4}


def _primary_not_a_condition(r: dict) -> None:
    r["extension"][0]["valueReference"] = {"reference": "Observation/x"}


@pytest.mark.parametrize(
    "example,profile,change,where,code",
    [
        (
            RT,
            "PrimageRadiotherapyCourse",
            _dose_in_cgy,
            "Procedure.extension[0].valueQuantity",
            "value",
        ),
        (
            RT,
            "PrimageRadiotherapyCourse",
            _dose_without_value,
            "Procedure.extension[0].valueQuantity.value",
            "required",
        ),
        (
            RT,
            "PrimageRadiotherapyCourse",
            _fractions_as_text,
            "Procedure.extension[1].valueString",
            "structure",
        ),
        (RT, "PrimageRadiotherapyCourse", _no_start, "Procedure.performedPeriod.start", "required"),
        (
            RT,
            "PrimageRadiotherapyCourse",
            _reason_not_a_condition,
            "Procedure.reasonReference[0]",
            "structure",
        ),
        (IMAGING, "PrimageImagingStudy", _no_study_uid, "ImagingStudy.identifier", "required"),
        (IMAGING, "PrimageImagingStudy", _no_timepoint, "ImagingStudy.extension", "required"),
        (THERAPY, "PrimageSystemicTherapy", _no_extension, "Procedure.extension", "required"),
        (
            THERAPY,
            "PrimageSystemicTherapy",
            _regimen_not_a_string,
            "Procedure.extension[0].valueInteger",
            "structure",
        ),
        (METASTASIS, "PrimageMetastasis", _no_extension, "Condition.extension", "required"),
        (
            METASTASIS,
            "PrimageMetastasis",
            _primary_not_a_condition,
            "Condition.extension[0].valueReference",
            "structure",
        ),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_extension_and_slice_rules(offline, example, profile, change, where, code):
    profiles, terminology = offline
    resource = _example(example)
    change(resource)
    models.validate(resource)
    issues = Validator(profiles.get, terminology).validate(resource, profiles[SD + profile])
    assert [(i.expression, i.code) for i in issues if i.severity == "error"] == [((where,), code)]
