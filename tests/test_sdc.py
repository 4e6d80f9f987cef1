"""The cohort e-forms (profiles/questionnaires/): each filled in completely, `$extract`ed to a
transaction Bundle that validates and commits, searchable afterwards, and `$populate`d back;
through the real HTTP app, on both databases."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from fastapi import FastAPI
from fhir.resources.R4B import get_fhir_model_class
from starlette.testclient import TestClient

from fhir_server.sdc.forms import answers_by_link
from fhir_server.terminology import load
from tests.conftest import FHIR_JSON, patient

QUESTIONNAIRES = Path(__file__).resolve().parents[1] / "profiles" / "questionnaires"
Q = "https://primage.eu/fhir/Questionnaire/"
SCT = "http://snomed.info/sct"
ICDO = "http://terminology.hl7.org/CodeSystem/icd-o-3"
NCIT = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
LOINC = "http://loinc.org"
LOCAL = "https://primage.eu/fhir/CodeSystem/"
UCUM = "http://unitsofmeasure.org"


def _coding(system: str, code: str) -> dict:
    return {"valueCoding": {"system": system, "code": code}}


# Every item of each form answered (the enableWhen-dependent ones enabled and answered too)
ANSWERS = {
    "neuroblastoma-eform": {
        "diagnosis.histology": _coding(ICDO, "9500/3"),
        "diagnosis.primary-site": _coding(ICDO, "C74.9"),
        "diagnosis.date": {"valueDate": "2023-03-14"},
        "staging.date": {"valueDate": "2023-03-20"},
        "staging.inrg": _coding(NCIT, "C133430"),
        "staging.inss-recorded": {"valueBoolean": True},
        "staging.inss": _coding(LOCAL + "primage-local-inss-stage", "4"),
        "genomics.date": {"valueDate": "2023-03-28"},
        "genomics.mycn": _coding(LOCAL + "primage-local-mycn-status", "amplified"),
        "markers.date": {"valueDate": "2023-03-15"},
        "markers.vma": {"valueDecimal": 41.50},
        "markers.hva": {"valueDecimal": 22.0},
    },
    "dipg-eform": {
        "diagnosis.histology": _coding(ICDO, "9385/3"),
        "diagnosis.basis": _coding(SCT, "86273004"),
        "diagnosis.date": {"valueDate": "2022-11-02"},
        "molecular.date": {"valueDate": "2022-11-10"},
        "molecular.h3-k27m": _coding(LOINC, "LA9633-4"),
        "performance.date": {"valueDate": "2022-11-03"},
        "performance.lansky": {"valueInteger": 70},
        "radiotherapy.given": {"valueBoolean": True},
        "radiotherapy.start": {"valueDate": "2022-11-21"},
        "radiotherapy.date": {"valueDate": "2023-01-20"},
        "radiotherapy.dose": {"valueDecimal": 54.0},
        "radiotherapy.fractions": {"valueInteger": 30},
    },
}
# What each form extracts: Observation codes (and the Condition; DIPG: the radiotherapy
# course, a Procedure)
OBSERVATIONS = {
    "neuroblastoma-eform": {"C133427", "409720004", "69548-6", "3124-5", "11146-8"},
    "dipg-eform": {"69548-6", "C38144"},
}
PROCEDURES = {"neuroblastoma-eform": 0, "dipg-eform": 1}
FORMS = sorted(ANSWERS)


def _questionnaire(name: str) -> dict:
    return json.loads((QUESTIONNAIRES / f"{name}.json").read_text())


def _response(name: str, subject: str, answers: dict, status: str = "completed") -> dict:
    """A QuestionnaireResponse with the form's item tree and `answers` by linkId."""

    def items(q_items: list[dict]) -> list[dict]:
        out = []
        for item in q_items:
            if item["type"] == "group":
                children = items(item.get("item") or [])
                if children:
                    out.append({"linkId": item["linkId"], "item": children})
            elif item["linkId"] in answers:
                out.append({"linkId": item["linkId"], "answer": [answers[item["linkId"]]]})
        return out

    return {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": f"{Q}{name}|primage-2024.1",
        "status": status,
        "subject": {"reference": subject},
        "authored": "2023-04-01T10:00:00Z",
        "item": items(_questionnaire(name)["item"]),
    }


