"""FHIR REST core throughput and latency, with this machine's ceilings measured in the same run.

    python bench/fhir_crud.py                      # SQLite, and PostgreSQL if reachable
    python bench/fhir_crud.py --db postgresql --n 3000 --profile

For each database it starts `primage serve` (uvicorn, --workers N) and a bare FastAPI app on
127.0.0.1, warms both up, and reports medians of three runs of:
  creates/s (1 client and 8 concurrent clients), reads/s with p50/p95 latency, updates/s,
  and transaction ingest (bundles of 100 Observations, resources/s);
then the ceilings: the same JSON plus one index row per resource inserted straight with
SQLAlchemy Core in batches of 100 (ceiling 1), and the bare FastAPI create (ceiling 2),
and primage/ceiling ratios. --profile adds a cProfile of in-process transaction ingest.
Targets (issue #2): transaction ingest >= 2,000 resources/s on PostgreSQL, single creates
>= 50 % of the bare FastAPI ceiling, read p50 <= 5 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from sqlalchemy import (
    Column,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    text,
)
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PG_DEFAULT = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
H = {"Content-Type": "application/fhir+json"}
RUNS = 3


def observation(i: int) -> dict:
    return {
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
        "code": {
            "coding": [
                {
                    "system": "http://loinc.org",
                    "code": "2093-3",
                    "display": "Cholesterol [Mass/volume] in Serum or Plasma",
                }
            ]
        },
        "subject": {"reference": f"Patient/bench-{i % 500}"},
        "effectiveDateTime": "2021-03-04T10:11:12.345+01:00",
        "valueQuantity": {
            "value": 4.25 + i % 7,
            "unit": "mmol/L",
            "system": "http://unitsofmeasure.org",
            "code": "mmol/L",
        },
        "note": [{"text": "synthetic benchmark observation"}],
    }


# --- servers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(argv: list[str], env: dict[str, str], port: int) -> Iterator[str]:
    proc = subprocess.Popen(
        argv, env={**os.environ, **env}, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    proc.stderr.read().decode()[-2000:] if proc.stderr else "server died"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def serve_primage(
    url: str,
    data: str,
    workers: int,
    *,
    indexing: bool = True,
    auth: bool = False,
    extra: dict[str, str] | None = None,
) -> contextlib.AbstractContextManager[str]:
    """`primage serve` on a free port of 127.0.0.1 against `url`; yields its base URL.

    Without `auth` the server runs with PRIMAGE_AUTH_ENABLED=false: these benchmarks
    measure the API; bench/auth.py measures what authorisation adds."""
    port = free_port()
    env = {
        "PRIMAGE_DATABASE_URL": url,
        "PRIMAGE_DATA_DIR": data,
        "PRIMAGE_LOG_LEVEL": "WARNING",
        "PRIMAGE_SEARCH_INDEXING": "true" if indexing else "false",
        "PRIMAGE_AUTH_ENABLED": "true" if auth else "false",
        **(extra or {}),
    }
    cmd = [
        sys.executable,
        "-m",
        "primage.cli",
        "serve",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    return serve(cmd, env, port)


@contextlib.contextmanager
def database(kind: str, pg_url: str) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/bench.db"
        return
    schema = f"primage_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


# --- load ----------------------------------------------------------------------------------


def timed(fn: Callable[[int], None], n: int, clients: int) -> tuple[float, list[float]]:
    """Run fn(i) for i in range(n) over `clients` threads; (ops/s, per-call latencies)."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(n))

    def worker() -> None:
        local = []
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            t0 = time.perf_counter()
            fn(i)
            local.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return n / (time.perf_counter() - start), latencies


