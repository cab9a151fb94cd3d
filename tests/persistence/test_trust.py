"""Peers' trust from storage audits: the repository calls and revision 0005."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from persistence.database import Database, TrustRecord, database_path, open_database
from tests.persistence.test_migrations import migrate

PREVIOUS_REVISION = "0004_chunk_proof"


def peer(n: int) -> bytes:
    return n.to_bytes(32, "big")


def record(n: int, score: float = 1.5, shunned_until: float | None = None) -> TrustRecord:
    return TrustRecord(
        peer(n), score, 100.0 + n, passed=n, failed=2 * n, shunned_until=shunned_until
    )


def test_a_fresh_database_trusts_nobody_yet(database: Database) -> None:
    assert database.load_trust() == []


def test_trust_round_trips_in_peer_id_order(database: Database) -> None:
    records = [record(3, -2.5, shunned_until=4000.0), record(1), record(2, 0.0)]
    database.save_trust(records)
    assert database.load_trust() == [records[1], records[2], records[0]]


def test_saving_overwrites_the_given_peers_and_keeps_the_others(database: Database) -> None:
    database.save_trust([record(1), record(2, shunned_until=500.0)])
    changed = TrustRecord(peer(2), -7.25, 300.0, passed=4, failed=9, shunned_until=None)
    database.save_trust([changed, record(3)])
    assert database.load_trust() == [record(1), changed, record(3)]


def test_the_last_record_of_a_repeated_peer_wins(database: Database) -> None:
    database.save_trust([record(1, 1.0), record(1, 2.0)])
    assert database.load_trust() == [record(1, 2.0)]


def test_saving_nothing_changes_nothing(database: Database) -> None:
    database.save_trust([record(1)])
    database.save_trust([])
    database.delete_trust([])
    assert database.load_trust() == [record(1)]


def test_deleting_forgets_only_the_given_peers(database: Database) -> None:
    database.save_trust([record(1), record(2), record(3)])
    database.delete_trust(iter([peer(1), peer(3), peer(1), peer(99)]))  # 99: unknown, ignored
    assert database.load_trust() == [record(2)]


def test_a_bad_peer_id_is_refused_and_nothing_is_saved(database: Database) -> None:
    database.save_trust([record(1)])
    bad = TrustRecord(b"short", 0.0, 1.0, 0, 0, None)
    with pytest.raises(ValueError):
        database.save_trust([record(2), bad])
    assert database.load_trust() == [record(1)]


def test_the_table_checks_the_peer_id_length(database: Database) -> None:
    with sqlite3.connect(database.path) as raw, pytest.raises(sqlite3.IntegrityError):
        raw.execute("INSERT INTO peer_trust (peer_id, score, updated_at) VALUES (?, 0, 0)", (b"x",))


def test_counts_default_to_zero(database: Database) -> None:
    with sqlite3.connect(database.path) as raw:
        raw.execute(
            "INSERT INTO peer_trust (peer_id, score, updated_at) VALUES (?, 0.5, 7.0)", (peer(1),)
        )
    assert database.load_trust() == [TrustRecord(peer(1), 0.5, 7.0, 0, 0, None)]


def test_trust_survives_closing_and_reopening(tmp_path: Path) -> None:
    records = [record(1, -3.0, shunned_until=1e9), record(2)]
    with open_database(tmp_path) as db:
        db.save_trust(records)
    with open_database(tmp_path) as db:
        assert db.load_trust() == records


# --- revision 0005 ---------------------------------------------------------------------


def tables(root_dir: Path) -> set[str]:
    with sqlite3.connect(database_path(root_dir)) as raw:
        return {
            name for (name,) in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }


def test_a_database_at_the_previous_revision_gains_the_trust_table_at_open(
    tmp_path: Path,
) -> None:
    migrate(tmp_path, "upgrade", PREVIOUS_REVISION)
    assert "peer_trust" not in tables(tmp_path)
    with open_database(tmp_path) as db:
        assert db.schema_revision() == "0005_peer_trust"
        assert db.load_trust() == []
        db.save_trust([record(1)])
        assert db.load_trust() == [record(1)]


def test_the_trust_table_downgrades_and_comes_back_empty(tmp_path: Path) -> None:
    with open_database(tmp_path) as db:
        db.save_trust([record(1)])
        db.set_state("peer_id", "ab" * 32)
    migrate(tmp_path, "downgrade", PREVIOUS_REVISION)
    assert "peer_trust" not in tables(tmp_path)
    with sqlite3.connect(database_path(tmp_path)) as raw:
        (revision,) = raw.execute("SELECT version_num FROM alembic_version").fetchone()
    assert revision == PREVIOUS_REVISION
    with open_database(tmp_path) as db:  # upgraded to head again
        assert db.schema_revision() == "0005_peer_trust"
        assert db.get_state("peer_id") == "ab" * 32, "the other tables keep their rows"
        assert db.load_trust() == []