def _extract(
    client: TestClient, response: dict, path: str = "/fhir/QuestionnaireResponse/$extract"
):
    body = {
        "resourceType": "Parameters",
        "parameter": [{"name": "questionnaire-response", "resource": response}],
    }
    return client.post(path, json=body, headers={"Content-Type": FHIR_JSON})


def _new_patient(client: TestClient) -> str:
    created = client.post("/fhir/Patient", json=patient(), headers={"Content-Type": FHIR_JSON})
    assert created.status_code == 201, created.text
    return f"Patient/{created.json()['id']}"


@pytest.fixture(scope="module")
def forms(app: FastAPI, client: TestClient) -> TestClient:
    shipped = load.shipped(app.state.settings.mappings_dir)
    assert QUESTIONNAIRES in shipped
    load.load(app.state.database.write, load.read_all(shipped))
    return client


def test_every_item_of_each_form_is_answered_in_the_fixture():
    for name in FORMS:
        q = _questionnaire(name)

        def links(items):
            for item in items:
                yield item
                yield from links(item.get("item") or [])

        questions = {i["linkId"] for i in links(q["item"]) if i["type"] != "group"}
        assert questions == set(ANSWERS[name]), name
        assert q["status"] == "active" and q["url"] == Q + name and q["version"]


@pytest.mark.parametrize("name", FORMS)
def test_complete_form_extracts_commits_and_populates_back(forms, name):
    client = forms
    subject = _new_patient(client)
    answers = ANSWERS[name]
    extracted = _extract(client, _response(name, subject, answers))
    assert extracted.status_code == 200, extracted.text
    bundle = extracted.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    get_fhir_model_class("Bundle").model_validate(bundle)
    kinds = {}
    for entry in bundle["entry"]:
        resource = entry["resource"]
        assert entry["fullUrl"].startswith("urn:uuid:")
        assert entry["request"] == {"method": "POST", "url": resource["resourceType"]}
        assert resource["subject"] == {"reference": subject}
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        kinds.setdefault(resource["resourceType"], []).append(resource)
    assert len(kinds["Condition"]) == 1
    codes = {o["code"]["coding"][0]["code"] for o in kinds["Observation"]}
    assert codes == OBSERVATIONS[name]
    assert len(kinds.get("Procedure", [])) == PROCEDURES[name]

    committed = client.post("/fhir", json=bundle, headers={"Content-Type": FHIR_JSON})
    assert committed.status_code == 200, committed.text
    assert all(e["response"]["status"].startswith("201") for e in committed.json()["entry"])

    conditions = client.get(f"/fhir/Condition?subject={subject}").json()
    (condition,) = [e["resource"] for e in conditions["entry"]]
    assert condition["code"]["coding"] == [answers["diagnosis.histology"]["valueCoding"]]
    assert condition["onsetDateTime"] == answers["diagnosis.date"]["valueDate"]
    assert condition["verificationStatus"]["coding"][0]["code"] == "confirmed"
    observations = client.get(f"/fhir/Observation?subject={subject}&_count=50").json()
    assert len(observations["entry"]) == len(OBSERVATIONS[name])
    procedures = client.get(f"/fhir/Procedure?subject={subject}").json().get("entry", [])
    assert len(procedures) == PROCEDURES[name]

    populated = client.post(
        "/fhir/Questionnaire/$populate",
        json={
            "resourceType": "Parameters",
            "parameter": [
                {"name": "questionnaire", "valueUri": Q + name},
                {"name": "subject", "valueReference": {"reference": subject}},
            ],
        },
        headers={"Content-Type": FHIR_JSON},
    )
    assert populated.status_code == 200, populated.text
    (param,) = populated.json()["parameter"]
    response = param["resource"]
    assert param["name"] == "response" and response["status"] == "in-progress"
    get_fhir_model_class("QuestionnaireResponse").model_validate(response)
    got = {k: v[0] for k, v in answers_by_link(response).items() if v}
    assert got == json.loads(json.dumps(answers)), name
    # ... and what was pre-filled extracts again as it stands once completed
    again = _extract(client, {**response, "status": "completed"})
    assert again.status_code == 200, again.text
    assert len(again.json()["entry"]) == len(bundle["entry"])


