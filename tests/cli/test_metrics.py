"""Prometheus metrics: the exposition text, and serving it over HTTP."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import pytest

from cli.metrics import MetricsServer, render
from tests.cli.samples import audits_section

STATUS: dict[str, Any] = {
    "actors": {
        "ChunkKeeper": {
            "depth": 2,
            "processed": 10,
            "rate": 1.5,
            "mean_ms": 4.0,
            "last_message": "x",
            "failures": 0,
        }
    },
    "connections": [
        {"peer_id": "ab", "how": "direct"},
        {"peer_id": "cd", "how": "relayed"},
        {"peer_id": "ef"},
    ],
    "routing_table_size": 24,
    "chunks": 7,
    "cached_chunks": 1,
    "bytes_stored": 7000,
    "puts": 9,
    "gets": 3,
    "handshake": {"rejected": {"bad_signature": 2}},
    "payments": {
        "enabled": True,
        "rewards_address": "0x" + "5a" * 20,
        "quotes_given": 31,
        "paid_chunks": 9,
        "earned": 27 * 10**12,
        "chain_calls": 10,
        "chain_errors": 1,
        "last_chain_error": "timed out",
        "proof_verdicts": {"paid": 9, "unpaid": 1},
        "proofs_cached": 9,
        "proof_cache_hits": 4,
        "payment_rejections": {"unpaid": 1, "expired": 2},
    },
    "nat": {
        "reachability": "public",
        "relaying": {
            "reservations": 3,
            "bytes_relayed": 4096,
            "datagrams_dropped_over_budget": 5,
            "datagrams_dropped_no_circuit": 1,
        },
    },
}


def test_render_has_every_figure() -> None:
    text = render(STATUS)
    assert 'autonomi_mailbox_depth{actor="ChunkKeeper"} 2' in text
    assert 'autonomi_mailbox_mean_seconds{actor="ChunkKeeper"} 0.004' in text
    assert 'autonomi_connections{how="direct"} 2' in text
    assert 'autonomi_connections{how="relayed"} 1' in text
    assert "autonomi_routing_table_peers 24" in text
    assert 'autonomi_chunks{kind="responsible"} 7' in text
    assert "autonomi_bytes_stored 7000" in text
    assert "autonomi_puts_total 9" in text and "autonomi_gets_total 3" in text
    assert 'autonomi_handshake_failures_total{reason="bad_signature"} 2' in text
    assert 'autonomi_reachability{verdict="public"} 1' in text
    assert 'autonomi_reachability{verdict="private"} 0' in text
    assert "autonomi_relay_reservations 3" in text
    assert "autonomi_relayed_bytes_total 4096" in text
    assert 'autonomi_relay_dropped_total{why="over_budget"} 5' in text
    assert "autonomi_payments_enabled 1" in text
    assert "autonomi_payments_earned_tokens 27000000000000" in text
    assert "# TYPE autonomi_payments_earned_tokens gauge" in text
    assert "autonomi_quotes_given_total 31" in text
    assert "autonomi_paid_chunks_total 9" in text
    assert "autonomi_chain_errors_total 1" in text
    assert 'autonomi_payment_rejections_total{verdict="expired"} 2' in text
    assert 'autonomi_payment_rejections_total{verdict="unpaid"} 1' in text
    assert 'autonomi_proof_verdicts_total{verdict="paid"} 9' in text
    assert 'autonomi_proof_verdicts_total{verdict="unpaid"} 1' in text
    for line in text.splitlines():
        assert line.startswith("#") or len(line.split(" ")) == 2


def test_render_a_free_node_and_an_empty_status() -> None:
    free = render({"payments": {"enabled": False, "quotes_given": 0, "paid_chunks": 0}})
    assert "autonomi_payments_enabled 0" in free
    assert "autonomi_payments_earned_tokens 0" in free
    assert "autonomi_quotes_given_total 0" in free and "autonomi_paid_chunks_total 0" in free
    assert "autonomi_chain_errors_total 0" in free
    assert 'autonomi_payment_rejections_total{verdict="none"} 0' in free
    assert 'autonomi_proof_verdicts_total{verdict="none"} 0' in free
    empty = render({})
    assert "autonomi_payments_enabled 0" in empty and "autonomi_paid_chunks_total 0" in empty
    for text in (free, empty):
        names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
        assert len(names) == len(set(names))


def test_served_over_http() -> None:
    server = MetricsServer(lambda: STATUS)
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as reply:
            assert reply.headers["Content-Type"].startswith("text/plain")
            assert "autonomi_routing_table_peers 24" in reply.read().decode()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/other", timeout=5)
    finally:
        server.stop()


AUDITS = audits_section()


def type_names(text: str) -> list[str]:
    return [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]


def test_render_audits() -> None:
    text = render({**STATUS, "audits": AUDITS})
    assert "# TYPE autonomi_audits_total counter" in text
    assert 'autonomi_audits_total{outcome="passed"} 10' in text
    assert 'autonomi_audits_total{outcome="failed"} 1' in text
    assert 'autonomi_audits_total{outcome="unanswered"} 1' in text
    assert "autonomi_audit_challenges_answered_total 9" in text
    assert "# TYPE autonomi_audit_challenges_refused_total counter" in text
    assert 'autonomi_audit_challenges_refused_total{reason="busy"} 2' in text
    assert 'autonomi_audit_challenges_refused_total{reason="replayed"} 1' in text
    assert 'autonomi_audit_challenges_refused_total{reason="not_responsible"} 0' in text
    assert "autonomi_audit_missing_total 3" in text
    assert "# TYPE autonomi_shunned_peers gauge" in text
    assert "autonomi_shunned_peers 1" in text
    assert "# TYPE autonomi_peer_trust_score gauge" in text
    assert f'autonomi_peer_trust_score{{peer="{"aa" * 8}"}} 1.25' in text
    assert f'autonomi_peer_trust_score{{peer="{"dd" * 8}"}} -2.5' in text
    names = type_names(text)
    assert len(names) == len(set(names))
    for line in text.splitlines():
        assert line.startswith("#") or len(line.split(" ")) == 2


def test_render_without_audits_exports_no_audit_figures() -> None:
    for status in ({}, STATUS):  # an older node, or one that does not audit
        text = render(status)
        assert "audit" not in text and "shunned" not in text and "trust" not in text


def test_render_audits_before_any_audit_and_of_odd_shapes() -> None:
    fresh = render({"audits": {"enabled": True, "shunned": [], "trust": {}, "refused": {}}})
    for outcome in ("passed", "failed", "unanswered"):
        assert f'autonomi_audits_total{{outcome="{outcome}"}} 0' in fresh
    assert "autonomi_audit_challenges_answered_total 0" in fresh
    assert 'autonomi_audit_challenges_refused_total{reason="none"} 0' in fresh
    assert "autonomi_shunned_peers 0" in fresh
    assert "autonomi_peer_trust_score" not in fresh  # no peer audited: no series
    odd = render(
        {
            "audits": {
                "passed": "ten",
                "failed": None,
                "refused": ["busy"],
                "shunned": "all",
                "trust": {"ab" * 32: 5, "cd" * 32: {"score": True}},
            }
        }
    )
    assert 'autonomi_audits_total{outcome="passed"} 0' in odd
    assert 'autonomi_audit_challenges_refused_total{reason="none"} 0' in odd
    assert "autonomi_shunned_peers 0" in odd
    assert f'autonomi_peer_trust_score{{peer="{"cd" * 8}"}} 0' in odd
    assert "ab" * 8 not in odd
