"""The node's SQLite database: opening it safely, migrating it, and the repository calls.

``open_database(root_dir)`` opens ``root_dir/node.sqlite3``:

1. checks the root directory exists and is writable (``DatabaseUnavailableError``);
2. if the file exists, checks it read-only (header, then ``PRAGMA quick_check``); a
   damaged file raises ``CorruptDatabaseError`` and is left exactly as it was;
3. opens one engine (WAL journal, synchronous=NORMAL, a busy timeout, foreign keys on,
   set on every new connection) and applies ``alembic upgrade head`` with the
   migrations shipped in the ``migrations`` package; a new (empty) database is built
   from ``migrations/head_schema.sql`` instead, the schema those migrations build (a
   test checks it), and a database at head is left as it is: alembic is then not
   loaded at all.

Every repository method is its own short transaction on a connection from the
engine's pool, so one ``Database`` may be shared by several threads. Writes start
with ``BEGIN IMMEDIATE`` (they queue on the busy timeout instead of failing when two
writers meet). Results are frozen dataclasses; no ORM object leaves this module.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy
from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    case,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

if TYPE_CHECKING:
    from alembic.config import Config

import migrations
from persistence.errors import (
    CorruptDatabaseError,
    DatabaseError,
    DatabaseUnavailableError,
    SchemaError,
)
from persistence.models import ChunkKind
from persistence.models import chunks as _chunks
from persistence.models import node_state as _state
from persistence.models import peer_trust as _trust
from persistence.models import peers as _peers
from protocol.xor import check_address

DATABASE_FILENAME: Final = "node.sqlite3"
DEFAULT_BUSY_TIMEOUT_MS: Final = 10_000
MIGRATIONS_DIR: Final = Path(migrations.__file__).resolve().parent
HEAD_SCHEMA_FILE: Final = MIGRATIONS_DIR / "head_schema.sql"
"""The schema at ``migrations.HEAD_REVISION``, from which a new database is created."""

_SQLITE_HEADER: Final = b"SQLite format 3\x00"
_SQLITE_HEADER_BYTES: Final = 100
_SQLITE_CORRUPT_CODES: Final = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB
_BEGIN_OPTION: Final = "sqlite_begin"
_CONNECTION_ATTRIBUTE: Final = "connection"
_SNAPSHOT_REVISION_LINE: Final = "-- revision: "


# --- records returned to callers ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredPeer:
    """A routing-table peer as persisted."""

    peer_id: bytes
    addrs: tuple[str, ...]
    last_seen: float
    failures: int = 0
    in_routing_table: bool = True
    """True: it was in its k-bucket; False: in the bucket's replacement cache."""
    ip: str | None = None
    """The IP it was seen at (None: not known, e.g. saved before revision 0003)."""


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """Metadata of one stored chunk."""

    address: bytes
    size: int
    kind: ChunkKind
    stored_at: float
    last_verified: float | None


@dataclass(frozen=True, slots=True)
class ChunkTotals:
    """How many chunks of one kind are held and their total size in bytes."""

    count: int
    total_bytes: int


@dataclass(frozen=True, slots=True)
class TrustRecord:
    """How far the node trusts a peer, from the storage audits it sent it."""

    peer_id: bytes
    score: float
    """The score as of ``updated_at``."""
    updated_at: float
    """Unix time the score was last changed."""
    passed: int
    """Audits of the peer that passed."""
    failed: int
    """Audits of the peer that failed."""
    shunned_until: float | None
    """Unix time until which the peer is shunned; None: not shunned."""


# --- engine ----------------------------------------------------------------------


def database_path(root_dir: Path) -> Path:
    """Where the database of the node rooted at ``root_dir`` lives."""
    return Path(root_dir) / DATABASE_FILENAME


