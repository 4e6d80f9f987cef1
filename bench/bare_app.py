"""The second ceiling for bench/fhir_crud.py: a bare FastAPI create that parses JSON and
inserts one row per request, with none of primage's validation, versioning or headers."""

from __future__ import annotations

import os
import uuid

import orjson
from fastapi import FastAPI, Request, Response
from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table, create_engine, insert
from starlette.concurrency import run_in_threadpool

metadata = MetaData()
bare = Table(
    "bare_resource",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("content", LargeBinary, nullable=False),
)
url = os.environ["BARE_DATABASE_URL"]
engine = create_engine(
    url, **({"connect_args": {"check_same_thread": False}} if url.startswith("sqlite") else {})
)
metadata.create_all(engine)
app = FastAPI()


def _insert(id_: str, content: bytes) -> None:
    with engine.begin() as conn:
        conn.execute(insert(bare).values(id=id_, content=content))


@app.post("/fhir/{type_}")
async def create(type_: str, request: Request) -> Response:
    doc = orjson.loads(await request.body())
    doc["id"] = str(uuid.uuid4())
    content = orjson.dumps(doc)
    await run_in_threadpool(_insert, doc["id"], content)
    return Response(content, 201, media_type="application/json")


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}
