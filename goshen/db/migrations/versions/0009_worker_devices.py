"""Worker devices: where each worker computes ("cuda:0", "cpu") and the memory it uses now, so
operators and model-aware claims see what every worker holds.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 03:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("device", sa.String(length=50), nullable=True))
        batch_op.add_column(sa.Column("memory_used_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_column("memory_used_bytes")
        batch_op.drop_column("device")
