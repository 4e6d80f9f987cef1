"""Fixtures: the real app on SQLite always, and on PostgreSQL when PRIMAGE_TEST_POSTGRES_URL is set.

Each database gets a fresh schema for the run (PostgreSQL: a schema of its own in the given
database), migrated with the real Alembic migrations. A PostgreSQL URL that was given but
cannot be reached fails the run instead of skipping.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from starlette.testclient import TestClient

from fhir_server.schema import metadata
from primage import db
from primage.app import create_app
from primage.settings import Settings

PG_ENV = "PRIMAGE_TEST_POSTGRES_URL"
FHIR_JSON = "application/fhir+json"


def _backends() -> list[str]:
    return ["sqlite", "postgresql"] if os.environ.get(PG_ENV) else ["sqlite"]


def _postgres_url() -> Iterator[str]:
    url = make_url(os.environ[PG_ENV])
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg2")
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    schema = f"primage_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        pytest.fail(f"{PG_ENV} is set but PostgreSQL is unreachable: {type(exc).__name__}")
    try:
        yield url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="session", params=_backends())
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "postgresql":
        yield from _postgres_url()
    else:
        yield f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'primage.db'}"


def fresh_database(backend_url: str, folder: Path) -> Iterator[str]:
    """An empty database of the same kind as `backend_url`: a schema of its own on
    PostgreSQL, a file in `folder` on SQLite."""
    if backend_url.startswith("postgresql"):
        yield from _postgres_url()
    else:
        yield f"sqlite:///{folder / 'store.db'}"


def gateway_platform(
    settings: Settings,
    database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
) -> Iterator[FastAPI]:
    """The platform as hospitals meet it: OAuth2, the gateway and the identified-data guard
    on, with a store and a linkage database of its own (so a byte-level search of what it
    holds sees only what the gateway let in)."""
    folder = tmp_path_factory.mktemp(f"{name}-platform")
    for url in fresh_database(database_url, folder):
        db.upgrade(url)
        for linkage in fresh_database(database_url, tmp_path_factory.mktemp(f"{name}-linkage")):
            app = create_app(
                settings.model_copy(
                    update={
                        "database_url": SecretStr(url),
                        "data_dir": folder,
                        "auth_enabled": True,
                        "gateway_enabled": True,
                        "identified_data_guard": True,
                        "linkage_database_url": SecretStr(linkage),
                        "gateway_key": SecretStr(f"{name}-test-gateway-key"),
                        "linkage_secret": SecretStr(f"{name}-test-linkage-secret"),
                        "linkage_sync_interval": 0,
                    }
                )
            )
            yield app
            app.state.database.engine.dispose()


def platform_env(app: FastAPI, tmp: Path) -> dict[str, str]:
    """The environment of a CLI command that works inside `app` (gateway_platform's app),
    e.g. `primage import ... --site S`, with its import ledger under `tmp`."""
    settings = app.state.settings
    return {
        "PRIMAGE_DATA_DIR": str(settings.data_dir),
        "PRIMAGE_DATABASE_URL": settings.database(),
        "PRIMAGE_LINKAGE_DATABASE_URL": settings.linkage_database(),
        "PRIMAGE_GATEWAY_KEY": settings.gateway_key.get_secret_value(),
        "PRIMAGE_LINKAGE_SECRET": settings.linkage_secret.get_secret_value(),
        "PRIMAGE_SECRET_KEY": settings.secret().decode(),
        "PRIMAGE_GATEWAY_ENABLED": "true",
        "PRIMAGE_IDENTIFIED_DATA_GUARD": "true",
        "PRIMAGE_IMPORT_DATABASE_URL": f"sqlite:///{tmp / 'imports.db'}",
    }


@pytest.fixture(scope="session")
def settings(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    db.upgrade(database_url)
    return Settings(
        data_dir=Path(tmp_path_factory.mktemp("data")),
        database_url=database_url,
        secret_key="test-secret-not-for-production",
        fhir_max_body_bytes=256 * 1024,
        auth_enabled=False,  # the API suites; tests/test_auth.py runs apps with auth on
        # The API, auth and site suites write plain test data; tests/test_gateway.py runs the
        # app with the pseudonymisation gateway and the identified-data guard on.
        gateway_enabled=False,
        identified_data_guard=False,
    )


@pytest.fixture(scope="session")
def app(settings: Settings) -> Iterator[FastAPI]:
    application = create_app(settings)
    yield application
    application.state.database.engine.dispose()


@pytest.fixture(scope="session")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, base_url="http://testserver") as test_client:
        yield test_client


@pytest.fixture(scope="session")
def auth_app(settings: Settings) -> Iterator[FastAPI]:
    """The app with OAuth2, scopes, sites and audit on (the API suites run without)."""
    application = create_app(settings.model_copy(update={"auth_enabled": True}))
    yield application
    application.state.database.engine.dispose()


@pytest.fixture(scope="session")
def web(auth_app: FastAPI) -> Iterator[TestClient]:
    """A client of `auth_app`; each request carries the token a test gives it."""
    with TestClient(auth_app, base_url="http://testserver") as test_client:
        yield test_client


@pytest.fixture
def backend(database_url: str) -> str:
    return make_url(database_url).get_backend_name()


@pytest.fixture
def empty_store(app: FastAPI) -> None:
    """For tests that look at the whole store (system history): start from nothing."""
    with app.state.database.write() as repo:
        for table in reversed(metadata.sorted_tables):
            repo.conn.execute(table.delete())


@pytest.fixture(scope="session")
def live_server(app: FastAPI) -> Iterator[str]:
    """The same app served by uvicorn on 127.0.0.1, for clients that open their own sockets."""
    yield from serving(app)


def serving(app: FastAPI) -> Iterator[str]:
    """Serves `app` with uvicorn on a free port of 127.0.0.1 and yields its base URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    else:
        pytest.fail("uvicorn did not start")
    yield base
    server.should_exit = True
    thread.join(timeout=10)


def token_headers(web: TestClient, app: FastAPI, scope: str, site: str | None) -> dict[str, str]:
    """Headers with a token of a new client of `app` with `scope` (and `site`)."""
    client, secret = app.state.auth.clients.add(f"test-{site}", scope, site)
    r = web.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "scope": scope},
        auth=(client.client_id, secret),
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def pages(client: TestClient, path: str) -> Iterator[dict]:
    """Every page of a searchset or history, following `next` links from `path`."""
    bundle = client.get(path).json()
    while True:
        yield bundle
        nxt = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        if nxt is None:
            return
        parts = urlsplit(nxt)
        bundle = client.get(f"{parts.path}?{parts.query}").json()


def patient(**extra: object) -> dict[str, object]:
    return {"resourceType": "Patient", "gender": "female", "birthDate": "2016-04", **extra}