def create_sqlite_engine(path: Path, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> Engine:
    """An engine on the SQLite file ``path`` with the node's connection settings.

    Every new connection gets WAL journalling, synchronous=NORMAL, the busy timeout and
    foreign keys; SQLAlchemy (not the sqlite3 module) emits BEGIN, so SELECTs are
    transactional and DDL is transactional too. ``execution_options(sqlite_begin=
    "IMMEDIATE")`` makes the transactions of an engine or connection take the write
    lock at once.
    """
    url = sqlalchemy.URL.create("sqlite", database=str(path))
    engine = sqlalchemy.create_engine(url, connect_args={"timeout": busy_timeout_ms / 1000})

    @event.listens_for(engine, "connect")
    def _configure_connection(
        dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry
    ) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            row = cursor.fetchone()
            if row is None or str(row[0]).lower() != "wal":
                raise DatabaseUnavailableError(path, f"could not switch to WAL journal mode: {row}")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")

    return engine


def alembic_config(connection: Connection | None = None) -> Config:
    """A programmatic alembic configuration for the shipped migrations.

    It does not read any ``alembic.ini`` nor depend on the working directory. With
    ``connection``, ``env.py`` migrates through it.
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes[_CONNECTION_ATTRIBUTE] = connection
    return config


def head_revision() -> str:
    """The newest schema revision of the shipped migrations."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise RuntimeError("no migrations found")
    return head


# --- opening ---------------------------------------------------------------------


def open_database(root_dir: Path, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> Database:
    """Open (creating if absent) and migrate to head ``root_dir/node.sqlite3``.

    Raises ``DatabaseUnavailableError`` if ``root_dir`` is missing or unwritable,
    ``CorruptDatabaseError`` if the file is damaged (the file is not modified), and
    ``SchemaError`` if it cannot be migrated (for example a revision this code does
    not know, written by a newer version).
    """
    root_dir = Path(root_dir)
    path = database_path(root_dir)
    _check_root_dir(root_dir, path)
    _check_existing_file(path)
    engine = create_sqlite_engine(path, busy_timeout_ms)
    try:
        _upgrade_to_head(engine, path)
    except BaseException:
        engine.dispose()
        raise
    return Database(path, engine)


def _check_root_dir(root_dir: Path, path: Path) -> None:
    if not root_dir.exists():
        raise DatabaseUnavailableError(path, f"the root directory {root_dir} does not exist")
    if not root_dir.is_dir():
        raise DatabaseUnavailableError(path, f"the root directory {root_dir} is not a directory")
    # os.access says yes to root on a read-only mount; creating a file tells the truth.
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=root_dir)
    except OSError as exc:
        raise DatabaseUnavailableError(
            path, f"the root directory {root_dir} is not writable: {exc.strerror}"
        ) from exc
    os.close(fd)
    os.unlink(probe)


def _check_existing_file(path: Path) -> None:
    """Raise ``CorruptDatabaseError`` if ``path`` exists and is not a sound SQLite database.

    Reads only: the header by hand, then ``PRAGMA quick_check`` on a read-only
    connection. Side files (``-wal``, ``-shm``) that this check creates are removed
    again when the check fails.
    """
    if not path.exists():
        return
    if not path.is_file():
        raise DatabaseUnavailableError(path, "exists but is not a regular file")
    try:
        with path.open("rb") as file:
            header = file.read(_SQLITE_HEADER_BYTES)
    except OSError as exc:
        raise DatabaseUnavailableError(path, f"cannot be read: {exc.strerror}") from exc
    if not header:
        return  # an empty file is what SQLite itself creates before the first write
    if not header.startswith(_SQLITE_HEADER):
        raise CorruptDatabaseError(path, "is not an SQLite database (its header is wrong)")
    if len(header) < _SQLITE_HEADER_BYTES:
        raise CorruptDatabaseError(path, f"is truncated: only {len(header)} bytes")

    side_files = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
    existed_before = {side: side.exists() for side in side_files}
    problem: str | None = None
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            rows = connection.execute("PRAGMA quick_check(5)").fetchall()
        finally:
            connection.close()
        if rows != [("ok",)]:
            problem = "fails its integrity check: " + "; ".join(str(row[0]) for row in rows)
    except sqlite3.DatabaseError as exc:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code not in _SQLITE_CORRUPT_CODES:
            raise DatabaseUnavailableError(path, f"cannot be opened: {exc}") from exc
        problem = f"is damaged: {exc}"
    if problem is not None:
        for side in side_files:
            if not existed_before[side]:
                with contextlib.suppress(OSError):
                    side.unlink()
        raise CorruptDatabaseError(path, problem)


def _upgrade_to_head(engine: Engine, path: Path) -> None:
    """``alembic upgrade head``, unless the database is at head already or new (empty): a
    new one is built from the schema snapshot (``HEAD_SCHEMA_FILE``). Either way alembic,
    a large import, is then not loaded at all (about 11 MB of memory and 0.1 s of CPU a
    node process: every node of a fresh testnet starts with a new database)."""
    try:
        with engine.connect() as connection:
            revision = _stored_revision(connection)
        if revision == migrations.HEAD_REVISION:
            return
        if revision is None and _create_from_snapshot(engine):
            return
    except sqlalchemy.exc.DBAPIError as exc:
        raise _translate(path, exc) from exc
    from alembic import command
    from alembic.util.exc import CommandError

    try:
        with engine.connect().execution_options(**{_BEGIN_OPTION: "IMMEDIATE"}) as connection:
            command.upgrade(alembic_config(connection), "head")
    except CommandError as exc:
        raise SchemaError(path, f"cannot migrate to the current schema: {exc}") from exc
    except sqlalchemy.exc.DBAPIError as exc:
        raise _translate(path, exc) from exc


def _create_from_snapshot(engine: Engine) -> bool:
    """Build an empty database at head by running the statements of ``HEAD_SCHEMA_FILE``,
    in one transaction; False (nothing changed) if the database is not empty, or the
    snapshot is missing or not of the head revision: alembic then migrates as usual."""
    statements = read_head_schema()
    if statements is None:
        return False
    immediate = engine.connect().execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
    with immediate as connection, connection.begin():
        if connection.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar():
            return False  # not new after all (another process built it meanwhile)
        for statement in statements:
            connection.exec_driver_sql(statement)
    return True


def read_head_schema(snapshot: Path | None = None) -> list[str] | None:
    """The statements of the schema snapshot, or None if it is missing or its revision is
    not ``migrations.HEAD_REVISION`` (a new migration whose snapshot was not rewritten)."""
    try:
        text = (snapshot or HEAD_SCHEMA_FILE).read_text(encoding="utf-8")
    except OSError:
        return None
    if f"{_SNAPSHOT_REVISION_LINE}{migrations.HEAD_REVISION}\n" not in text:
        return None
    statements: list[str] = []
    pending = ""
    for line in text.splitlines(keepends=True):
        if not pending and (line.startswith("--") or not line.strip()):
            continue
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip().removesuffix(";"))
            pending = ""
    return statements


