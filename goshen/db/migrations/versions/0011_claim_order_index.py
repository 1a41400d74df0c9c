"""The claim's index in the claim's order: queued jobs by priority (highest first), then
run_after and id, as serving.jobs.claim orders them. The index it replaces, (priority,
run_after), could not give that order, so every claim sorted the whole queue.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUED = sa.text("status = 'queued'")


def upgrade() -> None:
    op.create_index(
        "ix_jobs_claim_order",
        "jobs",
        [sa.desc(sa.column("priority")), "run_after", "id"],
        unique=False,
        postgresql_where=QUEUED,
        sqlite_where=QUEUED,
    )
    op.drop_index("ix_jobs_claimable", table_name="jobs")


def downgrade() -> None:
    op.create_index(
        "ix_jobs_claimable",
        "jobs",
        ["priority", "run_after"],
        unique=False,
        postgresql_where=QUEUED,
        sqlite_where=QUEUED,
    )
    op.drop_index("ix_jobs_claim_order", table_name="jobs")
