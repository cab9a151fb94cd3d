"""Alembic environment of the node database.

Two ways in:

- the node itself (``persistence.database.open_database``) passes an open connection
  in ``config.attributes["connection"]``; the migration runs on it;
- an operator runs ``alembic -c alembic.ini ...`` from the repository root, naming the
  database with ``-x root_dir=DIR`` (the node's root directory) or ``-x db=FILE`` or
  ``sqlalchemy.url`` in the ini file (``sqlite:////abs/path/node.sqlite3``).

Either way the whole upgrade is one transaction (SQLite has transactional DDL) and
SQLite table changes are rendered as batch (copy-and-move) operations. The schema has
no foreign keys yet; a future revision that rebuilds a table referenced by a foreign
key must turn ``PRAGMA foreign_keys`` off around it.
"""

from __future__ import annotations

from logging.config import fileConfig
from pathlib import Path

from alembic import context
from sqlalchemy import Connection, make_url

from persistence.database import create_sqlite_engine, database_path
from persistence.models import metadata

config = context.config
target_metadata = metadata


def _database_file() -> Path:
    arguments = context.get_x_argument(as_dictionary=True)
    if "root_dir" in arguments:
        return database_path(Path(arguments["root_dir"]))
    if "db" in arguments:
        return Path(arguments["db"])
    url_text = config.get_main_option("sqlalchemy.url")
    if url_text:
        url = make_url(url_text)
        if url.get_backend_name() != "sqlite" or not url.database:
            raise SystemExit(f"only a SQLite file database is supported, not {url_text!r}")
        return Path(url.database)
    raise SystemExit("name the database: -x root_dir=NODE_ROOT_DIR, -x db=FILE, or sqlalchemy.url")


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    """``alembic upgrade --sql``: print the SQL instead of running it."""
    context.configure(
        url=f"sqlite:///{_database_file()}",
        target_metadata=target_metadata,
        render_as_batch=True,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    given = config.attributes.get("connection")
    if isinstance(given, Connection):
        _run(given)
        return
    engine = create_sqlite_engine(_database_file())
    try:
        with engine.connect().execution_options(sqlite_begin="IMMEDIATE") as connection:
            _run(connection)
    finally:
        engine.dispose()


if config.config_file_name is not None and config.attributes.get("connection") is None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
