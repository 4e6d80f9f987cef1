"""`--dry-run`: what an import would send, and what de-identification would do to it.

Counts patients, studies, series, instances and bytes, and runs the gateway's own DICOM
de-identification (with a throw-away key: nothing is registered or sent) on the first
instance of every series, to list the attributes it would remove or replace and the
objects it would quarantine, with the reason. Nothing identifying is printed: studies are
described by modality, date and counts, not by UIDs or names.
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from collections.abc import Iterable
from typing import Any

from pydicom.dataset import Dataset

from pseudonymisation.dicom_deid import DicomPlan, Quarantined, check_burned_in, deidentify


def summarise(headers: Iterable[tuple[Dataset, int]]) -> dict[str, Any]:
    """Summary of (header, size) pairs: totals, studies, and the de-identification preview."""
    patients: set[str] = set()
    studies: dict[str, dict[str, Any]] = {}
    series_seen: set[str] = set()
    removed: Counter[str] = Counter()
    replaced: Counter[str] = Counter()
    quarantined: Counter[str] = Counter()
    instances = size_total = 0
    plan = DicomPlan("PRM-PREVIEW", "PRM-PREVIEW", 7, os.urandom(32))
    for header, size in headers:
        instances += 1
        size_total += size
        patients.add(str(header.get("PatientID", "")))
        study = studies.setdefault(
            str(header.get("StudyInstanceUID", "")),
            {
                "modalities": set(),
                "date": str(header.get("StudyDate", "") or ""),
                "series": set(),
                "instances": 0,
                "bytes": 0,
            },
        )
        study["modalities"].add(str(header.get("Modality", "") or "?"))
        study["instances"] += 1
        study["bytes"] += size
        series_uid = str(header.get("SeriesInstanceUID", ""))
        study["series"].add(series_uid)
        try:
            check_burned_in(header)
        except Quarantined as exc:
            quarantined[exc.reason] += 1
            continue
        if series_uid in series_seen:
            continue
        series_seen.add(series_uid)
        after = deidentify(copy.deepcopy(header), plan)
        for element in header:
            if element.tag.is_private and element.tag not in after:
                removed["(private tags)"] += 1
                continue
            keyword = element.keyword or str(element.tag)
            if element.tag not in after:
                removed[keyword] += 1
            elif element.VR != "SQ" and after[element.tag].value != element.value:
                replaced[keyword] += 1
    return {
        "patients": len(patients),
        "studies": len(studies),
        "series": sum(len(s["series"]) for s in studies.values()),
        "instances": instances,
        "bytes": size_total,
        "per_study": [
            {
                "modalities": sorted(s["modalities"]),
                "date": s["date"],
                "series": len(s["series"]),
                "instances": s["instances"],
                "bytes": s["bytes"],
            }
            for s in sorted(studies.values(), key=lambda s: (s["date"], -s["instances"]))
        ],
        "deidentification": {
            "removed": dict(sorted(removed.items())),
            "replaced": dict(sorted(replaced.items())),
            "quarantined": dict(quarantined),
        },
    }
