"""Search index: one table per search-parameter type.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from fhir_server.schema import PK, UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

S255, S512 = sa.String(255), sa.String(512)
# table -> (value columns, {index name: (columns, postgresql_ops)})
TABLES = {
    "search_token": (
        [("system", S255, True), ("code", S255, True), ("text", S255, True)],
        {
            "ix_search_token_code": (["type", "param", "code", "system", "resource_pk"], None),
        },
    ),
    "search_string": (
        [("value", S255, False), ("exact", S255, False)],
        {"ix_search_string_value": (["type", "param", "value"], {"value": "varchar_pattern_ops"})},
    ),
    "search_date": (
        [("start", UtcDateTime, False), ("end", UtcDateTime, False)],
        {"ix_search_date": (["type", "param", "start", "end"], None)},
    ),
    "search_number": (
        [("value", sa.Float, False)],
        {"ix_search_number": (["type", "param", "value"], None)},
    ),
    "search_quantity": (
        [
            ("value", sa.Float, False),
            ("system", S255, True),
            ("code", S255, True),
            ("unit", S255, True),
        ],
        {
            "ix_search_quantity": (["type", "param", "code", "value"], None),
            "ix_search_quantity_unit": (["type", "param", "unit", "value"], None),
        },
    ),
    "search_reference": (
        [
            ("target_type", sa.String(64), True),
            ("target_id", sa.String(64), True),
            ("url", S512, True),
        ],
        {
            "ix_search_reference_target": (
                ["type", "param", "target_id", "target_type", "resource_pk"],
                None,
            ),
            "ix_search_reference_reverse": (["target_type", "target_id"], None),
        },
    ),
    "search_uri": (
        [("value", S512, False)],
        {"ix_search_uri": (["type", "param", "value", "resource_pk"], None)},
    ),
}


def upgrade() -> None:
    for name, (columns, indexes) in TABLES.items():
        op.create_table(
            name,
            sa.Column("resource_pk", PK, nullable=False),
            sa.Column("type", sa.String(64), nullable=False),
            sa.Column("param", sa.String(64), nullable=False),
            *(sa.Column(col, kind, nullable=nullable) for col, kind, nullable in columns),
        )
        op.create_index(f"ix_{name}_resource_pk", name, ["resource_pk"])
        for index, (cols, pg_ops) in indexes.items():
            op.create_index(index, name, cols, postgresql_ops=pg_ops or {})


def downgrade() -> None:
    for name in reversed(list(TABLES)):
        op.drop_table(name)
