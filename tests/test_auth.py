"""OAuth2 (SMART Backend Services) end to end: the token endpoint, tokens at the resource
server, and the scope table over every FHIR interaction and DICOMweb service."""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from click.testing import CliRunner
from fastapi import FastAPI
from fhir.resources.R4B.auditevent import AuditEvent
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey
from sqlalchemy import select
from starlette.testclient import TestClient

from fhir_server.audit import DCM
from primage.auth.schema import oauth_client
from primage.auth.server import RateLimit
from primage.cli import main
from primage.settings import Settings
from tests import dicom_data as data
from tests.conftest import serving

BASE = "http://testserver"
TOKEN_URL = f"{BASE}/oauth/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def register(app: FastAPI, scope: str, **kwargs: Any) -> tuple[str, str | None]:
    client, secret = app.state.auth.clients.add(f"test-{uuid.uuid4().hex[:6]}", scope, **kwargs)
    return client.client_id, secret


def token_for(web: TestClient, app: FastAPI, scope: str, allowed: str | None = None) -> str:
    client_id, secret = register(app, allowed or scope)
    r = web.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "scope": scope},
        auth=(client_id, secret),
    )
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- discovery ---------------------------------------------------------------------------------


def test_discovery_documents(web: TestClient) -> None:
    for path in (
        "/.well-known/smart-configuration",
        "/fhir/.well-known/smart-configuration",
        "/.well-known/oauth-authorization-server",
    ):
        doc = web.get(path).json()
        assert doc["token_endpoint"] == TOKEN_URL
        assert doc["jwks_uri"] == f"{BASE}/oauth/jwks"
        assert "private_key_jwt" in doc["token_endpoint_auth_methods_supported"]
        assert set(doc["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}
        assert "client-confidential-asymmetric" in doc["capabilities"]
    jwks = web.get("/oauth/jwks").json()
    assert jwks["keys"] and all("d" not in k and "p" not in k for k in jwks["keys"])
    assert web.get("/fhir/metadata").status_code == 200  # the CapabilityStatement is public


# --- token endpoint: secrets ---------------------------------------------------------------------


def test_client_secret_basic_and_post(web: TestClient, auth_app: FastAPI) -> None:
    client_id, secret = register(auth_app, "system/*.rs")
    form = {"grant_type": "client_credentials", "scope": "system/Patient.rs system/Observation.r"}
    basic = web.post("/oauth/token", data=form, auth=(client_id, secret))
    assert basic.status_code == 200
    body = basic.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 300
    assert body["scope"] == "system/Patient.rs system/Observation.r"
    assert basic.headers["cache-control"] == "no-store"
    post = web.post("/oauth/token", data={**form, "client_id": client_id, "client_secret": secret})
    assert post.status_code == 200
    claims = jwt.decode(post.json()["access_token"], _server_keys(auth_app)).claims
    assert claims["sub"] == client_id and claims["iss"] == BASE and claims["aud"] == BASE


def _server_keys(app: FastAPI) -> Any:
    return app.state.auth.tokens.keys.verification_keys()


@pytest.mark.parametrize(
    ("form", "auth", "status", "error"),
    [
        (
            {"grant_type": "client_credentials", "scope": "system/*.rs"},
            "wrong",
            401,
            "invalid_client",
        ),
        (
            {"grant_type": "client_credentials", "scope": "system/*.rs"},
            "unknown",
            401,
            "invalid_client",
        ),
        ({"grant_type": "client_credentials", "scope": "system/*.rs"}, None, 401, "invalid_client"),
        ({"grant_type": "password", "scope": "system/*.rs"}, "ok", 400, "unsupported_grant_type"),
        ({"grant_type": "client_credentials"}, "ok", 400, "invalid_scope"),
        (
            {"grant_type": "client_credentials", "scope": "system/*.cruds"},
            "ok",
            400,
            "invalid_scope",
        ),
        (
            {"grant_type": "client_credentials", "scope": "system/Patient.sr"},
            "ok",
            400,
            "invalid_scope",
        ),
    ],
)
def test_token_errors(
    web: TestClient, auth_app: FastAPI, form: dict, auth: str | None, status: int, error: str
) -> None:
    client_id, secret = register(auth_app, "system/*.rs")
    credentials = {
        "ok": (client_id, secret),
        "wrong": (client_id, "not-the-secret"),
        "unknown": ("no-such-client", "x"),
        None: None,
    }[auth]
    r = web.post("/oauth/token", data=form, auth=credentials)
    assert r.status_code == status
    assert r.json()["error"] == error
    if status == 401 and auth:
        assert r.headers["www-authenticate"].startswith("Basic")


def test_a_disabled_client_gets_no_token(web: TestClient, auth_app: FastAPI) -> None:
    client_id, secret = register(auth_app, "system/*.rs")
    live = web.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "scope": "system/*.rs"},
        auth=(client_id, secret),
    ).json()["access_token"]
    auth_app.state.auth.clients.disable(client_id)
    auth_app.state.auth.tokens.revocations.refresh()  # as every worker does each second
    assert web.get("/fhir/Patient", headers=bearer(live)).status_code == 401
    r = web.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "scope": "system/*.rs"},
        auth=(client_id, secret),
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


