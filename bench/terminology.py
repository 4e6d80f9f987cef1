"""Terminology operation latency over HTTP, with a plain FHIR read measured in the same run.

    python bench/terminology.py                    # SQLite
    python bench/terminology.py --db postgresql --n 500

Starts `primage serve` (1 worker; it loads the shipped terminology at start), stores a
synthetic CodeSystem of 4,000 concepts (80 groups of 50) and a ValueSet over all of it, and
reports p50/p95 (ms, one keep-alive client) of:
  read        GET ValueSet/{id} of that ValueSet (the baseline)
  expand      $expand of the synthetic ValueSet with a text filter and count=20
  expand-is-a $expand of an inline ValueSet (POST) with an is-a filter (51 codes)
  expand-sub  $expand of a shipped value set (dipg-histology)
  translate   $translate forward with a shipped example ConceptMap
  reverse     $translate reverse
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import httpx
from fhir_crud import PG_DEFAULT, ROOT, database, pct, serve_primage

sys.path.insert(0, str(ROOT))
from primage import db

H = {"Content-Type": "application/fhir+json"}
SYNTH = "https://example.org/fhir/CodeSystem/bench-synthetic"
HOSPITAL_B = "https://hospital-b.example.org/fhir/CodeSystem/diagnosis-labels"


def synthetic() -> tuple[dict, dict]:
    concepts = [
        {
            "code": f"G{g}",
            "display": f"group {g} finding",
            "concept": [
                {"code": f"G{g}-{i}", "display": f"finding {g} variant {i}"} for i in range(50)
            ],
        }
        for g in range(80)
    ]
    cs = {
        "resourceType": "CodeSystem",
        "url": SYNTH,
        "status": "active",
        "content": "complete",
        "concept": concepts,
    }
    vs = {
        "resourceType": "ValueSet",
        "url": "https://example.org/fhir/ValueSet/bench-synthetic",
        "status": "active",
        "compose": {"include": [{"system": SYNTH}]},
    }
    return cs, vs


def measure(fn: Callable[[], httpx.Response], n: int) -> tuple[float, float]:
    for _ in range(20):
        fn().raise_for_status()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        r = fn()
        times.append(time.perf_counter() - start)
        r.raise_for_status()
    return pct(times, 0.5), pct(times, 0.95)


def run(base: str, n: int) -> dict[str, tuple[float, float]]:
    cs, vs = synthetic()
    with httpx.Client(base_url=f"{base}/fhir", headers=H, timeout=60) as http:
        http.post("/CodeSystem", json=cs).raise_for_status()
        vs_id = http.post("/ValueSet", json=vs).json()["id"]
        inline = {
            "resourceType": "Parameters",
            "parameter": [
                {
                    "name": "valueSet",
                    "resource": {
                        "resourceType": "ValueSet",
                        "status": "draft",
                        "compose": {
                            "include": [
                                {
                                    "system": SYNTH,
                                    "filter": [
                                        {"property": "concept", "op": "is-a", "value": "G42"}
                                    ],
                                }
                            ]
                        },
                    },
                }
            ],
        }
        cases: dict[str, Callable[[], httpx.Response]] = {
            "read": lambda: http.get(f"/ValueSet/{vs_id}"),
            "expand": lambda: http.get(
                f"/ValueSet/{vs_id}/$expand", params={"filter": "variant 4", "count": "20"}
            ),
            "expand-is-a": lambda: http.post("/ValueSet/$expand", json=inline),
            "expand-sub": lambda: http.get("/ValueSet/dipg-histology/$expand"),
            "translate": lambda: http.get(
                "/ConceptMap/$translate", params={"system": HOSPITAL_B, "code": "Neuroblastom"}
            ),
            "reverse": lambda: http.get(
                "/ConceptMap/$translate",
                params={
                    "system": "http://terminology.hl7.org/CodeSystem/icd-o-3",
                    "code": "9500/3",
                    "reverse": "true",
                },
            ),
        }
        return {name: measure(fn, n) for name, fn in cases.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--pg-url", default=PG_DEFAULT)
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    with database(args.db, args.pg_url) as url, tempfile.TemporaryDirectory() as data:
        db.upgrade(url)  # `primage serve` migrates SQLite only
        with serve_primage(url, data, 1) as base:
            results = run(base, args.n)
    print(f"terminology over HTTP, {args.db}, {args.n} requests each, 1 client, 1 worker")
    print(f"{'case':<12} {'p50 ms':>8} {'p95 ms':>8} {'p50 / read':>11}")
    read = results["read"][0]
    for name, (p50, p95) in results.items():
        print(f"{name:<12} {p50:8.2f} {p95:8.2f} {p50 / read:11.1f}")
    print(f"(median of p50s: {statistics.median(v[0] for v in results.values()):.2f} ms)")


if __name__ == "__main__":
    main()
