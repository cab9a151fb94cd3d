"""Persistence of a node: ``database`` (SQLite through SQLAlchemy, migrated by alembic at
open), ``chunk_files`` (chunk bytes as atomically written files), ``errors``."""
