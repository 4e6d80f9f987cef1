"""Alembic environment: the URL comes from primage's settings, never from an ini file."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from fhir_server.schema import metadata

url = context.config.attributes["url"]


def run() -> None:
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