def test_secrets_are_stored_as_hashes_and_never_logged(
    web: TestClient, auth_app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client_id, secret = register(auth_app, "system/*.rs")
    token = web.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "scope": "system/*.rs"},
        auth=(client_id, secret),
    ).json()["access_token"]
    web.get("/fhir/Patient", headers=bearer(token))
    web.get("/fhir/Patient", headers=bearer(token + "x"))
    with auth_app.state.database.read() as repo:
        stored = repo.conn.execute(
            select(oauth_client.c.secret_hash).where(oauth_client.c.client_id == client_id)
        ).scalar_one()
    assert secret not in stored
    assert secret not in caplog.text and token not in caplog.text


def test_token_requests_are_rate_limited(
    web: TestClient, auth_app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth_app.state.auth, "limit", RateLimit(0.001, 2))
    client_id, secret = register(auth_app, "system/*.rs")
    form = {"grant_type": "client_credentials", "scope": "system/*.rs"}
    codes = [web.post("/oauth/token", data=form, auth=(client_id, secret)) for _ in range(3)]
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert codes[-1].headers["retry-after"] == "1"


# --- token endpoint: SMART Backend Services private_key_jwt --------------------------------------


def _jwks_client(app: FastAPI, kind: str) -> tuple[str, Any, str]:
    if kind == "RS384":
        key = RSAKey.generate_key(2048, parameters={"kid": uuid.uuid4().hex})
    else:
        key = ECKey.generate_key("P-384", parameters={"kid": uuid.uuid4().hex})
    jwks = {"keys": [{**key.as_dict(private=False), "alg": kind}]}
    client_id, secret = register(app, "system/*.rs", jwks=jwks)
    assert secret is None
    return client_id, key, kind


def _assertion(client_id: str, key: Any, alg: str, **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": TOKEN_URL,
        "exp": now + 240,
        "jti": uuid.uuid4().hex,
        **overrides,
    }
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=[alg])


def _with_assertion(web: TestClient, assertion: str) -> httpx.Response:
    return web.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "scope": "system/*.rs",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
    )


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_private_key_jwt(web: TestClient, auth_app: FastAPI, alg: str) -> None:
    client_id, key, _ = _jwks_client(auth_app, alg)
    assertion = _assertion(client_id, key, alg)
    first = _with_assertion(web, assertion)
    assert first.status_code == 200, first.text
    replay = _with_assertion(web, assertion)
    assert replay.status_code == 401 and "replay" in replay.json()["error_description"]


@pytest.mark.parametrize(
    "mutation",
    ["expired", "too_long", "wrong_aud", "other_key", "wrong_iss", "alg_none", "hs256", "rs256"],
)
def test_bad_client_assertions(web: TestClient, auth_app: FastAPI, mutation: str) -> None:
    client_id, key, alg = _jwks_client(auth_app, "RS384")
    now = int(time.time())
    if mutation == "expired":
        assertion = _assertion(client_id, key, alg, exp=now - 120)
    elif mutation == "too_long":
        assertion = _assertion(client_id, key, alg, exp=now + 3600)
    elif mutation == "wrong_aud":
        assertion = _assertion(client_id, key, alg, aud="https://elsewhere.example/token")
    elif mutation == "other_key":
        stranger = RSAKey.generate_key(2048, parameters={"kid": key.kid})
        assertion = _assertion(client_id, stranger, alg)
    elif mutation == "wrong_iss":
        assertion = _assertion(client_id, key, alg, sub="someone-else")
    elif mutation == "alg_none":
        header = _b64({"alg": "none", "typ": "JWT"})
        body = _b64({"iss": client_id, "sub": client_id, "aud": TOKEN_URL, "exp": now + 60})
        assertion = f"{header}.{body}."
    elif mutation == "hs256":  # the public key's bytes as an HMAC secret
        secret = OctKey.import_key(json.dumps(key.as_dict(private=False)).encode())
        claims = {"iss": client_id, "sub": client_id, "aud": TOKEN_URL, "exp": now + 60}
        claims["jti"] = uuid.uuid4().hex
        assertion = jwt.encode({"alg": "HS256"}, claims, secret, algorithms=["HS256"])
    else:  # an algorithm SMART does not list
        assertion = _assertion(client_id, key, "RS256")
    r = _with_assertion(web, assertion)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


