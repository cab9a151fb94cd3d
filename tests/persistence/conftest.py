"""Fixtures of the persistence tests: real SQLite files (tmpfs mounts: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from persistence.database import Database, open_database


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    """A fresh database at head in ``tmp_path``."""
    db = open_database(tmp_path)
    try:
        yield db
    finally:
        db.close()
