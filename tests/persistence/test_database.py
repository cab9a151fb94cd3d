"""The node database on real SQLite files: opening, checks, settings and repository calls."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import persistence.database
from persistence.database import (
    DATABASE_FILENAME,
    HEAD_SCHEMA_FILE,
    ChunkRecord,
    ChunkTotals,
    Database,
    StoredPeer,
    alembic_config,
    create_sqlite_engine,
    database_path,
    dump_schema,
    head_revision,
    open_database,
)
from persistence.errors import (
    CorruptDatabaseError,
    DatabaseError,
    DatabaseUnavailableError,
    SchemaError,
)
from persistence.models import ChunkKind, metadata
from tests.conftest import MountTmpfs

RESPONSIBLE = ChunkKind.RESPONSIBLE
CACHE = ChunkKind.CACHE


def address(n: int) -> bytes:
    return n.to_bytes(32, "big")


def directory_listing(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in directory.iterdir() if path.is_file()}


# --- opening ------------------------------------------------------------------------


def test_a_fresh_database_is_created_at_head_in_wal_mode(tmp_path: Path) -> None:
    with open_database(tmp_path) as db:
        assert db.path == tmp_path / DATABASE_FILENAME
        assert db.schema_revision() == head_revision()
        settings_ = db.connection_settings()
        assert settings_["journal_mode"] == "wal"
        assert settings_["synchronous"] == 1  # NORMAL
        assert settings_["foreign_keys"] == 1
        assert settings_["busy_timeout"] > 0
    # WAL is a property of the file, seen by any other connection too.
    with sqlite3.connect(tmp_path / DATABASE_FILENAME) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_data_survives_closing_and_reopening(tmp_path: Path) -> None:
    with open_database(tmp_path) as db:
        db.set_state("peer_id", "ab" * 32)
        db.add_chunk(address(1), 100, RESPONSIBLE, now=10.0)
    with open_database(tmp_path) as db:
        assert db.get_state("peer_id") == "ab" * 32
        assert db.get_chunk(address(1)) == ChunkRecord(address(1), 100, RESPONSIBLE, 10.0, None)
        assert db.schema_revision() == head_revision()


def migrated_with_alembic(root_dir: Path) -> Path:
    """``alembic upgrade head`` on a new database in ``root_dir``; returns its path."""
    path = database_path(root_dir)
    engine = create_sqlite_engine(path)
    try:
        with engine.connect().execution_options(sqlite_begin="IMMEDIATE") as connection:
            command.upgrade(alembic_config(connection), "head")
    finally:
        engine.dispose()
    return path


def test_the_schema_snapshot_is_what_the_migrations_build(tmp_path: Path) -> None:
    built = dump_schema(migrated_with_alembic(tmp_path))
    if os.environ.get("UPDATE_SCHEMA_SNAPSHOT"):
        HEAD_SCHEMA_FILE.write_text(built, encoding="utf-8")
    assert HEAD_SCHEMA_FILE.read_text(encoding="utf-8") == built, (
        "migrations/head_schema.sql is stale: rewrite it with "
        "UPDATE_SCHEMA_SNAPSHOT=1 pytest tests/persistence/test_database.py -k snapshot"
    )


def test_a_new_database_is_built_from_the_snapshot_without_loading_alembic(
    tmp_path: Path,
) -> None:
    probe = (
        "import sys; from pathlib import Path; from persistence.database import open_database; "
        f"open_database(Path({str(tmp_path)!r})).close(); print('alembic' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    migrated = tmp_path / "migrated"
    migrated.mkdir()
    assert dump_schema(database_path(tmp_path)) == dump_schema(migrated_with_alembic(migrated))


@pytest.mark.parametrize("snapshot", ["missing", "stale"])
def test_without_a_usable_snapshot_a_new_database_is_migrated_by_alembic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, snapshot: str
) -> None:
    replacement = tmp_path / "head_schema.sql"
    if snapshot == "stale":  # a migration was added and the snapshot not rewritten
        text = HEAD_SCHEMA_FILE.read_text(encoding="utf-8")
        replacement.write_text(text.replace(head_revision(), "0000_older"), encoding="utf-8")
    monkeypatch.setattr(persistence.database, "HEAD_SCHEMA_FILE", replacement)
    root = tmp_path / "node"
    root.mkdir()
    with open_database(root) as db:
        assert db.schema_revision() == head_revision()
    migrated = tmp_path / "migrated"
    migrated.mkdir()
    assert dump_schema(database_path(root)) == dump_schema(migrated_with_alembic(migrated))


def test_the_models_match_what_the_migrations_build(tmp_path: Path) -> None:
    engine = create_sqlite_engine(migrated_with_alembic(tmp_path))
    try:
        with engine.connect() as connection, warnings.catch_warnings():
            # SQLite cannot reflect the expression index; it is checked below instead.
            warnings.simplefilter("ignore")
            differences = compare_metadata(MigrationContext.configure(connection), metadata)
            indexes = {
                name
                for (name,) in connection.exec_driver_sql(
                    "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'chunks'"
                )
            }
    finally:
        engine.dispose()
    assert differences == []
    assert {"ix_chunks_audit_order", "ix_chunks_kind_size"} <= indexes


def test_a_missing_root_dir_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatabaseUnavailableError, match="does not exist") as caught:
        open_database(missing)
    assert str(missing) in str(caught.value)
    assert not missing.exists()


def test_a_root_dir_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(DatabaseUnavailableError, match="not a directory"):
        open_database(not_a_dir)


def test_an_unwritable_root_dir_is_a_clear_error(mount_tmpfs: MountTmpfs) -> None:
    read_only = mount_tmpfs(size="64k", read_only=True)
    with pytest.raises(DatabaseUnavailableError, match="not writable") as caught:
        open_database(read_only)
    assert str(read_only) in str(caught.value)


# --- corrupt files --------------------------------------------------------------------


@pytest.fixture(scope="module")
def populated_database_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a closed, checkpointed database holding a few thousand rows."""
    root = tmp_path_factory.mktemp("populated")
    with open_database(root) as db:
        db.add_chunks(((address(n), n, RESPONSIBLE) for n in range(3000)), now=1.0)
        db.save_peers(StoredPeer(address(n), (f"/ip4/127.0.0.1/udp/{n}",), 1.0) for n in range(50))
    content = database_path(root).read_bytes()
    assert len(content) > 64 * 1024
    assert not (root / (DATABASE_FILENAME + "-wal")).exists()
    return content


