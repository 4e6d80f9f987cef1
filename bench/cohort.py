"""A synthetic paediatric-oncology cohort as FHIR transaction Bundles (deterministic).

Each child: a Patient (research pseudonym, sex, birth date), 1-2 Conditions (neuroblastoma or
DIPG), ~12 laboratory and vital-sign Observations (LOINC codes, UCUM units), 2 ImagingStudies
and 2 Procedures: about 20 resources, so 50,000 children make a million.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

PSEUDONYM = "https://primage.eu/fhir/NamingSystem/research-pseudonym"
LOINC, UCUM, SCT = "http://loinc.org", "http://unitsofmeasure.org", "http://snomed.info/sct"
LABS = [  # code, display, unit, low, high
    (
        "2532-0",
        "Lactate dehydrogenase [Enzymatic activity/volume] in Serum or Plasma",
        "U/L",
        150,
        1500,
    ),
    ("2276-4", "Ferritin [Mass/volume] in Serum or Plasma", "ng/mL", 10, 900),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 7, 15),
    ("29463-7", "Body weight", "kg", 3, 70),
    ("8302-2", "Body height", "cm", 50, 180),
    ("8867-4", "Heart rate", "/min", 60, 160),
]
DIAGNOSES = [
    ("87163003", "Neuroblastoma (disorder)"),
    ("1264050008", "Diffuse intrinsic pontine glioma"),
]


def pseudonym(i: int) -> str:
    return f"PRI-{i:07d}"


def child(i: int) -> list[dict[str, Any]]:
    rng = random.Random(i)
    pid = f"urn:uuid:00000000-0000-4000-8000-{i:012d}"
    year = rng.randint(2005, 2022)
    born = f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    out: list[dict[str, Any]] = [
        {
            "fullUrl": pid,
            "resource": {
                "resourceType": "Patient",
                "identifier": [{"system": PSEUDONYM, "value": pseudonym(i)}],
                "gender": rng.choice(["female", "male"]),
                "birthDate": born,
            },
            "request": {"method": "POST", "url": "Patient"},
        }
    ]
    subject = {"reference": pid}
    code, display = DIAGNOSES[0 if rng.random() < 0.8 else 1]
    onset = (
        f"{min(year + rng.randint(0, 4), 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    )
    for _ in range(rng.randint(1, 2)):
        out.append(
            _post(
                {
                    "resourceType": "Condition",
                    "subject": subject,
                    "code": {"coding": [{"system": SCT, "code": code, "display": display}]},
                    "onsetDateTime": onset,
                }
            )
        )
    for k in range(12):
        lab, name, unit, low, high = LABS[k % len(LABS)]
        day = f"{rng.randint(2015, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        out.append(
            _post(
                {
                    "resourceType": "Observation",
                    "status": "final",
                    "category": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                    "code": "laboratory",
                                }
                            ]
                        }
                    ],
                    "code": {"coding": [{"system": LOINC, "code": lab, "display": name}]},
                    "subject": subject,
                    "effectiveDateTime": f"{day}T{rng.randint(7, 18):02d}:{rng.randint(0, 59):02d}:00Z",
                    "valueQuantity": {
                        "value": round(rng.uniform(low, high), 1),
                        "unit": unit,
                        "system": UCUM,
                        "code": unit,
                    },
                }
            )
        )
    for modality in ("MR", "CT"):
        out.append(
            _post(
                {
                    "resourceType": "ImagingStudy",
                    "status": "available",
                    "subject": subject,
                    "started": f"{rng.randint(2015, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T10:00:00Z",
                    "modality": [
                        {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": modality}
                    ],
                }
            )
        )
        out.append(
            _post(
                {
                    "resourceType": "Procedure",
                    "status": "completed",
                    "subject": subject,
                    "code": {
                        "coding": [
                            {"system": SCT, "code": "387713003", "display": "Surgical procedure"}
                        ]
                    },
                    "performedDateTime": f"{rng.randint(2015, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                }
            )
        )
    return out


def _post(resource: dict[str, Any]) -> dict[str, Any]:
    return {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}


def bundles(children: range, per_bundle: int = 25) -> Iterator[dict[str, Any]]:
    """Transaction Bundles of `per_bundle` children (about 500 resources) each."""
    for start in range(children.start, children.stop, per_bundle):
        entries = [
            e for i in range(start, min(start + per_bundle, children.stop)) for e in child(i)
        ]
        yield {"resourceType": "Bundle", "type": "transaction", "entry": entries}