def dump_schema(path: Path) -> str:
    """The text of a schema snapshot of the database file ``path`` (built by the
    migrations): its revision, then the statements that create its tables and indexes in
    the order SQLite recorded them, and the row of ``alembic_version``.

    Rewrite the shipped one after adding a migration with
    ``UPDATE_SCHEMA_SNAPSHOT=1 pytest tests/persistence/test_database.py -k snapshot``.
    """
    with contextlib.closing(sqlite3.connect(path)) as connection:
        (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        created = [
            sql
            for (sql,) in connection.execute("SELECT sql FROM sqlite_master ORDER BY rowid")
            if sql is not None  # the automatic indexes of primary keys and unique columns
        ]
    lines = [
        "-- The schema the alembic migrations build, at the revision below: a new node",
        "-- database is created from it without loading alembic (persistence/database.py).",
        "-- Generated by persistence.database.dump_schema; do not edit by hand.",
        f"{_SNAPSHOT_REVISION_LINE}{revision}",
        "",
    ]
    for sql in created:
        lines += [f"{sql};", ""]
    lines.append(f"INSERT INTO alembic_version (version_num) VALUES ('{revision}');")
    return "\n".join(lines) + "\n"


def _stored_revision(connection: Connection) -> str | None:
    """The revision recorded in ``alembic_version``, or None for a database without one."""
    exists = connection.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
    ).first()
    if exists is None:
        return None
    row = connection.exec_driver_sql("SELECT version_num FROM alembic_version").first()
    return None if row is None else str(row[0])