def _b64(obj: dict) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()


# --- resource server ------------------------------------------------------------------------------


def test_no_token_is_401_with_a_bearer_challenge(web: TestClient) -> None:
    fhir = web.get("/fhir/Patient")
    assert fhir.status_code == 401
    assert fhir.headers["www-authenticate"] == "Bearer"
    assert fhir.json()["resourceType"] == "OperationOutcome"
    dicom = web.get("/dicomweb/studies")
    assert dicom.status_code == 401 and dicom.headers["warning"].startswith("299 ")
    assert web.get("/healthz").status_code == 200


def _signed(app: FastAPI, **claims: Any) -> str:
    """A token signed by the server's own key, with the given claims changed."""
    key = app.state.auth.tokens.keys.signing_key()
    now = int(time.time())
    body = {
        "iss": BASE,
        "aud": BASE,
        "sub": "someone",
        "scope": "system/*.cruds",
        "iat": now,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
        **claims,
    }
    return jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "at+jwt"}, body, key)


@pytest.mark.parametrize(
    "forgery", ["other_key", "tampered", "expired", "wrong_aud", "wrong_iss", "alg_none", "garbage"]
)
def test_forged_tokens_are_401(web: TestClient, auth_app: FastAPI, forgery: str) -> None:
    good = token_for(web, auth_app, "system/*.rs")
    if forgery == "other_key":
        stranger = RSAKey.generate_key(2048, parameters={"kid": "stranger"})
        claims = jwt.decode(good, _server_keys(auth_app)).claims
        token = jwt.encode({"alg": "RS256", "kid": "stranger", "typ": "at+jwt"}, claims, stranger)
    elif forgery == "tampered":
        header, payload, signature = good.split(".")
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=="))
        claims["scope"] = "system/*.cruds"
        token = f"{header}.{_b64(claims)}.{signature}"
    elif forgery == "expired":
        token = _signed(auth_app, exp=int(time.time()) - 120)
    elif forgery == "wrong_aud":
        token = _signed(auth_app, aud="https://another-server.example")
    elif forgery == "wrong_iss":
        token = _signed(auth_app, iss="https://another-server.example")
    elif forgery == "alg_none":
        token = f"{_b64({'alg': 'none', 'typ': 'at+jwt'})}.{_b64({'sub': 'x'})}."
    else:
        token = "not-a-jwt"
    r = web.get("/fhir/Patient", headers=bearer(token))
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_introspection_and_revocation(web: TestClient, auth_app: FastAPI) -> None:
    client_id, secret = register(auth_app, "system/*.rs")
    form = {"grant_type": "client_credentials", "scope": "system/*.rs"}
    token = web.post("/oauth/token", data=form, auth=(client_id, secret)).json()["access_token"]
    info = web.post("/oauth/introspect", data={"token": token}, auth=(client_id, secret)).json()
    assert info["active"] is True and info["client_id"] == client_id
    assert info["scope"] == "system/*.rs"
    unauthenticated = web.post("/oauth/introspect", data={"token": token})
    assert unauthenticated.status_code == 401
    other_id, other_secret = register(auth_app, "system/*.rs")
    foreign = web.post("/oauth/introspect", data={"token": token}, auth=(other_id, other_secret))
    assert foreign.json() == {"active": False}  # only a client's own tokens
    # another client cannot revoke it
    web.post("/oauth/revoke", data={"token": token}, auth=(other_id, other_secret))
    assert web.get("/fhir/Patient", headers=bearer(token)).status_code == 200
    assert (
        web.post("/oauth/revoke", data={"token": token}, auth=(client_id, secret)).status_code
        == 200
    )
    assert web.get("/fhir/Patient", headers=bearer(token)).status_code == 401
    info = web.post("/oauth/introspect", data={"token": token}, auth=(client_id, secret)).json()
    assert info == {"active": False}