def _damage(kind: str, good: bytes) -> bytes:
    if kind == "random bytes":
        return os.urandom(20_000)
    if kind == "text file":
        return b"this is not a database\n" * 100
    if kind == "header only":
        return good[:60]
    if kind == "truncated to one page":
        return good[:4096]
    if kind == "truncated to half":
        return good[: len(good) // 2]
    if kind == "pages overwritten":
        middle = len(good) // 2
        return good[:4096] + os.urandom(middle - 4096) + good[middle:]
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "random bytes",
        "text file",
        "header only",
        "truncated to one page",
        "truncated to half",
        "pages overwritten",
    ],
)
def test_a_corrupt_file_is_reported_and_left_untouched(
    tmp_path: Path, populated_database_bytes: bytes, kind: str
) -> None:
    path = database_path(tmp_path)
    damaged = _damage(kind, populated_database_bytes)
    path.write_bytes(damaged)
    before = directory_listing(tmp_path)
    with pytest.raises(CorruptDatabaseError) as caught:
        open_database(tmp_path)
    assert isinstance(caught.value, DatabaseError)
    assert caught.value.path == path
    assert str(path) in str(caught.value)
    assert path.read_bytes() == damaged
    assert directory_listing(tmp_path) == before  # no -wal/-shm or probe files left either


def test_a_populated_copy_opens_fine(tmp_path: Path, populated_database_bytes: bytes) -> None:
    """The control case of the corruption tests: the undamaged bytes open."""
    database_path(tmp_path).write_bytes(populated_database_bytes)
    with open_database(tmp_path) as db:
        assert db.chunk_totals()[RESPONSIBLE].count == 3000
        assert len(db.load_peers()) == 50


def test_a_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    with open_database(tmp_path) as db:
        db.set_state("k", "v")
    with sqlite3.connect(database_path(tmp_path)) as raw:
        raw.execute("UPDATE alembic_version SET version_num = '0099_future'")
    with pytest.raises(SchemaError, match="0099_future"):
        open_database(tmp_path)
    with sqlite3.connect(database_path(tmp_path)) as raw:
        assert raw.execute("SELECT value FROM node_state").fetchall() == [("v",)]