def _translate(path: Path, exc: sqlalchemy.exc.DBAPIError) -> DatabaseError:
    original = exc.orig
    code = getattr(original, "sqlite_errorcode", 0) & 0xFF
    if code in _SQLITE_CORRUPT_CODES:
        return CorruptDatabaseError(path, f"is damaged: {original}")
    if isinstance(exc, sqlalchemy.exc.OperationalError):  # locked, I/O error, disk full, ...
        return DatabaseUnavailableError(path, f"database error: {original}")
    return DatabaseError(path, f"database error: {original}")


# --- the repository --------------------------------------------------------------


class Database:
    """The repository the actors call; thread-safe, one short transaction per call."""

    def __init__(self, path: Path, engine: Engine) -> None:
        self.path = path
        self._engine = engine
        self._writer = engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})

    # lifecycle

    def close(self) -> None:
        """Close every pooled connection. The object must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _read(self) -> contextlib.AbstractContextManager[Connection]:
        return self._transaction(self._engine)

    def _write(self) -> contextlib.AbstractContextManager[Connection]:
        """A transaction that takes the write lock at once (``BEGIN IMMEDIATE``)."""
        return self._transaction(self._writer)

    @contextlib.contextmanager
    def _transaction(self, engine: Engine) -> Iterator[Connection]:
        """One transaction on a pooled connection; driver errors become ``DatabaseError``s."""
        try:
            with engine.begin() as connection:
                yield connection
        except sqlalchemy.exc.DBAPIError as exc:
            raise _translate(self.path, exc) from exc

    def schema_revision(self) -> str | None:
        """The alembic revision the database is at."""
        with self._read() as connection:
            return _stored_revision(connection)

    def connection_settings(self) -> dict[str, Any]:
        """The SQLite settings of a pooled connection (journal_mode, synchronous, ...)."""
        names = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        with self._read() as connection:
            return {
                name: connection.exec_driver_sql(f"PRAGMA {name}").scalar_one() for name in names
            }

    # node state

    def get_state(self, key: str) -> str | None:
        """The value stored under ``key``, or None."""
        with self._read() as connection:
            return connection.execute(_GET_STATE, {"key": key}).scalar_one_or_none()

    def set_state(self, key: str, value: str) -> None:
        """Store ``value`` under ``key``, replacing any previous value."""
        with self._write() as connection:
            connection.execute(_SET_STATE, {"key": key, "value": value})

    def all_state(self) -> dict[str, str]:
        """Every key and value of the node state."""
        with self._read() as connection:
            return {row.key: row.value for row in connection.execute(_ALL_STATE)}

    # peers

    def save_peers(self, peers: Iterable[StoredPeer]) -> None:
        """Replace every stored peer by ``peers`` (one transaction; the last record of a
        repeated peer id wins)."""
        by_id = {check_address(peer.peer_id): peer for peer in peers}
        with self._write() as connection:
            connection.execute(_DELETE_ALL_PEERS)
            if by_id:
                connection.execute(_INSERT_PEER, [_peer_values(peer) for peer in by_id.values()])

    def upsert_peer(self, peer: StoredPeer) -> None:
        """Insert or replace one peer."""
        check_address(peer.peer_id)
        with self._write() as connection:
            connection.execute(_UPSERT_PEER, _peer_values(peer))

    def load_peers(self) -> list[StoredPeer]:
        """Every stored peer: routing-table peers first, each group least recently seen
        first (the order a k-bucket keeps)."""
        with self._read() as connection:
            return [
                StoredPeer(
                    peer_id=row.peer_id,
                    addrs=tuple(row.addrs),
                    last_seen=row.last_seen,
                    failures=row.failures,
                    in_routing_table=bool(row.in_routing_table),
                    ip=row.ip,
                )
                for row in connection.execute(_LOAD_PEERS)
            ]

    def delete_peer(self, peer_id: bytes) -> bool:
        """Forget a peer; False if it was not stored."""
        with self._write() as connection:
            return connection.execute(_DELETE_PEER, {"match_peer_id": peer_id}).rowcount > 0

    def record_peer_failure(self, peer_id: bytes) -> int | None:
        """Count one more failed contact; the new count, or None if the peer is unknown."""
        with self._write() as connection:
            return connection.execute(
                _RECORD_PEER_FAILURE, {"match_peer_id": peer_id}
            ).scalar_one_or_none()

    # peer trust

    def load_trust(self) -> list[TrustRecord]:
        """The trust of every peer recorded, in peer id order."""
        with self._read() as connection:
            return [TrustRecord(*row) for row in connection.execute(_LOAD_TRUST)]

    def save_trust(self, records: Iterable[TrustRecord]) -> None:
        """Insert or replace the trust of each peer given, in one transaction (the last
        record of a repeated peer id wins); peers not given are left as they are."""
        by_id = {check_address(record.peer_id): record for record in records}
        if by_id:
            with self._write() as connection:
                connection.execute(_UPSERT_TRUST, [_trust_values(r) for r in by_id.values()])

    def delete_trust(self, peer_ids: Iterable[bytes]) -> None:
        """Forget the trust of the peers given (unknown ones are ignored), in one
        transaction."""
        values = [{"match_peer_id": peer_id} for peer_id in set(peer_ids)]
        if values:
            with self._write() as connection:
                connection.execute(_DELETE_TRUST, values)

    # chunks

    def add_chunk(
        self, address: bytes, size: int, kind: ChunkKind, now: float, proof: bytes | None = None
    ) -> bool:
        """Record a stored chunk (with its encoded proof of payment, if any); True if it
        is new.

        For a chunk already recorded, its arrival and audit times are kept and only
        its kind may change, from cache to responsible (use ``set_chunk_kind`` to
        demote it); a proof given replaces the one recorded.
        """
        values = {**_new_chunk_values(address, size, kind, now), "proof": proof}
        with self._write() as connection:
            if connection.execute(_INSERT_CHUNK_IF_NEW, values).rowcount > 0:
                return True
            if values["kind"] == ChunkKind.RESPONSIBLE.value:
                connection.execute(
                    _SET_CHUNK_KIND, {"match_address": address, "new_kind": values["kind"]}
                )
            if proof is not None:
                connection.execute(_SET_PROOF, {"match_address": address, "new_proof": proof})
            return False

    def get_proof(self, address: bytes) -> bytes | None:
        """The encoded proof of payment kept with a chunk, or None (unpaid or unknown)."""
        with self._read() as connection:
            proof: bytes | None = connection.execute(
                _GET_PROOF, {"match_address": address}
            ).scalar_one_or_none()
        return proof

    def set_proof(self, address: bytes, proof: bytes) -> bool:
        """Keep ``proof`` with a recorded chunk; False if the chunk is unknown."""
        with self._write() as connection:
            values = {"match_address": address, "new_proof": proof}
            return connection.execute(_SET_PROOF, values).rowcount > 0

    def add_chunks(self, chunks: Iterable[tuple[bytes, int, ChunkKind]], now: float) -> None:
        """Record many ``(address, size, kind)`` in one transaction, like ``add_chunk``."""
        values = [_new_chunk_values(address, size, kind, now) for address, size, kind in chunks]
        if values:
            with self._write() as connection:
                connection.execute(_UPSERT_CHUNK, values)

    def get_chunk(self, address: bytes) -> ChunkRecord | None:
        """The metadata of one chunk, or None."""
        with self._read() as connection:
            row = connection.execute(_GET_CHUNK, {"match_address": address}).one_or_none()
        return None if row is None else _chunk_record(*row)

    def delete_chunk(self, address: bytes) -> bool:
        """Forget a chunk's metadata; False if it was not recorded."""
        with self._write() as connection:
            return connection.execute(_DELETE_CHUNK, {"match_address": address}).rowcount > 0

    def set_chunk_kind(self, address: bytes, kind: ChunkKind) -> bool:
        """Change why a chunk is held; False if it is not recorded."""
        values = {"match_address": address, "new_kind": ChunkKind(kind).value}
        with self._write() as connection:
            return connection.execute(_SET_CHUNK_KIND, values).rowcount > 0

    def list_chunk_addresses(self, kind: ChunkKind | None = None) -> list[bytes]:
        """Addresses of the recorded chunks (of one kind if given), in address order."""
        with self._read() as connection:
            if kind is None:
                return list(connection.execute(_LIST_CHUNKS).scalars())
            values = {"kind": ChunkKind(kind).value}
            return list(connection.execute(_LIST_CHUNKS_OF_KIND, values).scalars())

    def chunks_of_kind(self, kind: ChunkKind) -> list[ChunkRecord]:
        """The metadata of every chunk of one kind, oldest stored first."""
        with self._read() as connection:
            rows = connection.execute(_CHUNKS_OF_KIND, {"kind": ChunkKind(kind).value})
            return [_chunk_record(*row) for row in rows]

    def chunk_totals(self) -> dict[ChunkKind, ChunkTotals]:
        """Count and bytes of the recorded chunks, for every kind (zeros included)."""
        totals = {kind: ChunkTotals(0, 0) for kind in ChunkKind}
        with self._read() as connection:
            for kind, count, total_bytes in connection.execute(_CHUNK_TOTALS):
                totals[ChunkKind(kind)] = ChunkTotals(count, total_bytes)
        return totals

    def mark_verified(self, address: bytes, now: float) -> bool:
        """Record that the chunk's bytes were checked good at ``now``; False if unknown."""
        with self._write() as connection:
            values = {"match_address": address, "verified_at": now}
            return connection.execute(_MARK_VERIFIED, values).rowcount > 0

    def chunks_due_for_audit(self, before: float, limit: int) -> list[ChunkRecord]:
        """Up to ``limit`` chunks last known good (audited, else stored) before
        ``before``, the longest unchecked first."""
        with self._read() as connection:
            rows = connection.execute(_CHUNKS_DUE, {"before": before, "limit": limit})
            return [_chunk_record(*row) for row in rows]