SD = "https://primage.eu/fhir/StructureDefinition/"
# The profile each extracted resource claims (by Observation code; the Condition by form)
PROFILES = {
    "neuroblastoma-eform": {
        "Condition": "PrimageNeuroblastomaDiagnosis",
        "C133427": "PrimageINRGStage",
        "409720004": "PrimageINSSStage",
        "69548-6": "PrimageMYCNStatus",
        "3124-5": "PrimageUrinaryCatecholamine",
        "11146-8": "PrimageUrinaryCatecholamine",
    },
    "dipg-eform": {
        "Condition": "PrimageDIPGDiagnosis",
        "69548-6": "PrimageH3K27MStatus",
        "C38144": "PrimageLanskyScore",
        "108290001": "PrimageRadiotherapyCourse",  # the Procedure
    },
}


def _kind(resource: dict) -> str:
    if resource["resourceType"] == "Condition":
        return "Condition"
    return resource["code"]["coding"][0]["code"]


@pytest.mark.parametrize("name", FORMS)
def test_extracted_resources_claim_their_profile_validate_and_commit(forms, name):
    subject = _new_patient(forms)
    bundle = _extract(forms, _response(name, subject, ANSWERS[name])).json()
    condition_url = next(
        e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Condition"
    )
    claimed = set()
    for entry in bundle["entry"]:
        resource = entry["resource"]
        expected = PROFILES[name][_kind(resource)]  # every resource claims a profile
        assert resource["meta"]["profile"] == [SD + expected]
        claimed.add(expected)
        checked = forms.post(
            f"/fhir/{resource['resourceType']}/$validate",
            json={
                "resourceType": "Parameters",
                "parameter": [{"name": "resource", "resource": resource}],
            },
            headers={"Content-Type": FHIR_JSON},
        )
        assert checked.status_code == 200, checked.text
        errors = [i for i in checked.json()["issue"] if i["severity"] in ("error", "fatal")]
        assert errors == [], (expected, errors)
        if expected in (
            "PrimageINRGStage",
            "PrimageINSSStage",
            "PrimageMYCNStatus",
            "PrimageH3K27MStatus",
        ):
            assert resource["focus"] == [{"reference": condition_url}]
    course = [e["resource"] for e in bundle["entry"] if _kind(e["resource"]) == "108290001"]
    if name == "dipg-eform":
        [course] = course
        assert course["reasonReference"] == [{"reference": condition_url}]
        assert course["performedPeriod"] == {"start": "2022-11-21", "end": "2023-01-20"}
        assert course["extension"] == [
            {
                "url": SD + "primage-radiotherapy-total-dose",
                "valueQuantity": {"value": 54.0, "unit": "Gy", "system": UCUM, "code": "Gy"},
            },
            {"url": SD + "primage-radiotherapy-fractions", "valuePositiveInt": 30},
        ]
    assert claimed == set(PROFILES[name].values())
    mycn = [e["resource"] for e in bundle["entry"] if _kind(e["resource"]) == "69548-6"]
    if name == "neuroblastoma-eform":
        assert mycn[0]["component"][0]["valueCodeableConcept"]["coding"][0]["code"] == "HGNC:7559"

    committed = forms.post("/fhir", json=bundle, headers={"Content-Type": FHIR_JSON})
    assert committed.status_code == 200, committed.text
    stored = forms.get(f"/fhir/Observation?subject={subject}&_count=50").json()["entry"]
    [condition] = forms.get(f"/fhir/Condition?subject={subject}").json()["entry"]
    for o in (e["resource"] for e in stored):
        if "focus" in o:
            assert o["focus"] == [{"reference": f"Condition/{condition['resource']['id']}"}]
    stored += forms.get(f"/fhir/Procedure?subject={subject}").json().get("entry", [])
    for e in stored:
        if e["resource"]["resourceType"] == "Procedure":
            reason = f"Condition/{condition['resource']['id']}"
            assert e["resource"]["reasonReference"] == [{"reference": reason}]
    profiles = {p for e in stored for p in e["resource"].get("meta", {}).get("profile", [])}
    assert profiles == {SD + p for k, p in PROFILES[name].items() if k != "Condition"}