def test_key_rotation_keeps_old_tokens_valid(web: TestClient, auth_app: FastAPI) -> None:
    before = token_for(web, auth_app, "system/*.rs")
    kid = auth_app.state.auth.tokens.keys.rotate()
    after = token_for(web, auth_app, "system/*.rs")
    assert jwt.decode(after, _server_keys(auth_app)).header["kid"] == kid
    kids = {k["kid"] for k in web.get("/oauth/jwks").json()["keys"]}
    assert kid in kids and jwt.decode(before, _server_keys(auth_app)).header["kid"] in kids
    assert web.get("/fhir/Patient", headers=bearer(before)).status_code == 200
    assert web.get("/fhir/Patient", headers=bearer(after)).status_code == 200


# --- the scope table over every interaction -------------------------------------------------------


@pytest.fixture(scope="module")
def seeded(web: TestClient, auth_app: FastAPI) -> dict[str, str]:
    admin = token_for(web, auth_app, "system/*.cruds")
    patient = web.post(
        "/fhir/Patient", json={"resourceType": "Patient", "gender": "female"}, headers=bearer(admin)
    ).json()
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "scope test"},
        "subject": {"reference": f"Patient/{patient['id']}"},
    }
    obs = web.post("/fhir/Observation", json=observation, headers=bearer(admin)).json()
    study = data.study(ct=1, mr=0, patient_id="PAT-AUTH")
    r = web.post(
        "/dicomweb/studies",
        content=data.multipart([data.part10(ds) for ds in study]),
        headers={**bearer(admin), "Content-Type": data.stow_type()},
    )
    assert r.status_code == 200
    return {"patient": patient["id"], "observation": obs["id"], "study": study[0].StudyInstanceUID}


def _request(web: TestClient, what: str, seeded: dict[str, str], token: str) -> int:
    h = bearer(token)
    p, o = seeded["patient"], seeded["observation"]
    patient = {"resourceType": "Patient", "gender": "male"}
    if what == "read":
        return web.get(f"/fhir/Patient/{p}", headers=h).status_code
    if what == "vread":
        return web.get(f"/fhir/Patient/{p}/_history/1", headers=h).status_code
    if what == "search":
        return web.get("/fhir/Patient", headers=h).status_code
    if what == "search-system":
        return web.get("/fhir?_type=Patient", headers=h).status_code
    if what == "history-instance":
        return web.get(f"/fhir/Patient/{p}/_history", headers=h).status_code
    if what == "history-type":
        return web.get("/fhir/Patient/_history", headers=h).status_code
    if what == "history-system":
        return web.get("/fhir/_history", headers=h).status_code
    if what == "create":
        return web.post("/fhir/Patient", json=patient, headers=h).status_code
    if what == "update":
        return web.put(f"/fhir/Patient/{p}", json={**patient, "id": p}, headers=h).status_code
    if what == "patch":
        ops = [{"op": "replace", "path": "/gender", "value": "other"}]
        headers = {**h, "Content-Type": "application/json-patch+json"}
        return web.patch(f"/fhir/Patient/{p}", content=json.dumps(ops), headers=headers).status_code
    if what == "delete":
        return web.delete(f"/fhir/Observation/{o}-none", headers=h).status_code
    if what == "conditional-create":
        headers = {**h, "If-None-Exist": f"_id={p}"}
        return web.post("/fhir/Patient", json=patient, headers=headers).status_code
    if what == "transaction-if-none-exist":
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": patient,
                    "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"_id={p}"},
                }
            ],
        }
        return web.post("/fhir", json=bundle, headers=h).status_code
    if what == "chain":
        return web.get("/fhir/Observation?subject:Patient.gender=female", headers=h).status_code
    if what == "has":
        return web.get("/fhir/Patient?_has:Observation:subject:status=final", headers=h).status_code
    if what == "batch-read":
        bundle = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"request": {"method": "GET", "url": f"Patient/{p}"}}],
        }
        entry = web.post("/fhir", json=bundle, headers=h).json()["entry"][0]
        return int(entry["response"]["status"].split()[0])
    if what == "transaction":
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"resource": patient, "request": {"method": "POST", "url": "Patient"}}],
        }
        return web.post("/fhir", json=bundle, headers=h).status_code
    study = seeded["study"]
    if what == "qido":
        return web.get("/dicomweb/studies", headers=h).status_code
    if what == "wado":
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        return web.get(f"/dicomweb/studies/{study}", headers={**h, "Accept": accept}).status_code
    if what == "metadata":
        return web.get(f"/dicomweb/studies/{study}/metadata", headers=h).status_code
    if what == "stow":
        one = data.study(ct=1, mr=0)
        return web.post(
            "/dicomweb/studies",
            content=data.multipart([data.part10(ds) for ds in one]),
            headers={**h, "Content-Type": data.stow_type()},
        ).status_code
    if what == "dicom-delete":
        return web.delete(
            f"/dicomweb/studies/{data.study(ct=1, mr=0)[0].StudyInstanceUID}", headers=h
        ).status_code
    raise AssertionError(what)


