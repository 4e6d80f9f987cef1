"""FHIR search latency on a synthetic paediatric-oncology cohort, against hand-written SQL.

    python bench/fhir_search.py                       # 1,000,000 resources (about 15 minutes)
    python bench/fhir_search.py --resources 100000    # a quicker look

Loads bench/cohort.py into a fresh PostgreSQL schema through `primage serve` (transaction
Bundles of ~500 resources, 2 clients, --workers 2), reports ingest with full search
indexing and, on a fresh schema, the same first --sample resources without indexing; then
p50/p95 over --runs of each search below, next to the same question asked in hand-written
SQL over the same tables (the ceiling), and the issue's targets (issue #3): single-parameter
p50 <= 30 ms and p95 <= 100 ms, chained and _include p50 <= 80 ms, ingest >= 1,000 res/s and
>= 50 % of its rate without indexing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cohort import PSEUDONYM, bundles, pseudonym
from fhir_crud import PG_DEFAULT, database, serve_primage

H = {"Content-Type": "application/fhir+json"}
LOINC = "http://loinc.org"


def load(base: str, children: range, clients: int = 2) -> tuple[int, float]:
    """POST the cohort's Bundles from `clients` threads; (resources, seconds)."""
    work = list(bundles(children))
    lock, count = threading.Lock(), [0]

    def worker() -> None:
        with httpx.Client(base_url=base, timeout=300) as http:
            while True:
                with lock:
                    if not work:
                        return
                    bundle = work.pop()
                r = http.post("/fhir", content=json.dumps(bundle), headers=H)
                if r.status_code != 200:
                    raise RuntimeError(f"load failed: {r.status_code} {r.text[:300]}")
                with lock:
                    count[0] += len(bundle["entry"])

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return count[0], time.perf_counter() - start


