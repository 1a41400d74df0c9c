"""Admin job lists: every user's jobs newest first by status or by model, so a page stays an
index range scan with many jobs. (model_id, id) replaces the index on model_id alone; jobs
completed since a moment (the admin stats' queue and run times) are a range of completed_at.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 18:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_status_created", ["status", "id"], unique=False)
        batch_op.create_index("ix_jobs_model_created", ["model_id", "id"], unique=False)
        batch_op.drop_index("ix_jobs_model_id")
        batch_op.create_index("ix_jobs_completed_at", ["completed_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_completed_at")
        batch_op.create_index("ix_jobs_model_id", ["model_id"], unique=False)
        batch_op.drop_index("ix_jobs_model_created")
        batch_op.drop_index("ix_jobs_status_created")
