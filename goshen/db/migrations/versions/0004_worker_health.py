"""Worker health: an `unhealthy` status and the reason beside it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("status_detail", sa.Text(), nullable=True))
        # Statuses are their longest name plus 8: "unhealthy" is the longest now.
        batch_op.alter_column(
            "status",
            existing_type=sa.String(length=16),
            type_=sa.String(length=17),
            existing_nullable=False,
        )


def downgrade() -> None:
    op.execute("UPDATE workers SET status = 'idle' WHERE status = 'unhealthy'")
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.alter_column(
            "status",
            existing_type=sa.String(length=17),
            type_=sa.String(length=16),
            existing_nullable=False,
        )
        batch_op.drop_column("status_detail")
