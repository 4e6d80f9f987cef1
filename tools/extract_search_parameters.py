"""Write fhir_server/data/search-parameters.json from the official R4B SearchParameter Bundle.

    python tools/extract_search_parameters.py PATH/TO/r4b/search-parameters.json

Keeps each SearchParameter's defining fields (url, code, base, type, expression, target,
modifier, comparator, multipleOr/And, component) and drops narrative and descriptions, so
the project ships what it uses and nothing it would have to keep in step by hand.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

KEEP = (
    "url",
    "code",
    "base",
    "type",
    "expression",
    "target",
    "modifier",
    "comparator",
    "multipleOr",
    "multipleAnd",
    "component",
)
OUT = Path(__file__).resolve().parents[1] / "fhir_server" / "data" / "search-parameters.json"


def main(source: str) -> None:
    raw = Path(source).read_bytes()
    bundle = json.loads(raw)
    params = [
        {
            "resourceType": "SearchParameter",
            **{k: e["resource"][k] for k in KEEP if k in e["resource"]},
        }
        for e in bundle["entry"]
    ]
    params.sort(key=lambda p: p["url"])
    out = {
        "resourceType": "Bundle",
        "type": "collection",
        "meta": {
            "source": "HL7 FHIR R4B 4.3.0 search-parameters.json (CC0), sha256 "
            + hashlib.sha256(raw).hexdigest()
        },
        "entry": [{"resource": p} for p in params],
    }
    OUT.write_text(json.dumps(out, indent=0, ensure_ascii=False, sort_keys=False) + "\n")
    print(f"{len(params)} SearchParameters -> {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
