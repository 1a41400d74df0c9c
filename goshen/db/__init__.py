"""The platform database: models, engines and sessions, migrations."""

from goshen.db.engine import make_engine, make_sessionmaker, session_scope

__all__ = ["make_engine", "make_sessionmaker", "session_scope"]