ALLOWED = {200, 201, 204, 404}  # 404: allowed through, nothing there (delete of a missing id)
MATRIX = [
    # (granted scope, interaction, allowed?)
    ("system/Patient.r", "read", True),
    ("system/Patient.r", "vread", True),
    ("system/Patient.r", "history-instance", True),
    ("system/Patient.r", "search", False),
    ("system/Patient.s", "search", True),
    ("system/Patient.s", "read", False),
    ("system/Patient.s", "search-system", True),
    ("system/Patient.s", "history-type", True),
    ("system/Patient.rs", "history-system", False),  # all types: needs system/*
    ("system/*.rs", "history-system", False),  # all types include AuditEvents
    ("system/*.rs primage/audit.read", "history-system", True),
    ("system/Patient.read", "search", True),  # SMART v1
    ("system/Patient.read", "create", False),
    ("system/Patient.write", "create", True),
    ("system/Patient.write", "read", False),
    ("system/Patient.c", "create", True),
    ("system/Patient.c", "update", False),
    ("system/Patient.u", "update", True),
    ("system/Patient.u", "patch", False),  # a patch answers with the whole resource
    ("system/Patient.ru", "patch", True),
    ("system/Patient.c", "conditional-create", False),  # If-None-Exist searches
    ("system/Patient.cs", "conditional-create", False),  # ...and may answer a stored one
    ("system/Patient.crs", "conditional-create", True),
    ("system/Patient.c", "transaction-if-none-exist", False),
    ("system/Observation.rs", "chain", False),  # the chain looks into Patient
    ("system/Observation.rs system/Patient.s", "chain", True),
    ("system/Patient.rs", "has", False),  # _has looks into Observation
    ("system/Patient.rs system/Observation.s", "has", True),
    ("system/Observation.d", "delete", True),
    ("system/Patient.d", "delete", False),
    ("system/Patient.c", "transaction", True),
    ("system/Patient.r", "transaction", False),
    ("system/Patient.c", "batch-read", False),  # a batch entry is checked like the request
    ("system/Observation.cruds", "read", False),
    ("system/ImagingStudy.s", "qido", True),
    ("system/ImagingStudy.r", "qido", False),
    ("system/ImagingStudy.r", "wado", True),
    ("system/ImagingStudy.r", "metadata", True),
    ("system/ImagingStudy.s", "wado", False),
    ("system/ImagingStudy.c", "stow", True),
    ("system/ImagingStudy.rs", "stow", False),
    ("system/ImagingStudy.d", "dicom-delete", True),
    ("system/ImagingStudy.rs", "dicom-delete", False),
    ("system/Patient.cruds", "qido", False),
]


@pytest.mark.parametrize(("scope", "what", "allowed"), MATRIX)
def test_scope_matrix(
    web: TestClient, auth_app: FastAPI, seeded: dict, scope: str, what: str, allowed: bool
) -> None:
    status = _request(web, what, seeded, token_for(web, auth_app, scope))
    if allowed:
        assert status in ALLOWED, (scope, what, status)
    else:
        assert status == 403, (scope, what, status)


def test_forbidden_answers_in_each_apis_format(web: TestClient, auth_app: FastAPI) -> None:
    token = token_for(web, auth_app, "system/Observation.rs")
    fhir = web.get("/fhir/Patient", headers=bearer(token))
    assert fhir.status_code == 403 and fhir.json()["issue"][0]["code"] == "forbidden"
    dicom = web.get("/dicomweb/studies", headers=bearer(token))
    assert dicom.status_code == 403 and dicom.headers["warning"].startswith("299 ")


