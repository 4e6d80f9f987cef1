"""What OAuth2 costs: token issuance, and read latency with and without authorisation.

    python bench/auth.py                 # SQLite, 2 workers
    python bench/auth.py --reads 5000

Starts primage twice on the same kind of store, with PRIMAGE_AUTH_ENABLED=false and =true,
loads the same Patient into both, and measures in one run:
  token issuance/s for client_secret_basic and private_key_jwt (RS384), 1 and 4 clients;
  FHIR read and DICOMweb QIDO latency (p50, p95, p99, mean) with one client, without a token on
  the open server and with a bearer token on the protected one (validation, revocation
  check and scope check included); the ratio is the overhead. Target (issue #6): auth adds
  at most 10 % to read latency.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
from joserfc import jwt
from joserfc.jwk import RSAKey

ROOT = Path(__file__).resolve().parent.parent
sys.path[0:1] = [str(ROOT), str(ROOT / "bench")]
from fhir_crud import Clients, serve_primage, timed  # noqa: E402

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def add_client(env: dict[str, str], scope: str, jwks: dict | None = None) -> dict:
    args = [sys.executable, "-m", "primage.cli", "clients", "add", "bench", "--scope", scope]
    if jwks is not None:
        path = Path(env["PRIMAGE_DATA_DIR"]) / f"jwks-{uuid.uuid4().hex}.json"
        path.write_text(json.dumps(jwks))
        args += ["--jwks-file", str(path)]
    out = subprocess.run(
        args, env={**os.environ, **env}, cwd=ROOT, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout)


def secret_token_fn(base: str, basic: tuple[str, str]) -> Callable[[int], None]:
    form = {"grant_type": "client_credentials", "scope": "system/*.cruds"}
    clients = Clients(base)

    def secret_token(_: int) -> None:
        clients.http.post("/oauth/token", data=form, auth=basic).raise_for_status()

    return secret_token


def jwt_token_fn(base: str, client_id: str, key: RSAKey) -> Callable[[int], None]:
    clients = Clients(base)

    def jwt_token(_: int) -> None:
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": f"{base}/oauth/token",
            "exp": int(time.time()) + 240,
            "jti": uuid.uuid4().hex,
        }
        assertion = jwt.encode({"alg": "RS384", "kid": "bench"}, claims, key, algorithms=["RS384"])
        form = {
            "grant_type": "client_credentials",
            "scope": "system/*.rs",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        clients.http.post("/oauth/token", data=form).raise_for_status()

    return jwt_token


def rate(fn: Callable[[int], None], n: int, clients: int) -> float:
    """Calls per second over `clients` threads (bench/fhir_crud.py's runner)."""
    return timed(fn, n, clients)[0]


def latencies(
    http: httpx.Client, targets: dict[str, tuple[str, dict[str, str]]], n: int, block: int = 500
) -> dict[str, dict[str, float]]:
    """Latency of GET on each target, the targets taking turns in blocks of `block` requests.

    Taking turns puts drift (CPU frequency, page cache, the other server's background work)
    on both servers alike; back-to-back runs moved the ratio by +-5 % from run to run.
    Blocks rather than single requests: the audit trail's writer runs 0.25 s after the
    requests it records, and should slow the server that caused it."""
    times: dict[str, list[float]] = {label: [] for label in targets}
    for url, headers in targets.values():  # warm up
        for _ in range(50):
            http.get(url, headers=headers)
    for start in range(0, n, block):
        for label, (url, headers) in targets.items():
            for _ in range(min(block, n - start)):
                t = time.perf_counter()
                r = http.get(url, headers=headers)
                times[label].append(time.perf_counter() - t)
                if r.status_code not in (200, 204):  # 204: a QIDO search without matches
                    raise RuntimeError(f"{url}: {r.status_code}")
    out = {}
    for label, values in times.items():
        values.sort()
        out[label] = {
            "p50_ms": statistics.median(values) * 1000,
            "p95_ms": values[int(0.95 * (n - 1))] * 1000,
            "p99_ms": values[int(0.99 * (n - 1))] * 1000,
            "mean_ms": statistics.fmean(values) * 1000,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reads", type=int, default=3000)
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--audit-index-interval",
        type=float,
        default=10.0,
        help="seconds between batches that index staged AuditEvents (large: measure the "
        "request path alone; the indexing cost per event is printed separately)",
    )
    args = parser.parse_args()
    extra = {
        "PRIMAGE_AUTH_TOKEN_RATE": "100000",
        "PRIMAGE_AUTH_TOKEN_BURST": "100000",
        "PRIMAGE_AUDIT_INDEX_INTERVAL": str(args.audit_index_interval),
    }
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        bases: dict[str, str] = {}
        envs: dict[str, dict[str, str]] = {}
        for label, auth in (("open", False), ("auth", True)):
            data = Path(tmp) / label
            data.mkdir()
            url = f"sqlite:///{data}/primage.db"
            envs[label] = {"PRIMAGE_DATABASE_URL": url, "PRIMAGE_DATA_DIR": str(data)}
            bases[label] = stack.enter_context(
                serve_primage(url, str(data), args.workers, auth=auth, extra=extra)
            )
        base = bases["auth"]
        made = add_client(envs["auth"], "system/*.cruds")
        basic = (made["client_id"], made["client_secret"])
        secret_token = secret_token_fn(base, basic)
        key = RSAKey.generate_key(2048, parameters={"kid": "bench"})
        jwk_client = add_client(envs["auth"], "system/*.rs", {"keys": [key.as_dict(private=False)]})
        jwt_token = jwt_token_fn(base, jwk_client["client_id"], key)
        secret_token(0)  # warm
        jwt_token(0)
        tokens = {
            "secret_1": rate(secret_token, args.tokens, 1),
            "secret_4": rate(secret_token, args.tokens, 4),
            "jwt_1": rate(jwt_token, args.tokens, 1),
            "jwt_4": rate(jwt_token, args.tokens, 4),
        }
        form = {"grant_type": "client_credentials", "scope": "system/*.cruds"}
        with httpx.Client(timeout=30) as http:
            token = http.post(f"{base}/oauth/token", data=form, auth=basic).json()
            headers = {
                "open": {},
                "auth": {"Authorization": f"Bearer {token['access_token']}"},
            }
            patient = {"resourceType": "Patient", "id": "bench", "gender": "female"}
            for label in bases:
                http.put(
                    f"{bases[label]}/fhir/Patient/bench", json=patient, headers=headers[label]
                ).raise_for_status()
            results = {}
            for name, path in (
                ("read", "/fhir/Patient/bench"),
                ("qido", "/dicomweb/studies?PatientID=none"),
            ):
                targets = {label: (bases[label] + path, headers[label]) for label in bases}
                results[name] = latencies(http, targets, args.reads)
    print("\ntoken issuance, tokens/s (server on SQLite, 2 workers):")
    print(
        f"  client_secret_basic   1 client {tokens['secret_1']:8.0f}   4 clients {tokens['secret_4']:8.0f}"
    )
    print(
        f"  private_key_jwt RS384 1 client {tokens['jwt_1']:8.0f}   4 clients {tokens['jwt_4']:8.0f}"
    )
    print(
        f"\nlatency, one client, the two servers taking turns in blocks of 500 ({args.reads} requests each):"
    )
    print(f"{'':28} {'open':>9} {'with auth':>10} {'overhead':>9}")
    for name, result in results.items():
        open_, auth = result["open"], result["auth"]
        for field in ("p50_ms", "p95_ms", "p99_ms", "mean_ms"):
            overhead = (auth[field] / open_[field] - 1) * 100
            print(
                f"{name + ' ' + field:28} {open_[field]:9.3f} {auth[field]:10.3f} {overhead:8.1f}%"
            )
    print("\n(target: auth adds <= 10 % to read latency)")


if __name__ == "__main__":
    main()
