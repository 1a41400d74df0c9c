"""Billing: per-key monthly spend caps and what each key spent and holds, the key behind each
ledger entry, monthly invoices, training jobs' usage events, and the /predict credit chunks
API processes hold.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 14:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "predict_credit_chunks",
        sa.Column("source", sa.String(length=320), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_predict_credit_chunks_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("source", name=op.f("pk_predict_credit_chunks")),
    )
    with op.batch_alter_table("predict_credit_chunks", schema=None) as batch_op:
        batch_op.create_index("ix_predict_credit_chunks_created_at", ["created_at"], unique=False)
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("training_job_id", sa.String(length=40), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_usage_events_training_job_id_training_jobs"),
            "training_jobs",
            ["training_job_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_unique_constraint(
            batch_op.f("uq_usage_events_training_job_id_kind"), ["training_job_id", "kind"]
        )
        batch_op.create_index("ix_usage_events_created_at", ["created_at"], unique=False)

    op.create_table(
        "invoices",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("status", sa.String(length=17), nullable=False),
        sa.Column("opening_balance_micros", sa.BigInteger(), nullable=False),
        sa.Column("closing_balance_micros", sa.BigInteger(), nullable=False),
        sa.Column("inference_micros", sa.BigInteger(), nullable=False),
        sa.Column("training_micros", sa.BigInteger(), nullable=False),
        sa.Column("storage_micros", sa.BigInteger(), nullable=False),
        sa.Column("total_micros", sa.BigInteger(), nullable=False),
        sa.Column("credits_added_micros", sa.BigInteger(), nullable=False),
        sa.Column("line_count", sa.Integer(), nullable=False),
        sa.Column("html_key", sa.String(length=500), nullable=True),
        sa.Column("parquet_key", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finalized_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_invoices_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoices")),
        sa.UniqueConstraint("user_id", "month", name=op.f("uq_invoices_user_id_month")),
    )
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.create_index("ix_invoices_month", ["month", "id"], unique=False)

    op.create_table(
        "api_key_spend",
        sa.Column("api_key_id", sa.String(length=40), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("spent_micros", sa.BigInteger(), nullable=False),
        sa.Column("held_micros", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
            name=op.f("fk_api_key_spend_api_key_id_api_keys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("api_key_id", "month", name=op.f("pk_api_key_spend")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("monthly_spend_cap_micros", sa.BigInteger(), nullable=True))

    with op.batch_alter_table("credit_ledger", schema=None) as batch_op:
        batch_op.add_column(sa.Column("api_key_id", sa.String(length=40), nullable=True))
        batch_op.create_index(
            "ix_credit_ledger_user_created", ["user_id", "created_at"], unique=False
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_credit_ledger_api_key_id_api_keys"),
            "api_keys",
            ["api_key_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    op.drop_table("predict_credit_chunks")
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_events_created_at")
        batch_op.drop_constraint(batch_op.f("uq_usage_events_training_job_id_kind"), type_="unique")
        batch_op.drop_constraint(
            batch_op.f("fk_usage_events_training_job_id_training_jobs"), type_="foreignkey"
        )
        batch_op.drop_column("training_job_id")

    with op.batch_alter_table("credit_ledger", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_credit_ledger_api_key_id_api_keys"), type_="foreignkey"
        )
        batch_op.drop_index("ix_credit_ledger_user_created")
        batch_op.drop_column("api_key_id")

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("monthly_spend_cap_micros")

    op.drop_table("api_key_spend")
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_index("ix_invoices_month")

    op.drop_table("invoices")
