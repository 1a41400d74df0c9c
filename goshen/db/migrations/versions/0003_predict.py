"""Predict serving: per-model dynamic batching limits.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 23:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_batch_size", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("max_wait_ms", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("max_wait_ms")
        batch_op.drop_column("max_batch_size")