def test_a_database_after_a_crash_with_an_unmerged_wal_opens(
    tmp_path: Path, populated_database_bytes: bytes
) -> None:
    """A -wal file left by kill -9 is recovered, not taken for corruption."""
    source = tmp_path / "src"
    source.mkdir()
    database_path(source).write_bytes(populated_database_bytes)
    raw = sqlite3.connect(database_path(source))
    raw.execute("PRAGMA journal_mode = WAL")
    raw.execute("PRAGMA wal_autocheckpoint = 0")
    raw.execute("INSERT INTO node_state VALUES ('after', 'crash')")
    raw.commit()
    # Copy while the connection is open: the copy looks like a crashed node's directory.
    crashed = tmp_path / "crashed"
    shutil.copytree(source, crashed)
    raw.close()
    assert (crashed / (DATABASE_FILENAME + "-wal")).stat().st_size > 0
    with open_database(crashed) as db:
        assert db.get_state("after") == "crash"


def test_a_writer_waits_for_the_lock_and_readers_are_not_blocked(tmp_path: Path) -> None:
    with open_database(tmp_path, busy_timeout_ms=150) as db:
        db.set_state("k", "before")
        other = sqlite3.connect(
            database_path(tmp_path), isolation_level=None, check_same_thread=False
        )
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("UPDATE node_state SET value = 'other' WHERE key = 'k'")
            assert db.get_state("k") == "before"  # WAL: a reader sees the last commit
            with pytest.raises(DatabaseUnavailableError, match="locked"):
                db.set_state("k", "mine")
            release = threading.Timer(0.05, lambda: other.execute("COMMIT"))
            release.start()
            db.set_state("k", "mine")  # queues on the busy timeout until the commit
            release.join()
        finally:
            other.close()
        assert db.get_state("k") == "mine"


# --- repository: node state and peers -------------------------------------------------


def test_node_state_round_trips(database: Database) -> None:
    assert database.get_state("peer_id") is None
    database.set_state("peer_id", "aa")
    database.set_state("created_at", "1.5")
    database.set_state("peer_id", "bb")
    assert database.get_state("peer_id") == "bb"
    assert database.all_state() == {"peer_id": "bb", "created_at": "1.5"}


def test_peers_are_saved_as_a_whole_and_loaded_in_bucket_order(database: Database) -> None:
    first = [
        StoredPeer(address(1), ("/ip4/127.0.0.1/udp/1",), last_seen=30.0),
        StoredPeer(address(2), ("/ip4/127.0.0.1/udp/2", "/ip4/10.0.0.2/udp/2"), 10.0, 2),
        StoredPeer(address(3), (), last_seen=5.0, in_routing_table=False),
        StoredPeer(address(4), ("/ip4/127.0.0.1/udp/4",), last_seen=20.0),
    ]
    database.save_peers(first)
    assert database.load_peers() == [first[1], first[3], first[0], first[2]]

    second = [StoredPeer(address(9), ("/ip4/127.0.0.1/udp/9",), 1.0)]
    database.save_peers(second)
    assert database.load_peers() == second
    database.save_peers([])
    assert database.load_peers() == []


def test_peers_keep_the_ip_they_were_seen_at(database: Database) -> None:
    seen = StoredPeer(address(1), ("/ip4/198.51.100.7/udp/1",), 1.0, ip="198.51.100.7")
    unknown = StoredPeer(address(2), (), 2.0)
    database.save_peers([seen, unknown])
    assert database.load_peers() == [seen, unknown]
    moved = StoredPeer(address(1), ("/ip4/203.0.113.9/udp/1",), 3.0, ip="203.0.113.9")
    database.upsert_peer(moved)
    assert database.load_peers()[-1] == moved


def test_a_failed_peer_save_keeps_the_previous_peers(database: Database) -> None:
    kept = [StoredPeer(address(1), (), 1.0)]
    database.save_peers(kept)
    with pytest.raises(ValueError, match="32 bytes"):
        database.save_peers([StoredPeer(address(2), (), 1.0), StoredPeer(b"short", (), 1.0)])
    assert database.load_peers() == kept


def test_single_peer_calls(database: Database) -> None:
    peer = StoredPeer(address(7), ("/ip4/127.0.0.1/udp/7",), 3.0)
    assert database.record_peer_failure(peer.peer_id) is None
    database.upsert_peer(peer)
    assert database.record_peer_failure(peer.peer_id) == 1
    assert database.record_peer_failure(peer.peer_id) == 2
    assert database.load_peers()[0].failures == 2
    seen_again = StoredPeer(peer.peer_id, ("/ip4/127.0.0.1/udp/8",), 4.0, 0, False)
    database.upsert_peer(seen_again)
    assert database.load_peers() == [seen_again]
    assert database.delete_peer(peer.peer_id) is True
    assert database.delete_peer(peer.peer_id) is False
    assert database.load_peers() == []