def test_an_answer_a_profile_refuses_extracts_but_is_refused_at_commit(forms):
    """The form allows 0..100; PrimageLanskyScore (prm-lansky-1) only steps of 10. $extract
    does not check profiles: committing the Bundle is 422, and nothing of it is stored."""
    subject = _new_patient(forms)
    answers = {**ANSWERS["dipg-eform"], "performance.lansky": {"valueInteger": 55}}
    extracted = _extract(forms, _response("dipg-eform", subject, answers))
    assert extracted.status_code == 200, extracted.text
    committed = forms.post("/fhir", json=extracted.json(), headers={"Content-Type": FHIR_JSON})
    assert committed.status_code == 422, committed.text
    text = json.dumps(committed.json())
    assert "PrimageLanskyScore" in text and "prm-lansky-1" in text
    assert "entry" not in forms.get(f"/fhir/Observation?subject={subject}").json()
    assert "entry" not in forms.get(f"/fhir/Condition?subject={subject}").json()


def test_extract_units_effective_time_and_category(forms):
    subject = _new_patient(forms)
    bundle = _extract(
        forms, _response("neuroblastoma-eform", subject, ANSWERS["neuroblastoma-eform"])
    ).json()
    by_code = {e["resource"]["code"]["coding"][0]["code"]: e["resource"] for e in bundle["entry"]}
    vma = by_code["3124-5"]
    assert vma["valueQuantity"] == {
        "value": 41.5,
        "unit": "mg/g creatinine",
        "system": "http://unitsofmeasure.org",
        "code": "mg/g{creat}",
    }
    assert vma["effectiveDateTime"] == "2023-03-15"  # the group's date item
    assert vma["category"][0]["coding"][0]["code"] == "laboratory"
    assert by_code["C133427"]["valueCodeableConcept"]["coding"][0]["code"] == "C133430"
    assert by_code["C133427"]["effectiveDateTime"] == "2023-03-20"
    condition = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Condition"
    )
    assert condition["bodySite"] == [{"coding": [{"system": ICDO, "code": "C74.9"}]}]


def test_disabled_items_are_neither_required_nor_extracted(forms):
    subject = _new_patient(forms)
    answers = dict(ANSWERS["dipg-eform"])
    answers["diagnosis.basis"] = _coding(SCT, "363679005")  # imaging: no molecular group
    answers["radiotherapy.given"] = {"valueBoolean": False}
    for link in ("molecular.date", "molecular.h3-k27m", "radiotherapy.start", "radiotherapy.date"):
        del answers[link]
    del answers["radiotherapy.dose"]  # required, but disabled
    answers["radiotherapy.fractions"] = {"valueInteger": 30}  # disabled: answer ignored
    bundle = _extract(forms, _response("dipg-eform", subject, answers)).json()
    codes = {
        e["resource"].get("code", {}).get("coding", [{}])[0].get("code") for e in bundle["entry"]
    }
    assert codes == {"9385/3", "C38144"}  # no radiotherapy Procedure
    condition = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Condition"
    )
    assert condition["evidence"] == [{"code": [{"coding": [{"system": SCT, "code": "363679005"}]}]}]