def _new_chunk_values(address: bytes, size: int, kind: ChunkKind, now: float) -> dict[str, Any]:
    check_address(address)
    if size < 0:
        raise ValueError(f"a chunk size cannot be negative: {size}")
    return {"address": address, "size": size, "kind": ChunkKind(kind).value, "stored_at": now}


def _chunk_record(
    address: bytes, size: int, kind: str, stored_at: float, last_verified: float | None
) -> ChunkRecord:
    return ChunkRecord(address, size, ChunkKind(kind), stored_at, last_verified)


def _peer_values(peer: StoredPeer) -> dict[str, Any]:
    return {
        "peer_id": peer.peer_id,
        "addrs": list(peer.addrs),
        "last_seen": peer.last_seen,
        "failures": peer.failures,
        "in_routing_table": peer.in_routing_table,
        "ip": peer.ip,
    }


def _trust_values(record: TrustRecord) -> dict[str, Any]:
    return {
        "peer_id": record.peer_id,
        "score": record.score,
        "updated_at": record.updated_at,
        "passed": record.passed,
        "failed": record.failed,
        "shunned_until": record.shunned_until,
    }


# --- statements, built once (Core on the model tables: cheaper per call than ORM) ----


_GET_STATE = select(_state.c.value).where(_state.c.key == bindparam("key"))
_ALL_STATE = select(_state.c.key, _state.c.value)
_upsert_state = sqlite_insert(_state)
_SET_STATE = _upsert_state.on_conflict_do_update(
    index_elements=[_state.c.key], set_={"value": _upsert_state.excluded.value}
)

