"""Alembic migrations: upgrading older databases at open, downgrades, the operator's CLI."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from alembic import command

from persistence.database import (
    ChunkRecord,
    StoredPeer,
    alembic_config,
    create_sqlite_engine,
    database_path,
    head_revision,
    open_database,
)
from persistence.models import ChunkKind

REPO_ROOT = Path(__file__).resolve().parents[2]
PREVIOUS_REVISION = "0001_initial"


def migrate(root_dir: Path, action: str, revision: str) -> None:
    """``alembic upgrade|downgrade revision`` on the database of ``root_dir``."""
    engine = create_sqlite_engine(database_path(root_dir))
    try:
        with engine.connect().execution_options(sqlite_begin="IMMEDIATE") as connection:
            getattr(command, action)(alembic_config(connection), revision)
    finally:
        engine.dispose()


def build_previous_revision_with_rows(root_dir: Path) -> bytes:
    """A database at 0001 holding node state and a peer; returns the peer id."""
    migrate(root_dir, "upgrade", PREVIOUS_REVISION)
    peer_id = bytes(range(32))
    with sqlite3.connect(database_path(root_dir)) as raw:
        raw.execute("INSERT INTO node_state VALUES ('peer_id', ?)", (peer_id.hex(),))
        raw.execute(
            "INSERT INTO peers (peer_id, addrs, last_seen, failures) VALUES (?, ?, ?, ?)",
            (peer_id, json.dumps(["/ip4/127.0.0.1/udp/9000/quic-v1"]), 12.5, 3),
        )
    with sqlite3.connect(database_path(root_dir)) as raw:
        tables = {name for (name,) in raw.execute("SELECT name FROM sqlite_master")}
        (revision,) = raw.execute("SELECT version_num FROM alembic_version").fetchone()
    assert "chunks" not in tables
    assert revision == PREVIOUS_REVISION
    return peer_id


def test_a_database_at_the_previous_revision_is_upgraded_at_open_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    peer_id = build_previous_revision_with_rows(tmp_path)
    with open_database(tmp_path) as db:
        assert db.schema_revision() == head_revision()
        assert db.get_state("peer_id") == peer_id.hex()
        assert db.load_peers() == [
            StoredPeer(peer_id, ("/ip4/127.0.0.1/udp/9000/quic-v1",), 12.5, 3, True)
        ]
        # The tables of the new revision work.
        db.add_chunk(bytes(32), 5, ChunkKind.CACHE, now=1.0)
        assert db.get_chunk(bytes(32)) == ChunkRecord(bytes(32), 5, ChunkKind.CACHE, 1.0, None)


def test_downgrading_to_the_previous_revision_and_back_keeps_the_peers(tmp_path: Path) -> None:
    peer = StoredPeer(bytes(range(32)), ("/ip4/127.0.0.1/udp/1",), 1.0, 0, False)
    with open_database(tmp_path) as db:
        db.save_peers([peer])
        db.add_chunk(bytes(32), 5, ChunkKind.CACHE, now=1.0)
    migrate(tmp_path, "downgrade", PREVIOUS_REVISION)
    with sqlite3.connect(database_path(tmp_path)) as raw:
        columns = {row[1] for row in raw.execute("PRAGMA table_info(peers)")}
        tables = {name for (name,) in raw.execute("SELECT name FROM sqlite_master")}
        (revision,) = raw.execute("SELECT version_num FROM alembic_version").fetchone()
    assert revision == PREVIOUS_REVISION
    assert "in_routing_table" not in columns
    assert "chunks" not in tables
    with open_database(tmp_path) as db:
        # The replacement-cache flag did not exist in 0001: the peer comes back as a member.
        assert db.load_peers() == [StoredPeer(peer.peer_id, peer.addrs, 1.0, 0, True)]
        assert db.list_chunk_addresses() == []


def test_the_schema_downgrades_to_nothing(tmp_path: Path) -> None:
    open_database(tmp_path).close()
    migrate(tmp_path, "downgrade", "base")
    with sqlite3.connect(database_path(tmp_path)) as raw:
        tables = {
            name for (name,) in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
    assert tables == {"alembic_version"}


def run_alembic(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(REPO_ROOT / "alembic.ini"), *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_operators_can_use_the_alembic_ini_from_any_directory(tmp_path: Path) -> None:
    root = tmp_path / "node"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    history = run_alembic("history", cwd=elsewhere)
    assert history.returncode == 0, history.stderr
    assert "<base> -> 0001_initial" in history.stdout
    assert "0001_initial -> 0002_chunks" in history.stdout
    assert "(head)" in history.stdout

    upgraded = run_alembic("-x", f"root_dir={root}", "upgrade", PREVIOUS_REVISION, cwd=elsewhere)
    assert upgraded.returncode == 0, upgraded.stderr
    current = run_alembic("-x", f"db={database_path(root)}", "current", cwd=elsewhere)
    assert current.returncode == 0, current.stderr
    assert current.stdout.strip() == PREVIOUS_REVISION

    # The node takes it from there.
    with open_database(root) as db:
        assert db.schema_revision() == head_revision()

    unnamed = run_alembic("current", cwd=elsewhere)
    assert unnamed.returncode != 0
    assert "root_dir" in unnamed.stderr


def test_head_revision_constant_matches_the_migrations() -> None:
    import migrations
    from persistence.database import head_revision

    assert head_revision() == migrations.HEAD_REVISION


def test_a_database_at_head_opens_without_loading_alembic(tmp_path: Path) -> None:
    import subprocess
    import sys

    open_database(tmp_path).close()  # created and migrated (alembic loaded in this process)
    probe = (
        "import sys; from persistence.database import open_database; "
        f"open_database(__import__('pathlib').Path({str(tmp_path)!r})).close(); "
        "print('alembic' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_the_proof_column_downgrades_and_comes_back_keeping_the_chunks(tmp_path: Path) -> None:
    with open_database(tmp_path) as db:
        db.add_chunk(bytes(32), 5, ChunkKind.RESPONSIBLE, now=1.0, proof=b"paid")
    migrate(tmp_path, "downgrade", "0003_peer_ip")
    with sqlite3.connect(database_path(tmp_path)) as raw:
        columns = {row[1] for row in raw.execute("PRAGMA table_info(chunks)")}
    assert "proof" not in columns
    with open_database(tmp_path) as db:  # upgraded to head again
        assert db.list_chunk_addresses() == [bytes(32)]
        assert db.get_proof(bytes(32)) is None, "a chunk from before the revision has no proof"
