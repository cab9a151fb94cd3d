"""Prometheus metrics of a running node, served over HTTP (``run --metrics-port``).

The figures come from the same place as ``status``; the text is the Prometheus
exposition format (version 0.0.4).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

StatusSource = Callable[[], dict[str, Any]]


def _line(name: str, value: float, labels: dict[str, str] | None = None) -> str:
    if labels:
        inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        return f"{name}{{{inner}}} {value}"
    return f"{name} {value}"


def render(status: dict[str, Any]) -> str:
    """The exposition text for one ``status`` answer."""
    out: list[str] = []

    def metric(
        name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str] | None, float]]
    ) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(_line(name, value, labels) for labels, value in samples)

    actors = status.get("actors", {})
    metric(
        "autonomi_mailbox_depth",
        "gauge",
        "Messages waiting in an actor's mailbox.",
        [({"actor": a}, f["depth"]) for a, f in actors.items()],
    )
    metric(
        "autonomi_mailbox_processed_total",
        "counter",
        "Messages an actor has handled.",
        [({"actor": a}, f["processed"]) for a, f in actors.items()],
    )
    metric(
        "autonomi_mailbox_rate",
        "gauge",
        "Messages an actor handled per second, recently.",
        [({"actor": a}, f["rate"]) for a, f in actors.items()],
    )
    metric(
        "autonomi_mailbox_mean_seconds",
        "gauge",
        "Mean time an actor takes per message.",
        [({"actor": a}, f["mean_ms"] / 1000) for a, f in actors.items()],
    )
    kinds = Counter(str(c.get("how", "direct")) for c in status.get("connections", []))
    metric(
        "autonomi_connections",
        "gauge",
        "Authenticated connections, by how they were made.",
        [({"how": k}, n) for k, n in sorted(kinds.items())] or [({"how": "direct"}, 0)],
    )
    metric(
        "autonomi_routing_table_peers",
        "gauge",
        "Peers in the routing table.",
        [(None, status.get("routing_table_size", 0))],
    )
    metric(
        "autonomi_chunks",
        "gauge",
        "Chunks held, by kind.",
        [
            ({"kind": "responsible"}, status.get("chunks", 0)),
            ({"kind": "cache"}, status.get("cached_chunks", 0)),
        ],
    )
    metric(
        "autonomi_bytes_stored",
        "gauge",
        "Bytes of chunks this node is responsible for.",
        [(None, status.get("bytes_stored", 0))],
    )
    metric(
        "autonomi_puts_total", "counter", "Chunks stored by PUTs.", [(None, status.get("puts", 0))]
    )
    metric(
        "autonomi_gets_total", "counter", "GET requests served.", [(None, status.get("gets", 0))]
    )
    nat = status.get("nat", {})
    reachability = str(nat.get("reachability", "unknown"))
    metric(
        "autonomi_reachability",
        "gauge",
        "1 for this node's reachability verdict (public, private or unknown).",
        [({"verdict": v}, int(v == reachability)) for v in ("public", "private", "unknown")],
    )
    relaying = nat.get("relaying", {})
    metric(
        "autonomi_relay_reservations",
        "gauge",
        "Peers behind NAT holding a relay reservation on this node.",
        [(None, relaying.get("reservations", 0))],
    )
    metric(
        "autonomi_relayed_bytes_total",
        "counter",
        "Bytes this node relayed for peers behind NAT.",
        [(None, relaying.get("bytes_relayed", 0))],
    )
    metric(
        "autonomi_relay_dropped_total",
        "counter",
        "Relayed datagrams dropped, by why.",
        [
            ({"why": "over_budget"}, relaying.get("datagrams_dropped_over_budget", 0)),
            ({"why": "no_circuit"}, relaying.get("datagrams_dropped_no_circuit", 0)),
        ],
    )
    rejected = status.get("handshake", {}).get("rejected", {})
    metric(
        "autonomi_handshake_failures_total",
        "counter",
        "Identity handshakes rejected, by reason.",
        [({"reason": r}, n) for r, n in sorted(rejected.items())] or [({"reason": "none"}, 0)],
    )
    payments = status.get("payments", {})
    metric(
        "autonomi_payments_enabled",
        "gauge",
        "1 if this node is paid (it has a rewards address), 0 if it stores for free.",
        [(None, int(bool(payments.get("enabled", False))))],
    )
    metric(
        "autonomi_payments_earned_tokens",
        "gauge",
        "Tokens paid to this node's rewards address, in base units (1e18 = 1 ANT).",
        [(None, payments.get("earned", 0))],
    )
    metric(
        "autonomi_quotes_given_total",
        "counter",
        "Signed storage quotes this node gave.",
        [(None, payments.get("quotes_given", 0))],
    )
    metric(
        "autonomi_paid_chunks_total",
        "counter",
        "Chunks stored with a proof of payment.",
        [(None, payments.get("paid_chunks", 0))],
    )
    metric(
        "autonomi_chain_errors_total",
        "counter",
        "Calls to the chain that failed.",
        [(None, payments.get("chain_errors", 0))],
    )
    rejections = payments.get("payment_rejections", {})
    metric(
        "autonomi_payment_rejections_total",
        "counter",
        "Chunks (from clients or replicas) refused for their payment proof, by verdict.",
        [({"verdict": v}, n) for v, n in sorted(rejections.items())] or [({"verdict": "none"}, 0)],
    )
    verdicts = payments.get("proof_verdicts", {})
    metric(
        "autonomi_proof_verdicts_total",
        "counter",
        "Payment claims checked on chain, by verdict.",
        [({"verdict": v}, n) for v, n in sorted(verdicts.items())] or [({"verdict": "none"}, 0)],
    )
    audits = status.get("audits")
    if isinstance(audits, dict):  # absent: an older node, or one that does not audit
        _audit_metrics(audits, metric)
    return "\n".join(out) + "\n"


AUDIT_OUTCOMES = ("passed", "failed", "unanswered")
"""Outcomes of the storage audits a node sends, as its ``status`` counts them."""
PEER_LABEL_HEX = 16
"""Hex characters of a peer id used as the ``peer`` label."""

Metric = Callable[[str, str, str, list[tuple[dict[str, str] | None, float]]], None]


def _audit_metrics(audits: dict[str, Any], metric: Metric) -> None:
    """The storage audits: challenges sent by outcome, answered and refused, addresses
    peers did not hold, shunned peers and each peer's trust score."""
    metric(
        "autonomi_audits_total",
        "counter",
        "Storage audits this node sent to peers, by outcome.",
        [({"outcome": o}, _number(audits.get(o))) for o in AUDIT_OUTCOMES],
    )
    metric(
        "autonomi_audit_challenges_answered_total",
        "counter",
        "Storage audits from peers this node answered.",
        [(None, _number(audits.get("answered")))],
    )
    refused = audits.get("refused")
    refused = refused if isinstance(refused, dict) else {}
    metric(
        "autonomi_audit_challenges_refused_total",
        "counter",
        "Storage audits from peers this node refused, by reason.",
        [({"reason": str(r)}, _number(n)) for r, n in sorted(refused.items())]
        or [({"reason": "none"}, 0)],
    )
    metric(
        "autonomi_audit_missing_total",
        "counter",
        "Chunk addresses audited peers said they did not hold (offered to them for repair).",
        [(None, _number(audits.get("missing")))],
    )
    shunned = audits.get("shunned")
    metric(
        "autonomi_shunned_peers",
        "gauge",
        "Peers this node shuns for failing storage audits.",
        [(None, len(shunned) if isinstance(shunned, list) else 0)],
    )
    trust = audits.get("trust")
    samples: list[tuple[dict[str, str] | None, float]] = []
    if isinstance(trust, dict):
        samples = [
            ({"peer": str(peer)[:PEER_LABEL_HEX]}, _number(figures.get("score")))
            for peer, figures in sorted(trust.items())
            if isinstance(figures, dict)
        ]
    if samples:
        metric(
            "autonomi_peer_trust_score",
            "gauge",
            "How far this node trusts a peer, from the storage audits it sent it.",
            samples,
        )


def _number(value: Any) -> float:
    """A JSON number as a sample value; anything else (absent, null, text) counts as 0."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else 0


class MetricsServer:
    """``GET /metrics`` on ``host:port``, from a thread of its own."""

    def __init__(self, source: StatusSource, host: str = "127.0.0.1", port: int = 0) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics is here")
                    return
                body = render(source()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics: " + format, *args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2)
