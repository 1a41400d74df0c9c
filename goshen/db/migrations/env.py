"""Alembic environment: runs on the connection that goshen.db.migrate hands in."""

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext

from goshen.db.models import Base, UTCDateTime

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `goshen db upgrade`, which supplies the connection")


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Write UTCDateTime as a plain DateTime so migrations never import the live models."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    render_item=_render_item,
)
with context.begin_transaction():
    context.run_migrations()