# --- repository: chunks ---------------------------------------------------------------


def test_chunk_metadata_round_trips(database: Database) -> None:
    assert database.add_chunk(address(1), 1000, RESPONSIBLE, now=100.0) is True
    assert database.add_chunk(address(2), 20, CACHE, now=101.0) is True
    assert database.add_chunk(address(3), 3, CACHE, now=102.0) is True
    assert database.get_chunk(address(1)) == ChunkRecord(address(1), 1000, RESPONSIBLE, 100.0, None)
    assert database.get_chunk(address(99)) is None
    assert database.list_chunk_addresses() == [address(1), address(2), address(3)]
    assert database.list_chunk_addresses(CACHE) == [address(2), address(3)]
    assert database.list_chunk_addresses(RESPONSIBLE) == [address(1)]
    assert database.chunk_totals() == {
        RESPONSIBLE: ChunkTotals(1, 1000),
        CACHE: ChunkTotals(2, 23),
    }
    assert database.delete_chunk(address(3)) is True
    assert database.delete_chunk(address(3)) is False
    assert database.chunk_totals()[CACHE] == ChunkTotals(1, 20)


def test_totals_of_an_empty_store_are_zero(database: Database) -> None:
    assert database.chunk_totals() == {RESPONSIBLE: ChunkTotals(0, 0), CACHE: ChunkTotals(0, 0)}


def test_adding_a_known_chunk_promotes_but_never_demotes(database: Database) -> None:
    database.add_chunk(address(1), 10, CACHE, now=1.0)
    database.mark_verified(address(1), now=2.0)
    assert database.add_chunk(address(1), 10, CACHE, now=5.0) is False
    assert database.add_chunk(address(1), 10, RESPONSIBLE, now=6.0) is False
    assert database.get_chunk(address(1)) == ChunkRecord(address(1), 10, RESPONSIBLE, 1.0, 2.0)
    assert database.add_chunk(address(1), 10, CACHE, now=7.0) is False
    assert database.get_chunk(address(1)) == ChunkRecord(address(1), 10, RESPONSIBLE, 1.0, 2.0)
    assert database.set_chunk_kind(address(1), CACHE) is True
    assert database.list_chunk_addresses(CACHE) == [address(1)]
    assert database.set_chunk_kind(address(2), CACHE) is False


def test_batched_adds_follow_the_same_rules(database: Database) -> None:
    database.add_chunk(address(1), 10, CACHE, now=1.0)
    database.add_chunks(
        [(address(1), 10, RESPONSIBLE), (address(2), 20, CACHE), (address(3), 30, RESPONSIBLE)],
        now=2.0,
    )
    database.add_chunks([(address(3), 30, CACHE)], now=3.0)
    database.add_chunks([], now=4.0)
    assert database.get_chunk(address(1)) == ChunkRecord(address(1), 10, RESPONSIBLE, 1.0, None)
    assert database.get_chunk(address(2)) == ChunkRecord(address(2), 20, CACHE, 2.0, None)
    assert database.get_chunk(address(3)) == ChunkRecord(address(3), 30, RESPONSIBLE, 2.0, None)


def test_chunks_of_one_kind_come_oldest_stored_first(database: Database) -> None:
    database.add_chunk(address(5), 50, CACHE, now=3.0)
    database.add_chunk(address(1), 10, CACHE, now=9.0)
    database.add_chunk(address(2), 20, RESPONSIBLE, now=1.0)
    database.add_chunk(address(3), 30, CACHE, now=3.0)
    assert database.chunks_of_kind(CACHE) == [
        ChunkRecord(address(3), 30, CACHE, 3.0, None),
        ChunkRecord(address(5), 50, CACHE, 3.0, None),
        ChunkRecord(address(1), 10, CACHE, 9.0, None),
    ]
    assert [r.address for r in database.chunks_of_kind(RESPONSIBLE)] == [address(2)]


