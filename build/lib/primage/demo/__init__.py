"""Synthetic demo data loaded by `make run` into an empty store."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from fhir_server import jsonio
from fhir_server.interactions import Request
from fhir_server.schema import resource
from fhir_server.service import FhirService

from ..db import Database

BUNDLE = Path(__file__).parent / "bundle.json"


def load_if_empty(database: Database, service: FhirService) -> int:
    """Load the demo bundle into an empty store; returns how many resources were created."""
    with database.read() as repo:
        if repo.conn.execute(select(func.count()).select_from(resource)).scalar_one():
            return 0
    req = Request("POST", "", body=jsonio.loads(BUNDLE.read_bytes()), base="")
    _, response = service.handle(req)
    if response.is_error:
        raise RuntimeError(f"Demo data failed to load: {response.body!r}")
    assert isinstance(response.body, dict)
    return len(response.body["entry"])
