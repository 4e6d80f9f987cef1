"""Engines, transactions and migrations for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from fhir_server.indexing import Indexer
from fhir_server.repository import Repository

MIGRATIONS = Path(__file__).parent / "migrations"


def _prepare_sqlite(url: str) -> bool:
    """True for SQLite, whose file's folder is created on first use."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return False
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    return True


def make_engine(url: str, pool_size: int = 10) -> Engine:
    if _prepare_sqlite(url):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            hide_parameters=True,
        )
        _sqlite_transactions(engine)
        return engine
    # No pre-ping: it costs a round trip per request; a dropped connection fails one
    # request and is replaced, and pool_recycle retires connections before servers do.
    # hide_parameters: errors and logs must never quote resource content.
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        hide_parameters=True,
    )


def _sqlite_transactions(engine: Engine) -> None:
    """WAL for concurrent readers, and BEGIN IMMEDIATE for writes.

    pysqlite's own deferred BEGIN lets two writers both read and then fail to upgrade their
    lock; taking the write lock up front serialises them instead, so If-Match works.
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("primage_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def writer(engine: Engine) -> Engine:
    """`engine` with every transaction a writer's: on SQLite BEGIN IMMEDIATE, for stores
    whose transactions read and then write from several threads (the linkage service, an
    import's ledger), which deferred BEGINs would fail with "database is locked"."""
    return engine.execution_options(primage_write=True)


class Database:
    """Hands out repositories bound to a read or a write transaction."""

    def __init__(
        self,
        engine: Engine,
        indexer: Indexer | None = None,
        guard: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.engine = engine
        self.indexer = indexer
        self.guard = guard  # refuses resources that still identify a person

    @contextmanager
    def read(self) -> Iterator[Repository]:
        with self.engine.connect() as conn, conn.begin():
            yield Repository(conn, self.indexer)

    @contextmanager
    def write(self) -> Iterator[Repository]:
        with self.engine.connect().execution_options(primage_write=True) as conn, conn.begin():
            yield Repository(conn, self.indexer, guard=self.guard)

    def analyze(self) -> None:
        """Refresh planner statistics, as autovacuum would shortly after a bulk load."""
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url
    return config


def upgrade(url: str) -> None:
    _prepare_sqlite(url)
    command.upgrade(alembic_config(url), "head")
