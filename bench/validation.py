"""Validation throughput: the R4B model check alone against the model check plus the PRIMAGE
profiles, over the same resources in the same run (target: profiles cost <= 2x).

    python bench/validation.py [--rounds 200]

In process, no HTTP or database: the shipped terminology and profiles are indexed as the
server indexes them, and each round validates the valid examples of `profiles/examples/`
(28 resources, every profile at least once). Bindings are memoised per validator, as in the server,
where a validator lives for one request; here each resource gets a fresh one, the server's
worst case. Prints resources/s of both and their ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fhir_server import models  # noqa: E402
from fhir_server.terminology import Terminology, load  # noqa: E402
from fhir_server.validation import Validator, compile_profile  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()

    terminology, profiles = Terminology(), {}
    for res, _ in load.read_all(load.shipped(ROOT / "mappings")):
        if res["resourceType"] in ("CodeSystem", "ValueSet", "ConceptMap"):
            terminology.add(res)
        elif res["resourceType"] == "StructureDefinition":
            profiles[res["url"]] = compile_profile(res)
    resources = [
        json.loads(p.read_text())
        for p in sorted((ROOT / "profiles" / "examples").glob("*-valid.json"))
    ]
    pairs = [(r, profiles[r["meta"]["profile"][0]]) for r in resources]
    n = args.rounds * len(resources)

    def base() -> None:
        for resource, _ in pairs:
            models.validate(resource)

    def profiled() -> None:
        for resource, profile in pairs:
            models.validate(resource)
            errors = Validator(profiles.get, terminology).validate(resource, profile)
            assert not [i for i in errors if i.severity == "error"], errors

    base(), profiled()  # warm up: imports, compiled fhirpath, cached expansions
    timings = {}
    for name, run in (("base model", base), ("base + profiles", profiled)):
        start = time.perf_counter()
        for _ in range(args.rounds):
            run()
        timings[name] = time.perf_counter() - start
    for name, seconds in timings.items():
        print(f"{name:16} {n / seconds:10.0f} resources/s  ({seconds * 1e6 / n:.0f} us each)")
    ratio = timings["base + profiles"] / timings["base model"]
    print(f"profiles cost {ratio:.2f}x the base model check (target <= 2x)")


if __name__ == "__main__":
    main()