def test_bad_chunk_arguments_are_refused(database: Database) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        database.add_chunk(b"\x01" * 31, 1, CACHE, now=1.0)
    with pytest.raises(ValueError, match="negative"):
        database.add_chunk(address(1), -1, CACHE, now=1.0)
    with pytest.raises(ValueError, match="ChunkKind"):
        database.add_chunk(address(1), 1, "kept", now=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="32 bytes"):
        database.add_chunks([(address(1), 1, CACHE), (b"", 1, CACHE)], now=1.0)
    assert database.list_chunk_addresses() == []


def test_audits_take_the_longest_unchecked_chunks_first(database: Database) -> None:
    database.add_chunk(address(1), 1, RESPONSIBLE, now=100.0)
    database.add_chunk(address(2), 2, RESPONSIBLE, now=200.0)
    database.add_chunk(address(3), 3, CACHE, now=300.0)
    database.add_chunk(address(4), 4, CACHE, now=400.0)
    assert database.mark_verified(address(1), now=350.0) is True
    assert database.mark_verified(address(99), now=350.0) is False

    due = database.chunks_due_for_audit(before=360.0, limit=10)
    assert [record.address for record in due] == [address(2), address(3), address(1)]
    assert due[2].last_verified == 350.0
    assert [r.address for r in database.chunks_due_for_audit(before=360.0, limit=2)] == [
        address(2),
        address(3),
    ]
    assert database.chunks_due_for_audit(before=100.0, limit=10) == []


def test_the_database_is_usable_from_many_threads(database: Database) -> None:
    threads_count, per_thread = 8, 60
    errors: list[BaseException] = []

    def work(thread_index: int) -> None:
        try:
            for n in range(per_thread):
                key = thread_index * 1000 + n
                database.add_chunk(address(key), n, CACHE, now=float(n))
                database.mark_verified(address(key), now=float(n) + 0.5)
                database.set_state(f"thread-{thread_index}", str(n))
                database.chunk_totals()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    totals = database.chunk_totals()[CACHE]
    assert totals.count == threads_count * per_thread
    assert totals.total_bytes == threads_count * sum(range(per_thread))
    assert all(database.get_state(f"thread-{i}") == str(per_thread - 1) for i in range(8))


_operations = st.lists(
    st.tuples(
        st.sampled_from(["add", "delete", "kind"]),
        st.integers(0, 15),
        st.integers(0, 5000),
        st.sampled_from(list(ChunkKind)),
    ),
    max_size=40,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations=_operations)
def test_chunk_metadata_behaves_like_a_dictionary(
    database: Database, operations: list[tuple[str, int, int, ChunkKind]]
) -> None:
    for stale in database.list_chunk_addresses():
        database.delete_chunk(stale)
    model: dict[bytes, tuple[int, ChunkKind]] = {}
    for operation, n, size, kind in operations:
        key = address(n)
        if operation == "add":
            assert database.add_chunk(key, size, kind, now=1.0) is (key not in model)
            if key not in model:
                model[key] = (size, kind)
            elif kind is RESPONSIBLE:
                model[key] = (model[key][0], RESPONSIBLE)
        elif operation == "delete":
            assert database.delete_chunk(key) is (key in model)
            model.pop(key, None)
        else:
            assert database.set_chunk_kind(key, kind) is (key in model)
            if key in model:
                model[key] = (model[key][0], kind)
    assert database.list_chunk_addresses() == sorted(model)
    for kind in ChunkKind:
        held = [size for size, held_kind in model.values() if held_kind is kind]
        assert database.chunk_totals()[kind] == ChunkTotals(len(held), sum(held))


def test_a_chunk_keeps_its_proof_of_payment(database: Database) -> None:
    paid, free = bytes([1] * 32), bytes([2] * 32)
    assert database.add_chunk(paid, 10, ChunkKind.RESPONSIBLE, now=1.0, proof=b"proof-1")
    assert database.add_chunk(free, 10, ChunkKind.RESPONSIBLE, now=1.0)
    assert database.get_proof(paid) == b"proof-1"
    assert database.get_proof(free) is None
    assert database.get_proof(bytes(32)) is None
    # a replica stored again with a proof keeps its times and gains the proof
    assert not database.add_chunk(free, 10, ChunkKind.RESPONSIBLE, now=5.0, proof=b"proof-2")
    assert database.get_proof(free) == b"proof-2"
    record = database.get_chunk(free)
    assert record is not None and record.stored_at == 1.0
    assert database.set_proof(paid, b"proof-3") and database.get_proof(paid) == b"proof-3"
    assert not database.set_proof(bytes(32), b"x")
