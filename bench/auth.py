"""What OAuth2 costs: token issuance, and read latency with and without authorisation.

    python bench/auth.py                 # SQLite, 2 workers
    python bench/auth.py --reads 5000

Starts primage twice on the same kind of store, with PRIMAGE_AUTH_ENABLED=false and =true,
loads the same Patient into both, and measures in one run:
  token issuance/s for client_secret_basic and private_key_jwt (RS384), 1 and 4 clients;
  FHIR read and DICOMweb QIDO p50/p95 and requests/s with one client, without a token on
  the open server and with a bearer token on the protected one (validation, revocation
  check and scope check included); the ratio is the overhead. Target (issue #6): auth adds
  at most 10 % to read latency.
"""

from __future__ import annotations

import argparse
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


def latencies(http: httpx.Client, url: str, headers: dict[str, str], n: int) -> dict[str, float]:
    for _ in range(50):
        http.get(url, headers=headers).raise_for_status()  # (2xx only)
    times = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        r = http.get(url, headers=headers)
        times.append(time.perf_counter() - t)
        if r.status_code not in (200, 204):  # 204: a QIDO search without matches
            raise RuntimeError(f"{url}: {r.status_code}")
    total = time.perf_counter() - start
    times.sort()
    return {
        "p50_ms": statistics.median(times) * 1000,
        "p95_ms": times[int(0.95 * (n - 1))] * 1000,
        "req_s": n / total,
    }


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
    with tempfile.TemporaryDirectory() as tmp:
        results: dict[str, dict[str, float]] = {}
        tokens: dict[str, float] = {}
        for label, auth in (("open", False), ("auth", True)):
            data = Path(tmp) / label
            data.mkdir()
            url = f"sqlite:///{data}/primage.db"
            env = {"PRIMAGE_DATABASE_URL": url, "PRIMAGE_DATA_DIR": str(data)}
            extra = {
                "PRIMAGE_AUTH_TOKEN_RATE": "100000",
                "PRIMAGE_AUTH_TOKEN_BURST": "100000",
                "PRIMAGE_AUDIT_INDEX_INTERVAL": str(args.audit_index_interval),
            }
            with serve_primage(url, str(data), args.workers, auth=auth, extra=extra) as base:
                headers: dict[str, str] = {}
                if auth:
                    made = add_client(env, "system/*.cruds")
                    basic = (made["client_id"], made["client_secret"])
                    form = {"grant_type": "client_credentials", "scope": "system/*.cruds"}
                    secret_token = secret_token_fn(base, basic)
                    key = RSAKey.generate_key(2048, parameters={"kid": "bench"})
                    jwk_client = add_client(
                        env, "system/*.rs", {"keys": [key.as_dict(private=False)]}
                    )
                    jwt_token = jwt_token_fn(base, jwk_client["client_id"], key)
                    secret_token(0)  # warm
                    jwt_token(0)
                    tokens["secret_1"] = rate(secret_token, args.tokens, 1)
                    tokens["secret_4"] = rate(secret_token, args.tokens, 4)
                    tokens["jwt_1"] = rate(jwt_token, args.tokens, 1)
                    tokens["jwt_4"] = rate(jwt_token, args.tokens, 4)
                    with httpx.Client() as http:
                        token = http.post(f"{base}/oauth/token", data=form, auth=basic).json()
                    headers = {"Authorization": f"Bearer {token['access_token']}"}
                with httpx.Client(timeout=30) as http:
                    patient = {"resourceType": "Patient", "id": "bench", "gender": "female"}
                    http.put(
                        f"{base}/fhir/Patient/bench", json=patient, headers=headers
                    ).raise_for_status()
                    results[f"read_{label}"] = latencies(
                        http, f"{base}/fhir/Patient/bench", headers, args.reads
                    )
                    results[f"qido_{label}"] = latencies(
                        http, f"{base}/dicomweb/studies?PatientID=none", headers, args.reads
                    )
    print("\ntoken issuance, tokens/s (server on SQLite, 2 workers):")
    print(
        f"  client_secret_basic   1 client {tokens['secret_1']:8.0f}   4 clients {tokens['secret_4']:8.0f}"
    )
    print(
        f"  private_key_jwt RS384 1 client {tokens['jwt_1']:8.0f}   4 clients {tokens['jwt_4']:8.0f}"
    )
    print(f"\n{'':28} {'open':>9} {'with auth':>10} {'overhead':>9}")
    for name in ("read", "qido"):
        open_, auth = results[f"{name}_open"], results[f"{name}_auth"]
        for field in ("p50_ms", "p95_ms"):
            overhead = (auth[field] / open_[field] - 1) * 100
            print(
                f"{name + ' ' + field:28} {open_[field]:9.3f} {auth[field]:10.3f} {overhead:8.1f}%"
            )
        overhead = (open_["req_s"] / auth["req_s"] - 1) * 100
        print(f"{name + ' req/s':28} {open_['req_s']:9.0f} {auth['req_s']:10.0f} {overhead:8.1f}%")
    print("\n(target: auth adds <= 10 % to read latency)")


if __name__ == "__main__":
    main()