def test_instance_level_extract_of_a_stored_response(forms):
    subject = _new_patient(forms)
    stored = forms.post(
        "/fhir/QuestionnaireResponse",
        json=_response("dipg-eform", subject, ANSWERS["dipg-eform"]),
        headers={"Content-Type": FHIR_JSON},
    )
    assert stored.status_code == 201, stored.text
    ref = f"QuestionnaireResponse/{stored.json()['id']}"
    bundle = forms.get(f"/fhir/{ref}/$extract").json()
    observations = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"
    ]
    assert observations and all(o["derivedFrom"] == [{"reference": ref}] for o in observations)


def test_extract_with_the_response_as_body_and_on_questionnaire(forms):
    subject = _new_patient(forms)
    response = _response("dipg-eform", subject, ANSWERS["dipg-eform"])
    as_body = forms.post(
        "/fhir/Questionnaire/$extract", json=response, headers={"Content-Type": FHIR_JSON}
    )
    assert as_body.status_code == 200, as_body.text
    assert as_body.json()["type"] == "transaction"


def _outcome(reply) -> dict:
    body = reply.json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]


def test_unknown_questionnaire_is_404(forms):
    response = _response("dipg-eform", "Patient/x", ANSWERS["dipg-eform"])
    response["questionnaire"] = Q + "no-such-form"
    reply = _extract(forms, response)
    assert reply.status_code == 404
    assert "no-such-form" in _outcome(reply)["diagnostics"]
    populate = forms.get(f"/fhir/Questionnaire/$populate?questionnaire={Q}nope&subject=Patient/x")
    assert populate.status_code == 404


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda r, a: {**r, "status": "in-progress"}, "QuestionnaireResponse.status"),
        (lambda r, a: _drop(r, "staging.inrg"), "staging.inrg"),
        (lambda r, a: _drop(r, "staging.inss"), "staging.inss"),  # enabled by the gate
        (lambda r, a: _set(r, "genomics.mycn", _coding(ICDO, "9500/3")), "genomics.mycn"),
        (lambda r, a: _set(r, "markers.vma", {"valueString": "high"}), "markers.vma"),
    ],
)
def test_incomplete_or_wrong_responses_are_422_naming_the_item(forms, change, where):
    response = _response("neuroblastoma-eform", "Patient/x", ANSWERS["neuroblastoma-eform"])
    reply = _extract(forms, change(response, None))
    assert reply.status_code == 422, reply.text
    issue = _outcome(reply)
    assert where in (issue["expression"][0] + issue["diagnostics"])


def test_populate_needs_an_existing_patient(forms):
    missing = forms.get(
        f"/fhir/Questionnaire/$populate?questionnaire={Q}dipg-eform&subject=Patient/nope"
    )
    assert missing.status_code == 404
    no_subject = forms.get(f"/fhir/Questionnaire/$populate?questionnaire={Q}dipg-eform")
    assert no_subject.status_code == 400


def test_populate_takes_the_latest_observation(forms):
    subject = _new_patient(forms)
    for when, score in (("2023-01-01", 60), ("2023-06-01", 90), ("2023-03-01", 40)):
        obs = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": NCIT, "code": "C38144"}]},
            "subject": {"reference": subject},
            "effectiveDateTime": when,
            "valueInteger": score,
        }
        assert (
            forms.post(
                "/fhir/Observation", json=obs, headers={"Content-Type": FHIR_JSON}
            ).status_code
            == 201
        )
    reply = forms.get(
        f"/fhir/Questionnaire/$populate?questionnaire={Q}dipg-eform&subject={subject}"
    )
    response = reply.json()["parameter"][0]["resource"]
    (group,) = response["item"]
    answers = {i["linkId"]: i["answer"][0] for i in group["item"]}
    assert answers == {
        "performance.date": {"valueDate": "2023-06-01"},
        "performance.lansky": {"valueInteger": 90},
    }


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("item") or [])


def _drop(response: dict, link: str) -> dict:
    response = copy.deepcopy(response)
    for item in _walk(response["item"]):
        if item["linkId"] == link:
            item.pop("answer")
    return response


def _set(response: dict, link: str, answer: dict) -> dict:
    response = copy.deepcopy(response)
    for item in _walk(response["item"]):
        if item["linkId"] == link:
            item["answer"] = [answer]
    return response