_DELETE_ALL_PEERS = delete(_peers)
_INSERT_PEER = insert(_peers)
_upsert_peer = sqlite_insert(_peers)
_UPSERT_PEER = _upsert_peer.on_conflict_do_update(
    index_elements=[_peers.c.peer_id],
    set_={
        name: _upsert_peer.excluded[name]
        for name in ("addrs", "last_seen", "failures", "in_routing_table", "ip")
    },
)
_LOAD_PEERS = select(
    _peers.c.peer_id,
    _peers.c.addrs,
    _peers.c.last_seen,
    _peers.c.failures,
    _peers.c.in_routing_table,
    _peers.c.ip,
).order_by(_peers.c.in_routing_table.desc(), _peers.c.last_seen, _peers.c.peer_id)
_peer_id_is = _peers.c.peer_id == bindparam("match_peer_id")
_DELETE_PEER = delete(_peers).where(_peer_id_is)
_RECORD_PEER_FAILURE = (
    update(_peers)
    .where(_peer_id_is)
    .values(failures=_peers.c.failures + 1)
    .returning(_peers.c.failures)
)

_TRUST_COLUMNS = (
    _trust.c.peer_id,
    _trust.c.score,
    _trust.c.updated_at,
    _trust.c.passed,
    _trust.c.failed,
    _trust.c.shunned_until,
)
_LOAD_TRUST = select(*_TRUST_COLUMNS).order_by(_trust.c.peer_id)
_upsert_trust = sqlite_insert(_trust)
_UPSERT_TRUST = _upsert_trust.on_conflict_do_update(
    index_elements=[_trust.c.peer_id],
    set_={
        name: _upsert_trust.excluded[name]
        for name in ("score", "updated_at", "passed", "failed", "shunned_until")
    },
)
_DELETE_TRUST = delete(_trust).where(_trust.c.peer_id == bindparam("match_peer_id"))

