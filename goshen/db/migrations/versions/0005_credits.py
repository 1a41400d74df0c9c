"""Credits: ledger entries keyed by (source, kind), holds beside amounts, grant expiry and
reasons, a per-user balance cache, and unmetered users.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 10:00:00.000000
"""

import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# GOSHEN_NEW_USER_CREDITS's default when credits began: users that existed before them get it
# once too, as new users do, so an upgrade refuses no one's next job.
_EXISTING_USER_GRANT_MICROS = 10_000_000
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("unmetered", sa.Boolean(), nullable=False, server_default=sa.false())
        )

    with op.batch_alter_table("credit_ledger", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source", sa.String(length=320), nullable=True))
        batch_op.add_column(
            sa.Column("held_micros", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.alter_column(
            "memo",
            new_column_name="reason",
            existing_type=sa.String(length=500),
            existing_nullable=False,
        )
    # Entries written before sources existed were keyed by job, or by nothing.
    op.execute(
        "UPDATE credit_ledger SET source = CASE WHEN job_id IS NULL THEN 'legacy:' || id "
        "ELSE 'job:' || job_id END"
    )
    with op.batch_alter_table("credit_ledger", schema=None) as batch_op:
        batch_op.alter_column("source", existing_type=sa.String(length=320), nullable=False)
        batch_op.drop_constraint("uq_credit_ledger_job_id_kind", type_="unique")
        batch_op.create_unique_constraint("uq_credit_ledger_source_kind", ["source", "kind"])
        batch_op.drop_index("ix_credit_ledger_user_created")
        batch_op.create_index("ix_credit_ledger_user_id", ["user_id", "id"], unique=False)
        batch_op.create_index(
            "ix_credit_ledger_user_expires", ["user_id", "expires_at"], unique=False
        )

    _grant_existing_users()
    op.create_table(
        "credit_balances",
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("balance_micros", sa.BigInteger(), nullable=False),
        sa.Column("held_micros", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_credit_balances_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_credit_balances")),
    )
    op.execute(
        "INSERT INTO credit_balances (user_id, balance_micros, held_micros, updated_at) "
        "SELECT user_id, SUM(amount_micros), SUM(held_micros), CURRENT_TIMESTAMP "
        "FROM credit_ledger GROUP BY user_id"
    )


def _grant_existing_users() -> None:
    """The new-user grant (source `signup:<user id>`) for every user granted nothing yet: once,
    even across a downgrade and an upgrade again (which keeps the rows, not their sources)."""
    bind = op.get_bind()
    users = bind.execute(
        sa.text(
            "SELECT id FROM users WHERE NOT EXISTS (SELECT 1 FROM credit_ledger "
            "WHERE credit_ledger.user_id = users.id AND credit_ledger.kind = 'grant')"
        )
    ).scalars()
    ledger = sa.table(
        "credit_ledger",
        sa.column("id", sa.String),
        sa.column("user_id", sa.String),
        sa.column("source", sa.String),
        sa.column("kind", sa.String),
        sa.column("amount_micros", sa.BigInteger),
        sa.column("held_micros", sa.BigInteger),
        sa.column("reason", sa.String),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    now = datetime.now(UTC)
    rows = [
        {
            "id": _ledger_id(),
            "user_id": user_id,
            "source": f"signup:{user_id}",
            "kind": "grant",
            "amount_micros": _EXISTING_USER_GRANT_MICROS,
            "held_micros": 0,
            "reason": "new-user credits, granted to accounts made before credits began",
            "created_at": now,
        }
        for user_id in users
    ]
    if rows:
        op.bulk_insert(ledger, rows)


def _ledger_id() -> str:
    """An id as goshen.ids makes them (`led_`, 48 bits of milliseconds, 80 random bits)."""
    value = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    digits = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        digits.append(_CROCKFORD[digit])
    return "led_" + "".join(reversed(digits))


def downgrade() -> None:
    op.drop_table("credit_balances")
    with op.batch_alter_table("credit_ledger", schema=None) as batch_op:
        batch_op.drop_index("ix_credit_ledger_user_expires")
        batch_op.drop_index("ix_credit_ledger_user_id")
        batch_op.create_index(
            "ix_credit_ledger_user_created", ["user_id", "created_at"], unique=False
        )
        batch_op.drop_constraint("uq_credit_ledger_source_kind", type_="unique")
        batch_op.create_unique_constraint("uq_credit_ledger_job_id_kind", ["job_id", "kind"])
        batch_op.alter_column(
            "reason",
            new_column_name="memo",
            existing_type=sa.String(length=500),
            existing_nullable=False,
        )
        batch_op.drop_column("expires_at")
        batch_op.drop_column("held_micros")
        batch_op.drop_column("source")

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("unmetered")