def timings(fn: Callable[[], None], runs: int) -> tuple[float, float]:
    for _ in range(3):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.95 * len(samples)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resources", type=int, default=1_000_000)
    parser.add_argument(
        "--sample", type=int, default=50_000, help="resources for the ingest comparison"
    )
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--pg-url", default=os.environ.get("PRIMAGE_BENCH_POSTGRES_URL", PG_DEFAULT)
    )
    args = parser.parse_args()
    children = max(1, args.resources // 19)
    sample = max(1, min(args.sample, args.resources) // 19)
    print(
        f"machine: {os.cpu_count()} cores; {children} children (~{children * 18.5:,.0f} resources); PostgreSQL"
    )

    from primage import db

    with tempfile.TemporaryDirectory() as data:
        with database("postgresql", args.pg_url) as url:
            db.upgrade(url)
            with serve_primage(url, data, args.workers, indexing=False) as base:
                n, secs = load(base, range(sample))
        bare_rate = n / secs
        print(f"ingest without search indexing: {bare_rate:,.0f} res/s ({n:,} resources)")

        with database("postgresql", args.pg_url) as url:
            db.upgrade(url)
            with serve_primage(url, data, args.workers, indexing=True) as base:
                n1, s1 = load(base, range(sample))
                rate = n1 / s1
                print(
                    f"ingest with full search indexing: {rate:,.0f} res/s ({n1:,} resources), "
                    f"{rate / bare_rate:.0%} of without; target >= 1,000 res/s and >= 50 %: "
                    f"{'met' if rate >= 1000 and rate >= 0.5 * bare_rate else 'NOT met'}"
                )
                n2, s2 = load(base, range(sample, children))
                print(
                    f"loaded {n1 + n2:,} resources in {s1 + s2:,.0f} s ({(n1 + n2) / (s1 + s2):,.0f} res/s)"
                )
                engine = create_engine(url)
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.exec_driver_sql("VACUUM ANALYZE")
                run_queries(base, engine, children, args.runs)
                engine.dispose()


def run_queries(base: str, engine, children: int, runs: int) -> None:
    http = httpx.Client(base_url=base, timeout=120)
    someone = pseudonym(children // 2)

    def fhir(query: str) -> Callable[[], None]:
        def call() -> None:
            r = http.get(f"/fhir/{query}")
            if r.status_code != 200:
                raise RuntimeError(f"{query}: {r.status_code} {r.text[:300]}")

        return call

    def page20(query: str) -> Callable[[], None]:
        def call() -> None:
            url = f"/fhir/{query}"
            for _ in range(20):
                r = http.get(url)
                nxt = next(
                    (link["url"] for link in r.json()["link"] if link["relation"] == "next"), None
                )
                if nxt is None:
                    break
                parts = urlsplit(nxt)
                url = f"{parts.path}?{parts.query}"

        return call

    def sql(statement: str, **params: object) -> Callable[[], None]:
        query = text(statement)

        def call() -> None:
            with engine.connect() as conn:
                conn.execute(query, params).all()

        return call

    tok = "SELECT t.resource_pk FROM search_token t JOIN resource r ON r.pk = t.resource_pk WHERE t.type = 'Observation' AND t.param = 'code' AND t.code = :c AND t.system = :s AND NOT r.deleted ORDER BY t.resource_pk LIMIT 50"
    cases = [
        (
            "token: Observation?code=loinc|2532-0",
            fhir(f"Observation?code={LOINC}|2532-0&_count=50"),
            sql(tok, c="2532-0", s=LOINC),
            30,
        ),
        (
            "token, _total=none",
            fhir(f"Observation?code={LOINC}|2532-0&_count=50&_total=none"),
            sql(tok, c="2532-0", s=LOINC),
            30,
        ),
        (
            "token on Patient.identifier",
            fhir(f"Patient?identifier={PSEUDONYM}|{someone}"),
            sql(
                "SELECT resource_pk FROM search_token WHERE type='Patient' AND param='identifier' AND code=:c AND system=:s",
                c=someone,
                s=PSEUDONYM,
            ),
            30,
        ),
        (
            "date range (one month)",
            fhir("Observation?date=ge2020-01-01&date=lt2020-02-01&_count=50"),
            sql(
                "SELECT resource_pk FROM search_date WHERE type='Observation' AND param='date' AND start >= '2020-01-01' AND \"end\" <= '2020-02-01' ORDER BY resource_pk LIMIT 50"
            ),
            30,
        ),
        (
            "quantity: value-quantity=gt1400||U/L",
            fhir("Observation?value-quantity=gt1400||U/L&_count=50"),
            sql(
                "SELECT resource_pk FROM search_quantity WHERE type='Observation' AND param='value-quantity' AND value > 1400 AND code = 'U/L' ORDER BY resource_pk LIMIT 50"
            ),
            30,
        ),
        (
            "_summary=count (token)",
            fhir(f"Observation?code={LOINC}|2532-0&_summary=count"),
            sql(
                "SELECT count(*) FROM search_token WHERE type='Observation' AND param='code' AND code=:c",
                c="2532-0",
            ),
            30,
        ),
        (
            "chained: subject.identifier",
            fhir(f"Observation?subject:Patient.identifier={PSEUDONYM}|{someone}"),
            sql(
                "SELECT o.resource_pk FROM search_token p JOIN resource pr ON pr.pk = p.resource_pk JOIN search_reference o ON o.target_type = 'Patient' AND o.target_id = pr.id WHERE p.type='Patient' AND p.param='identifier' AND p.code=:c AND o.type='Observation' AND o.param='subject'",
                c=someone,
            ),
            80,
        ),
        (
            "_include: Observation:subject",
            fhir(
                f"Observation?subject:Patient.identifier={PSEUDONYM}|{someone}&_include=Observation:subject"
            ),
            sql(
                "SELECT o.resource_pk FROM search_token p JOIN resource pr ON pr.pk = p.resource_pk JOIN search_reference o ON o.target_type = 'Patient' AND o.target_id = pr.id WHERE p.type='Patient' AND p.param='identifier' AND p.code=:c AND o.type='Observation' AND o.param='subject'",
                c=someone,
            ),
            80,
        ),
        (
            "_revinclude: Observation:subject",
            fhir(f"Patient?identifier={PSEUDONYM}|{someone}&_revinclude=Observation:subject"),
            sql(
                "SELECT o.resource_pk FROM search_token p JOIN resource pr ON pr.pk = p.resource_pk JOIN search_reference o ON o.target_type = 'Patient' AND o.target_id = pr.id WHERE p.type='Patient' AND p.param='identifier' AND p.code=:c AND o.type='Observation' AND o.param='subject'",
                c=someone,
            ),
            80,
        ),
        (
            "_sort=-date, pages 1-20 (each)",
            page20(f"Observation?code={LOINC}|718-7&_sort=-date&_count=20&_total=none"),
            sql(
                "SELECT t.resource_pk, max(d.\"end\") m FROM search_token t JOIN search_date d ON d.resource_pk = t.resource_pk AND d.param='date' WHERE t.type='Observation' AND t.param='code' AND t.code='718-7' GROUP BY t.resource_pk ORDER BY m DESC, t.resource_pk OFFSET 380 LIMIT 20"
            ),
            None,
        ),
    ]
    print(f"\n{'search':40} {'p50 ms':>8} {'p95 ms':>8} {'SQL p50':>8} {'ratio':>7}  target")
    for name, call, ceiling, target in cases:
        p50, p95 = timings(call, runs if "pages" not in name else max(3, runs // 10))
        if "pages" in name:
            p50, p95 = p50 / 20, p95 / 20
        c50, _ = timings(ceiling, runs)
        verdict = ""
        if target:
            ok = p50 <= target and (target != 30 or p95 <= 100)
            verdict = f"p50 <= {target}{' and p95 <= 100' if target == 30 else ''}: {'met' if ok else 'NOT met'}"
        print(f"{name:40} {p50:8.1f} {p95:8.1f} {c50:8.1f} {p50 / c50:6.1f}x  {verdict}")


if __name__ == "__main__":
    main()
