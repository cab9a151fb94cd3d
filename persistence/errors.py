"""The exceptions of the persistence layer.

Everything this package raises on purpose derives from ``PersistenceError``, so an
actor can catch one family. Database problems carry the path of the SQLite file.
"""

from __future__ import annotations

from pathlib import Path


class PersistenceError(Exception):
    """Base of every error raised on purpose by ``persistence``."""


class DatabaseError(PersistenceError):
    """A problem with the node's SQLite database at ``path``."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class CorruptDatabaseError(DatabaseError):
    """The database file is not a sound SQLite database; it was left untouched."""


class DatabaseUnavailableError(DatabaseError):
    """The database cannot be opened or used: missing or unwritable directory, locked, I/O."""


class SchemaError(DatabaseError):
    """The schema cannot be brought to the head revision (unknown revision, failed migration)."""


class ChunkFileError(PersistenceError):
    """A chunk file could not be written, read, moved or removed."""


class StorageFull(ChunkFileError):
    """No space (or quota) left on the device holding the chunk files."""