_CHUNK_COLUMNS = (
    _chunks.c.address,
    _chunks.c.size,
    _chunks.c.kind,
    _chunks.c.stored_at,
    _chunks.c.last_verified,
)
_INSERT_CHUNK_IF_NEW = sqlite_insert(_chunks).on_conflict_do_nothing(
    index_elements=[_chunks.c.address]
)
_upsert_chunk = sqlite_insert(_chunks)
_UPSERT_CHUNK = _upsert_chunk.on_conflict_do_update(
    index_elements=[_chunks.c.address],
    set_={
        # A known chunk keeps its times; responsible wins over cache.
        "kind": case(
            (
                _upsert_chunk.excluded.kind == ChunkKind.RESPONSIBLE.value,
                ChunkKind.RESPONSIBLE.value,
            ),
            else_=_chunks.c.kind,
        )
    },
)
_address_is = _chunks.c.address == bindparam("match_address")
_GET_CHUNK = select(*_CHUNK_COLUMNS).where(_address_is)
_DELETE_CHUNK = delete(_chunks).where(_address_is)
_SET_CHUNK_KIND = update(_chunks).where(_address_is).values(kind=bindparam("new_kind"))
_GET_PROOF = select(_chunks.c.proof).where(_address_is)
_SET_PROOF = update(_chunks).where(_address_is).values(proof=bindparam("new_proof"))
_MARK_VERIFIED = update(_chunks).where(_address_is).values(last_verified=bindparam("verified_at"))
_LIST_CHUNKS = select(_chunks.c.address).order_by(_chunks.c.address)
_LIST_CHUNKS_OF_KIND = _LIST_CHUNKS.where(_chunks.c.kind == bindparam("kind"))
_CHUNKS_OF_KIND = (
    select(*_CHUNK_COLUMNS)
    .where(_chunks.c.kind == bindparam("kind"))
    .order_by(_chunks.c.stored_at, _chunks.c.address)
)
_CHUNK_TOTALS = select(
    _chunks.c.kind, func.count(), func.coalesce(func.sum(_chunks.c.size), 0)
).group_by(_chunks.c.kind)
_last_known_good = func.coalesce(_chunks.c.last_verified, _chunks.c.stored_at)
_CHUNKS_DUE = (
    select(*_CHUNK_COLUMNS)
    .where(_last_known_good < bindparam("before"))
    .order_by(_last_known_good)
    .limit(bindparam("limit"))
)
