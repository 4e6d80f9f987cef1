"""Record linkage: quality on synthetic European children, and registration throughput.

    python bench/linkage.py                          # 10,000 persons; throughput at 100,000
    python bench/linkage.py --persons 2000 --throughput-persons 0

Quality, all in one run on the same seeded registrations (pairwise over registrations):
  (a) exact hashing of normalised fields: the floor;
  (b) primage incremental: each registration matched once, as it arrives;
  (c) (b) with the review band resolved by the truth, as a curator would;
  (d) (c) then `recluster`, its proposals resolved by the truth.
Targets (issue): (b) precision >= 0.998 and recall >= 0.97; (c) precision >= 0.999 and
recall >= 0.995 with at most 3 % of registrations sent to review.
Throughput: registrations/s of `LinkageService.register` (encodings made beforehand: the
gateway's cost, reported apart) over the whole run of registering the throughput
population into SQLite, and PostgreSQL (--postgres-persons of them) when
PRIMAGE_BENCH_POSTGRES_URL is set; target 200/s over the last 10 %, where the database
is largest.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path[0:1] = [str(ROOT)]
from pseudonymisation.encoding import encode, local_token  # noqa: E402
from pseudonymisation.linkage import quality, synthetic  # noqa: E402
from pseudonymisation.linkage.schema import create_schema  # noqa: E402
from pseudonymisation.linkage.service import LinkageService  # noqa: E402

GATEWAY_KEY = b"bench-gateway-key-0123456789abcdef"
SECRET = b"bench-linkage-secret-0123456789ab"
TARGET_RATE = 200.0
# row: (precision, recall, largest review share) the issue asks for
TARGETS = {"b": (0.998, 0.97, None), "c": (0.999, 0.995, 0.03), "d": (0.999, 0.995, 0.03)}


def verdict(row: str, q: quality.Quality, review: float | None = None) -> str:
    """The issue's target for a row, and whether it is met."""
    if row not in TARGETS:
        return "[floor]"
    precision, recall, share = TARGETS[row]
    met = q.precision >= precision and q.recall >= recall
    wanted = f"p>={precision} r>={recall}"
    if share is not None:
        met = met and review is not None and review <= share
        wanted += f" review<={share:.0%}"
    return f"[target {wanted}: {'PASS' if met else 'FAIL'}]"


def sqlite_engine(path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:  # the settings a deployment would use
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    return engine


def postgres_engine(url: str) -> tuple[Engine, Engine, str]:
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    schema = f"linkage_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    target = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    return create_engine(target), admin, schema


def encoded(records: list[synthetic.Record]) -> tuple[list[tuple], float]:
    started = time.perf_counter()
    rows = [
        (
            r.site,
            local_token(r.site.encode() + GATEWAY_KEY, r.local_id),
            f"sealed:{r.local_id}",  # sealing is the gateway's; its cost is not linkage's
            encode(r.identity, GATEWAY_KEY),
        )
        for r in records
    ]
    return rows, len(rows) / (time.perf_counter() - started)


def quality_run(persons: int, seed: int, workdir: Path) -> None:
    records = synthetic.generate(persons, seed=seed)
    truth = [r.truth for r in records]
    print(f"quality: {persons} persons, {len(records)} registrations (seed {seed})")
    exact = [quality.exact_key(r.identity, GATEWAY_KEY) for r in records]
    floor = quality.pairwise(truth, exact)
    print(f"  (a) exact hash     {floor}  {verdict('a', floor)}")

    engine = sqlite_engine(workdir / "quality.db")
    create_schema(engine)
    service = LinkageService(engine, SECRET)
    rows, _ = encoded(records)
    by_context: dict[str, int] = {}
    research, review = [], 0
    for record, row in zip(records, rows, strict=True):
        result = service.register(*row)
        research.append(result.research_pseudonym)
        by_context[result.context_pseudonym] = record.truth
        review += result.status == "review"
    share, q = review / len(records), quality.pairwise(truth, research)
    print(f"  (b) incremental    {q}  review {share:.2%}  {verdict('b', q)}")

    resolved = quality.resolve_by_truth(service, by_context)
    current = quality.assignment(engine)
    labels = [current[c] for c in by_context]
    ordered = list(by_context.values())
    share, q = resolved / len(records), quality.pairwise(ordered, labels)
    print(f"  (c) band resolved  {q}  review {share:.2%}  {verdict('c', q, share)}")

    proposals = service.recluster()
    resolved_batch = quality.resolve_by_truth(service, by_context)
    current = quality.assignment(engine)
    labels = [current[c] for c in by_context]
    share, q = (resolved + resolved_batch) / len(records), quality.pairwise(ordered, labels)
    print(
        f"  (d) + recluster    {q}  review {share:.2%} ({len(proposals)} proposals)  "
        f"{verdict('d', q, share)}"
    )
    engine.dispose()


def throughput_run(name: str, engine: Engine, persons: int, seed: int) -> None:
    create_schema(engine)
    service = LinkageService(engine, SECRET)
    records = synthetic.generate(persons, seed=seed)
    rows, encode_rate = encoded(records)
    started = last = time.perf_counter()
    tail_from = int(len(rows) * 0.9)
    for i, row in enumerate(rows):
        if i == tail_from:
            last = time.perf_counter()
        service.register(*row)
    end = time.perf_counter()
    rate = len(rows) / (end - started)
    tail = (len(rows) - tail_from) / (end - last)
    print(
        f"throughput {name}: {persons} persons, {len(rows)} registrations: "
        f"{rate:.0f}/s overall, {tail:.0f}/s over the last 10 % "
        f"({tail / TARGET_RATE:.2f}x the {TARGET_RATE:.0f}/s target: "
        f"{'PASS' if tail >= TARGET_RATE else 'FAIL'}); gateway encoding {encode_rate:.0f}/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=10_000)
    parser.add_argument("--throughput-persons", type=int, default=100_000)
    parser.add_argument("--postgres-persons", type=int, default=30_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.persons:
            quality_run(args.persons, args.seed, workdir)
        if args.throughput_persons:
            engine = sqlite_engine(workdir / "throughput.db")
            throughput_run("sqlite", engine, args.throughput_persons, args.seed + 1)
            engine.dispose()
        if args.postgres_persons and (url := os.environ.get("PRIMAGE_BENCH_POSTGRES_URL")):
            engine, admin, schema = postgres_engine(url)
            try:
                throughput_run("postgresql", engine, args.postgres_persons, args.seed + 1)
            finally:
                engine.dispose()
                with admin.connect() as conn:
                    conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                admin.dispose()


if __name__ == "__main__":
    main()