def median_run(fn: Callable[[int], None], n: int, clients: int) -> tuple[float, list[float]]:
    runs = [timed(fn, n, clients) for _ in range(RUNS)]
    runs.sort(key=lambda r: r[0])
    return runs[len(runs) // 2]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


class Clients:
    """One keep-alive HTTP client per thread."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.local = threading.local()

    @property
    def http(self) -> httpx.Client:
        if not hasattr(self.local, "c"):
            self.local.c = httpx.Client(base_url=self.base, timeout=60)
        return self.local.c


def expect(r: httpx.Response, status: int) -> None:
    if r.status_code != status:
        raise RuntimeError(f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:300]}")


def bench_primage(base: str, n: int) -> dict[str, float]:
    c = Clients(base)
    bodies = [json.dumps(observation(i)).encode() for i in range(n)]
    out: dict[str, float] = {}

    def create(i: int) -> None:
        expect(c.http.post("/fhir/Observation", content=bodies[i], headers=H), 201)

    timed(create, min(n, 300), 1)  # warm-up
    out["create_seq"], lat = median_run(create, n, 1)
    out["create_seq_p50_ms"] = pct(lat, 0.5)
    out["create_8"], _ = median_run(create, n, 8)

    ids = []
    for i in range(200):
        r = c.http.post("/fhir/Observation", content=bodies[i], headers=H)
        ids.append(r.json()["id"])

    def read(i: int) -> None:
        expect(c.http.get(f"/fhir/Observation/{ids[i % len(ids)]}"), 200)

    timed(read, 300, 1)
    out["read_seq"], lat = median_run(read, n, 1)
    out["read_p50_ms"], out["read_p95_ms"] = pct(lat, 0.5), pct(lat, 0.95)
    out["read_8"], _ = median_run(read, n, 8)

    def update(i: int) -> None:
        id_ = ids[i % len(ids)]
        body = {**observation(i), "id": id_}
        expect(c.http.put(f"/fhir/Observation/{id_}", content=json.dumps(body), headers=H), 200)

    out["update_seq"], _ = median_run(update, n, 1)

    bundle_size = 100
    bundles = [
        json.dumps(
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {
                        "resource": observation(b * bundle_size + k),
                        "request": {"method": "POST", "url": "Observation"},
                    }
                    for k in range(bundle_size)
                ],
            }
        ).encode()
        for b in range(max(4, n // bundle_size))
    ]

    def transaction(i: int) -> None:
        expect(c.http.post("/fhir", content=bundles[i % len(bundles)], headers=H), 200)

    timed(transaction, 2, 1)
    per_s, _ = median_run(transaction, len(bundles), 1)
    out["tx_resources_s"] = per_s * bundle_size
    per_s, _ = median_run(transaction, len(bundles), 2)
    out["tx_resources_s_2clients"] = per_s * bundle_size
    return out


def bench_bare(base: str, n: int) -> dict[str, float]:
    c = Clients(base)
    bodies = [json.dumps(observation(i)).encode() for i in range(n)]

    def create(i: int) -> None:
        expect(c.http.post("/fhir/Observation", content=bodies[i], headers=H), 201)

    timed(create, min(n, 300), 1)
    seq, _ = median_run(create, n, 1)
    conc, _ = median_run(create, n, 8)
    return {"create_seq": seq, "create_8": conc}


def bench_core_ceiling(url: str, n: int) -> float:
    """Ceiling 1: the same JSON and one index row per resource, inserted in batches of 100."""
    meta = MetaData()
    res = Table(
        "ceiling_resource",
        meta,
        Column("pk", Integer, primary_key=True, autoincrement=True),
        Column("id", String(64), nullable=False, unique=True),
        Column("content", LargeBinary, nullable=False),
    )
    idx = Table(
        "ceiling_token",
        meta,
        Column("resource_pk", Integer, nullable=False),
        Column("system", String(200)),
        Column("code", String(200)),
    )
    engine = create_engine(url)
    meta.create_all(engine)
    docs = [json.dumps({**observation(i), "id": str(uuid.uuid4())}).encode() for i in range(n)]

    def run() -> float:
        start = time.perf_counter()
        for b in range(0, n, 100):
            with engine.begin() as conn:
                rows = conn.execute(
                    insert(res).returning(res.c.pk, sort_by_parameter_order=True),
                    [{"id": str(uuid.uuid4()), "content": d} for d in docs[b : b + 100]],
                ).all()
                conn.execute(
                    insert(idx),
                    [
                        {"resource_pk": r[0], "system": "http://loinc.org", "code": "2093-3"}
                        for r in rows
                    ],
                )
        return n / (time.perf_counter() - start)

    run()
    result = statistics.median(run() for _ in range(RUNS))
    engine.dispose()
    return result


def profile_ingest(url: str, bundles: int) -> str:
    """cProfile of transaction ingest in process (no HTTP): where the time goes."""
    from fhir_server import jsonio
    from fhir_server.interactions import Request
    from primage import db
    from primage.app import create_app
    from primage.settings import Settings

    db.upgrade(url)
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(Settings(data_dir=Path(tmp), database_url=url, secret_key="bench"))
        service = app.state.fhir
        docs = [
            json.dumps(
                {
                    "resourceType": "Bundle",
                    "type": "transaction",
                    "entry": [
                        {
                            "resource": observation(k),
                            "request": {"method": "POST", "url": "Observation"},
                        }
                        for k in range(100)
                    ],
                }
            ).encode()
            for _ in range(bundles)
        ]
        profiler = cProfile.Profile()
        profiler.enable()
        for doc in docs:
            service.handle(Request("POST", "", body=jsonio.loads(doc), base="http://x/fhir"))
        profiler.disable()
        app.state.database.engine.dispose()
    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(18)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument(
        "--pg-url", default=os.environ.get("PRIMAGE_BENCH_POSTGRES_URL", PG_DEFAULT)
    )
    parser.add_argument("--n", type=int, default=1500, help="requests per measurement")
    parser.add_argument(
        "--workers", type=int, default=1, help="uvicorn workers (primage and the bare app alike)"
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--no-index",
        action="store_true",
        help="primage without search indexing (the REST core alone)",
    )
    args = parser.parse_args()

    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    print(
        f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; "
        f"n={args.n}; runs={RUNS} (median)"
    )
    for kind in kinds:
        try:
            ctx = database(kind, args.pg_url)
            url = ctx.__enter__()
        except Exception as exc:
            print(f"\n== {kind}: skipped ({type(exc).__name__}: cannot reach the database)")
            continue
        try:
            print(f"\n== {kind}")
            from primage import db

            db.upgrade(url)
            with (
                tempfile.TemporaryDirectory() as data,
                serve_primage(url, data, args.workers, indexing=not args.no_index) as base,
            ):
                p = bench_primage(base, args.n)
            port = free_port()
            cmd = [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                "bench",
                "bare_app:app",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--workers",
                str(args.workers),
            ]
            with serve(cmd, {"BARE_DATABASE_URL": url}, port) as base:
                bare = bench_bare(base, args.n)
            core = bench_core_ceiling(url, max(args.n, 2000))
            report(kind, p, bare, core)
            if args.profile:
                print(profile_ingest(url, 10))
        finally:
            ctx.__exit__(None, None, None)


def report(kind: str, p: dict[str, float], bare: dict[str, float], core: float) -> None:
    rows = [
        ("create/s, 1 client", p["create_seq"], bare["create_seq"], "bare FastAPI"),
        ("create/s, 8 clients", p["create_8"], bare["create_8"], "bare FastAPI"),
        (
            "transaction ingest res/s (bundles of 100)",
            p["tx_resources_s"],
            core,
            "Core batch insert",
        ),
        (
            "transaction ingest res/s, 2 clients",
            p["tx_resources_s_2clients"],
            core,
            "Core batch insert",
        ),
        ("read/s, 1 client", p["read_seq"], None, ""),
        ("read/s, 8 clients", p["read_8"], None, ""),
        ("update/s, 1 client", p["update_seq"], None, ""),
    ]
    print(f"{'measure':44} {'primage':>10} {'ceiling':>10} {'ratio':>7}  ceiling")
    for name, value, ceiling, what in rows:
        ratio = f"{value / ceiling:6.0%}" if ceiling else ""
        ceil = f"{ceiling:10.0f}" if ceiling else ""
        print(f"{name:44} {value:10.0f} {ceil:>10} {ratio:>7}  {what}")
    print(
        f"create p50 {p['create_seq_p50_ms']:.2f} ms; "
        f"read p50 {p['read_p50_ms']:.2f} ms, p95 {p['read_p95_ms']:.2f} ms"
    )
    verdicts = [
        ("read p50 <= 5 ms", p["read_p50_ms"] <= 5),
        ("single creates >= 50% of bare FastAPI", p["create_seq"] >= 0.5 * bare["create_seq"]),
    ]
    if kind == "postgresql":
        best = max(p["tx_resources_s"], p["tx_resources_s_2clients"])
        verdicts.append(
            ("transaction ingest >= 2,000 res/s (best of 1 and 2 clients)", best >= 2000)
        )
    for name, ok in verdicts:
        print(f"target {name}: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