def test_included_resources_need_their_own_read_scope(
    web: TestClient, auth_app: FastAPI, seeded: dict
) -> None:
    query = f"/fhir/Observation?_id={seeded['observation']}&_include=Observation:subject"
    both = token_for(web, auth_app, "system/Observation.rs system/Patient.r")
    types = [
        e["resource"]["resourceType"] for e in web.get(query, headers=bearer(both)).json()["entry"]
    ]
    assert sorted(types) == ["Observation", "Patient"]
    only = token_for(web, auth_app, "system/Observation.rs")
    types = [
        e["resource"]["resourceType"] for e in web.get(query, headers=bearer(only)).json()["entry"]
    ]
    assert types == ["Observation"]


# --- a real OAuth2 client library, over real HTTP -----------------------------------------


@pytest.fixture(scope="module")
def auth_live(auth_app: FastAPI) -> Iterator[str]:
    yield from serving(auth_app)


def test_backend_services_flow_with_authlib(auth_live: str, auth_app: FastAPI) -> None:
    """authlib's OAuth2 client: discovery, private_key_jwt (RS384), then FHIR and DICOMweb."""
    config = httpx.get(f"{auth_live}/.well-known/smart-configuration").json()
    client_id, key, alg = _jwks_client(auth_app, "RS384")
    with OAuth2Client(
        client_id=client_id,
        client_secret=key,
        # SMART: the assertion may live five minutes at most (authlib's default is an hour)
        token_endpoint_auth_method=PrivateKeyJWT(
            config["token_endpoint"], claims={"exp": int(time.time()) + 240}, alg=alg
        ),
        scope="system/Patient.rs system/ImagingStudy.rs",
    ) as session:
        token = session.fetch_token(config["token_endpoint"], grant_type="client_credentials")
        assert token["scope"] == "system/Patient.rs system/ImagingStudy.rs"
        assert session.get(f"{auth_live}/fhir/Patient").status_code == 200
        assert session.get(f"{auth_live}/dicomweb/studies").status_code == 200
        assert session.get(f"{auth_live}/fhir/Observation").status_code == 403


# --- CLI ----------------------------------------------------------------------------------


def test_clients_cli(settings: Settings, monkeypatch: pytest.MonkeyPatch, web: TestClient) -> None:
    monkeypatch.setenv("PRIMAGE_DATABASE_URL", settings.database())
    monkeypatch.setenv("PRIMAGE_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("PRIMAGE_SECRET_KEY", "test-secret-not-for-production")
    runner = CliRunner()
    added = runner.invoke(
        main, ["clients", "add", "hospital-a", "--scope", "system/*.rs", "--site", "A"]
    )
    assert added.exit_code == 0, added.output
    made = json.loads(added.output)
    assert made["site"] == "A" and made["client_secret"]
    listed = runner.invoke(main, ["clients", "list"])
    assert made["client_id"] in listed.output and made["client_secret"] not in listed.output
    form = {"grant_type": "client_credentials", "scope": "system/*.rs"}
    assert (
        web.post(
            "/oauth/token", data=form, auth=(made["client_id"], made["client_secret"])
        ).status_code
        == 200
    )
    rotated = json.loads(
        runner.invoke(main, ["clients", "rotate-secret", made["client_id"]]).output
    )
    old = web.post("/oauth/token", data=form, auth=(made["client_id"], made["client_secret"]))
    new = web.post("/oauth/token", data=form, auth=(made["client_id"], rotated["client_secret"]))
    assert (old.status_code, new.status_code) == (401, 200)
    assert runner.invoke(main, ["clients", "disable", made["client_id"]]).exit_code == 0
    assert (
        web.post(
            "/oauth/token", data=form, auth=(made["client_id"], rotated["client_secret"])
        ).status_code
        == 401
    )
    bad = runner.invoke(main, ["clients", "add", "x", "--scope", "launch/patient"])
    assert bad.exit_code != 0 and "Unknown scope" in bad.output


# --- audit trail ------------------------------------------------------------------------------


def _events(web: TestClient, app: FastAPI, query: str) -> list[dict]:
    app.state.audit.flush()
    token = token_for(web, app, "primage/audit.read")
    r = web.get(f"/fhir/AuditEvent?{query}&_count=200", headers=bearer(token))
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


def test_writes_reads_and_refusals_are_audited(web: TestClient, auth_app: FastAPI) -> None:
    client_id, secret = register(auth_app, "system/Patient.cruds")
    form = {"grant_type": "client_credentials", "scope": "system/Patient.cruds"}
    token = web.post("/oauth/token", data=form, auth=(client_id, secret)).json()["access_token"]
    created = web.post(
        "/fhir/Patient", json={"resourceType": "Patient"}, headers=bearer(token)
    ).json()
    web.get(f"/fhir/Patient/{created['id']}", headers=bearer(token))
    web.get("/fhir/Patient?gender=female", headers=bearer(token))
    web.get("/fhir/Observation", headers=bearer(token))  # 403
    web.post("/fhir/Patient", json={"resourceType": "Patient", "gender": 7}, headers=bearer(token))
    events = _events(web, auth_app, f"altid={client_id}")
    seen = {(e["subtype"][0]["code"], e["action"], e["outcome"]) for e in events}
    assert {
        ("create", "C", "0"),
        ("read", "R", "0"),
        ("search-type", "E", "0"),
        ("search-type", "E", "4"),
        ("create", "C", "4"),
    } <= seen
    write = next(e for e in events if e["subtype"][0]["code"] == "create" and e["outcome"] == "0")
    assert write["entity"][0]["what"]["reference"] == f"Patient/{created['id']}"
    assert write["agent"][0]["network"]["address"] == "testclient"
    search = next(e for e in events if e["outcome"] == "0" and "query" in e["entity"][0])
    assert base64.b64decode(search["entity"][0]["query"]).decode() == "gender=female"
    for e in events:
        AuditEvent.model_validate(e)
        assert token not in json.dumps(e) and secret not in json.dumps(e)


def test_audit_events_cannot_be_changed_or_read_without_the_audit_scope(
    web: TestClient, auth_app: FastAPI
) -> None:
    token_for(web, auth_app, "system/*.rs")  # leaves at least one event behind
    event = _events(web, auth_app, "_count=1")[0]
    admin = token_for(web, auth_app, "system/*.cruds")
    assert web.delete(f"/fhir/AuditEvent/{event['id']}", headers=bearer(admin)).status_code == 403
    assert (
        web.put(f"/fhir/AuditEvent/{event['id']}", json=event, headers=bearer(admin)).status_code
        == 403
    )
    forged = {k: v for k, v in event.items() if k not in ("id", "meta")}
    assert web.post("/fhir/AuditEvent", json=forged, headers=bearer(admin)).status_code == 403
    assert web.get("/fhir/AuditEvent", headers=bearer(admin)).status_code == 403
    auditor = token_for(web, auth_app, "primage/audit.read")
    assert web.delete(f"/fhir/AuditEvent/{event['id']}", headers=bearer(auditor)).status_code == 403


def test_transactions_and_dicomweb_are_audited(web: TestClient, auth_app: FastAPI) -> None:
    client_id, secret = register(auth_app, "system/*.cruds")
    form = {"grant_type": "client_credentials", "scope": "system/*.cruds"}
    token = web.post("/oauth/token", data=form, auth=(client_id, secret)).json()["access_token"]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient"},
                "request": {"method": "POST", "url": "Patient"},
            }
        ],
    }
    done = web.post("/fhir", json=bundle, headers=bearer(token)).json()
    location = done["entry"][0]["response"]["location"].split("/_history")[0].split("/fhir/")[-1]
    study = data.study(ct=1, mr=0)
    web.post(
        "/dicomweb/studies",
        content=data.multipart([data.part10(ds) for ds in study]),
        headers={**bearer(token), "Content-Type": data.stow_type()},
    )
    uid = study[0].StudyInstanceUID
    web.get(f"/dicomweb/studies?StudyInstanceUID={uid}", headers=bearer(token))
    web.get(f"/dicomweb/studies/{uid}/metadata", headers=bearer(token))
    events = _events(web, auth_app, f"altid={client_id}")
    transaction = next(e for e in events if e["subtype"][0]["code"] == "transaction")
    assert transaction["entity"][0]["what"]["reference"] == location
    codes = {e["subtype"][0]["code"] for e in events}
    assert {"110107", "110112", "110103"} <= codes
    stow = next(e for e in events if e["subtype"][0]["code"] == "110107")
    assert stow["entity"][0]["what"]["identifier"]["value"] == f"urn:oid:{uid}"
    for e in events:
        AuditEvent.model_validate(e)


def test_security_headers(web: TestClient) -> None:
    for r in (web.get("/fhir/metadata"), web.get("/dicomweb/studies"), web.get("/healthz")):
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert "strict-transport-security" not in r.headers  # plain HTTP here


def test_batch_entries_are_audited_in_their_own_transactions(
    web: TestClient, auth_app: FastAPI
) -> None:
    client_id, secret = register(auth_app, "system/*.cruds")
    form = {"grant_type": "client_credentials", "scope": "system/*.cruds"}
    token = web.post("/oauth/token", data=form, auth=(client_id, secret)).json()["access_token"]
    made = web.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=bearer(token)).json()
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "DELETE", "url": f"Patient/{made['id']}"}},
            {"request": {"method": "GET", "url": "Patient/no-such-patient"}},
        ],
    }
    assert web.post("/fhir", json=batch, headers=bearer(token)).status_code == 200
    events = _events(web, auth_app, f"altid={client_id}")
    deleted = [e for e in events if e["subtype"][0]["code"] == "delete"]
    assert deleted and deleted[0]["entity"][0]["what"]["reference"] == f"Patient/{made['id']}"
    assert any(e["subtype"][0]["code"] == "read" and e["outcome"] == "4" for e in events)


def test_refused_tokens_are_audited_without_the_token(web: TestClient, auth_app: FastAPI) -> None:
    token = token_for(web, auth_app, "system/*.rs")
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    probe = f"Patient/probe-{uuid.uuid4().hex[:8]}"
    assert web.get(f"/fhir/{probe}", headers=bearer(tampered)).status_code == 401
    anonymous = f"Patient/anonymous-{uuid.uuid4().hex[:8]}"
    assert web.get(f"/fhir/{anonymous}").status_code == 401
    events = _events(web, auth_app, f"type={DCM}|110114")
    refused = [e for e in events if e["entity"][0]["name"] == f"GET /fhir/{probe}"]
    assert len(refused) == 1
    assert refused[0]["outcome"] == "4"
    assert refused[0]["agent"][0]["network"]["address"] == "testclient"
    assert tampered not in json.dumps(refused[0]) and token not in json.dumps(refused[0])
    AuditEvent.model_validate(refused[0])
    assert not [e for e in events if e["entity"][0]["name"] == f"GET /fhir/{anonymous}"]


def test_staged_audit_events_are_indexed_before_anyone_reads_them(
    web: TestClient, auth_app: FastAPI
) -> None:
    client_id, secret = register(auth_app, "system/Patient.rs")
    form = {"grant_type": "client_credentials", "scope": "system/Patient.rs"}
    token = web.post("/oauth/token", data=form, auth=(client_id, secret)).json()["access_token"]
    web.get("/fhir/Patient?gender=other", headers=bearer(token))  # queued, not yet indexed
    auditor = token_for(web, auth_app, "primage/audit.read")
    found = web.get(f"/fhir/AuditEvent?altid={client_id}", headers=bearer(auditor)).json()
    assert [e["resource"]["subtype"][0]["code"] for e in found.get("entry", [])] == ["search-type"]


def test_refused_dicomweb_writes_are_audited(web: TestClient, auth_app: FastAPI) -> None:
    client_id, secret = register(auth_app, "system/ImagingStudy.rs")
    form = {"grant_type": "client_credentials", "scope": "system/ImagingStudy.rs"}
    token = web.post("/oauth/token", data=form, auth=(client_id, secret)).json()["access_token"]
    study = data.study(ct=1, mr=0)
    r = web.post(
        "/dicomweb/studies",
        content=data.multipart([data.part10(ds) for ds in study]),
        headers={**bearer(token), "Content-Type": data.stow_type()},
    )
    assert r.status_code == 403
    assert (
        web.delete(
            f"/dicomweb/studies/{study[0].StudyInstanceUID}", headers=bearer(token)
        ).status_code
        == 403
    )
    events = _events(web, auth_app, f"altid={client_id}")
    assert {(e["subtype"][0]["code"], e["outcome"]) for e in events} >= {
        ("110107", "4"),
        ("110105", "4"),
    }


def test_a_malformed_bundle_is_a_400_not_a_500(web: TestClient, auth_app: FastAPI) -> None:
    token = token_for(web, auth_app, "system/*.cruds")
    for entries in ("x", ["x"], [{"request": "x"}], [{"request": {"url": 7}}]):
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        assert web.post("/fhir", json=bundle, headers=bearer(token)).status_code == 400
