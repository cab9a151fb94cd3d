"""``autonomi-actors top``: a live view of a running node, drawn from its ``status`` answer.

Rendering is pure: ``render(status, error)`` turns one ``status`` document (or the
lack of one) into a rich renderable, and tolerates any key being absent, because
the node's status grows over time. The I/O lives in ``run_top``: a background
thread asks the node for ``status`` once per interval over the control socket
(never two requests at once: that is all ``top`` costs the node), while the main
thread reads keys in cbreak mode and redraws an alternate screen.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final, TypeGuard

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from cli.control import ControlError, request
from cli.sizes import format_size
from protocol.routing import K

DEFAULT_INTERVAL: Final = 0.4
"""Seconds between two ``status`` requests (2.5 refreshes a second)."""
MIN_INTERVAL: Final = 0.1
"""A faster refresh would cost the node more than it shows."""
STATUS_TIMEOUT: Final = 5.0
"""How long one ``status`` request may take before the node counts as not answering."""
DEEP_MAILBOX: Final = 10
"""An inbox at least this deep is shown in yellow; ``VERY_DEEP_MAILBOX`` in red."""
VERY_DEEP_MAILBOX: Final = 100
MAX_CONNECTION_ROWS: Final = 12
MAX_BUCKET_ROWS: Final = 12
MAX_TRUST_ROWS: Final = 8
"""Peers shown in the trust panel: the least trusted first."""
WIDE: Final = 120
"""Columns from which every column of every section is shown."""
SHORT_ID: Final = 16
"""Hex characters of a peer id shown where the full 64 do not fit."""
QUIT_KEYS: Final = frozenset(b"qQ")


# -- rendering (pure) ----------------------------------------------------------------


def render(
    status: Mapping[str, Any] | None,
    error: str | None,
    *,
    age: float | None = None,
    interval: float | None = None,
    live: bool = True,
) -> RenderableType:
    """The whole screen for one ``status`` answer.

    ``status`` is the last answer (``None`` if there was none yet); ``error`` says why
    the latest request failed (``None`` if it succeeded); ``age`` is how many seconds
    ago ``status`` arrived and ``interval`` the refresh period, both only for the footer;
    ``live=False`` draws a one-off screen (no "retrying", no keys to press).
    """
    parts: list[RenderableType] = []
    if error is not None:
        since = f" (last answer {age:.1f} s ago)" if status is not None and age is not None else ""
        parts.append(
            Text.assemble(
                ("node not answering", "bold white on red"),
                (f" {error}{' - retrying' if live else ''}{since}", "red"),
            )
        )
    if status is None:
        parts.append(Text("waiting for the node's first status answer...", style="dim"))
    else:
        for section in (_header, _actors, _connections, _bottom_row):
            rendered = _guarded(section, status)
            if rendered is not None:
                parts.append(rendered)
    if live:
        parts.append(_footer(status, error, age, interval))
    return Group(*parts)


def _guarded(
    section: Callable[[Mapping[str, Any]], RenderableType | None], status: Mapping[str, Any]
) -> RenderableType | None:
    """One section (``None``: nothing to show); a section the node sent in an unexpected
    shape becomes a line, not a crash."""
    try:
        return section(status)
    except Exception as exc:
        return Text(f"({section.__name__.strip('_')}: cannot show: {exc!r})", style="dim red")


def _header(status: Mapping[str, Any]) -> RenderableType:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("peer id", str(status.get("peer_id", "?")))
    addrs = status.get("listen_addrs")
    if isinstance(addrs, list) and addrs:
        grid.add_row("listening", "\n".join(str(a) for a in addrs))
    facts: list[str] = []
    if _is_number(status.get("uptime")):
        facts.append(f"uptime {format_duration(float(status['uptime']))}")
    if "quic" in status:
        facts.append(f"quic {status['quic']}")
    if _is_number(status.get("routing_table_size")):
        facts.append(f"routing table {status['routing_table_size']} peers")
    connections = status.get("connections")
    if isinstance(connections, list):
        facts.append(f"{sum(isinstance(c, Mapping) for c in connections)} connections")
    nat = status.get("nat")
    if isinstance(nat, Mapping) and "reachability" in nat:
        relay = nat.get("relay")
        via = f" via relay {str(relay)[:12]}" if relay else ""
        facts.append(f"nat {nat['reachability']}{via}")
    if facts:
        grid.add_row("node", "   ".join(facts))
    if isinstance(nat, Mapping):
        confirmed = nat.get("confirmed_addrs")
        if isinstance(confirmed, list) and confirmed:
            grid.add_row("external", ", ".join(str(a) for a in confirmed))
    transport = status.get("transport")
    if isinstance(transport, Mapping):
        line = _transport_line(transport)
        if line:
            grid.add_row("transport", line)
    payments = status.get("payments")
    if isinstance(payments, Mapping):
        for label, text in _payments_rows(payments):
            grid.add_row(label, text)
    audits = status.get("audits")
    if isinstance(audits, Mapping):
        grid.add_row("audits", _audits_line(audits))
    if "root_dir" in status:
        grid.add_row("root dir", str(status["root_dir"]))
    return Panel(grid, title="autonomi-actors top", title_align="left", box=box.ROUNDED)


ANT_UNITS: Final = 10**18
"""Token base units in one ANT (18 decimals)."""
MAX_CHAIN_ERROR: Final = 60
"""Characters of the last chain error shown."""


def format_ant(units: int) -> str:
    """Token base units as ANT, exactly: ``3 * 10**12`` -> ``0.000003 ANT``."""
    sign = "-" if units < 0 else ""
    whole, fraction = divmod(abs(int(units)), ANT_UNITS)
    decimals = f"{fraction:018d}".rstrip("0")
    return f"{sign}{whole}{'.' + decimals if decimals else ''} ANT"


def _payments_rows(payments: Mapping[str, Any]) -> list[tuple[str, Text]]:
    """What this node earns (its rewards address and figures) or that it stores for free;
    and the last chain error, if the chain failed it."""
    if payments.get("enabled") is False:
        return [("payments", Text("free (no rewards address)", style="dim"))]
    facts: list[str] = []
    if payments.get("rewards_address"):
        facts.append(f"rewards {payments['rewards_address']}")
    if _is_number(payments.get("earned")):
        facts.append(f"earned {format_ant(int(payments['earned']))}")
    for key, label in (("quotes_given", "quotes given"), ("paid_chunks", "paid chunks")):
        if _is_number(payments.get(key)):
            facts.append(f"{label} {payments[key]}")
    rejections = payments.get("payment_rejections")
    if isinstance(rejections, Mapping):
        facts.append(f"rejected {sum(n for n in rejections.values() if _is_number(n))}")
    line = Text("   ".join(facts))
    errors = payments.get("chain_errors")
    if _is_number(errors):
        line.append("   " if facts else "")
        line.append(f"chain errors {errors}", style="red" if errors else "")
    rows = [("payments", line)]
    last = str(payments.get("last_chain_error") or "")
    if _is_number(errors) and errors and last:
        cut = last if len(last) <= MAX_CHAIN_ERROR else last[: MAX_CHAIN_ERROR - 1] + "…"
        rows.append(("chain error", Text(cut, style="red")))
    return rows


_AUDIT_FIGURES: Final = ("sent", "passed", "failed", "unanswered", "missing", "answered")
"""Figures of the audits row: challenges sent by outcome, addresses peers did not
hold, challenges from peers answered."""
_AUDIT_WARNINGS: Final = frozenset({"failed", "unanswered", "missing"})
"""Figures shown in yellow when not zero."""


def _audits_line(audits: Mapping[str, Any]) -> Text:
    """The storage audits this node sent (by outcome) and answered, the ones it refused,
    and how many peers it shuns; or that audits are off."""
    if audits.get("enabled") is False:
        return Text("off", style="dim")
    line = Text()

    def fact(text: str, style: str = "") -> None:
        line.append("   " if line else "")
        line.append(text, style=style)

    for key in _AUDIT_FIGURES:
        value = audits.get(key)
        if _is_number(value):
            fact(f"{key} {value}", "yellow" if key in _AUDIT_WARNINGS and value else "")
    refused = audits.get("refused")
    if isinstance(refused, Mapping):
        fact(f"refused {sum(n for n in refused.values() if _is_number(n))}")
    shunned = audits.get("shunned")
    if isinstance(shunned, list):
        fact(f"shunned {len(shunned)}", "red" if shunned else "")
    if _is_number(audits.get("interval")):
        fact(f"every {audits['interval']:g} s", "dim")
    return line


@dataclass(frozen=True, slots=True)
class PeerTrust:
    """One peer's trust, as the ``audits`` section of ``status`` reports it."""

    peer_id: str
    score: float | None
    """None: the node shuns the peer but sent no score for it."""
    passed: int | None
    failed: int | None
    shunned: bool


def least_trusted(audits: Mapping[str, Any], limit: int | None = None) -> list[PeerTrust]:
    """The peers of the ``audits`` section, the least trusted first (shunned peers
    without a score first of all); entries of an unexpected shape are skipped."""
    raw_shunned = audits.get("shunned")
    shunned = {str(p) for p in raw_shunned} if isinstance(raw_shunned, list) else set()
    trust = audits.get("trust")
    peers: list[PeerTrust] = []
    if isinstance(trust, Mapping):
        for peer_id, figures in trust.items():
            if not isinstance(figures, Mapping) or not _is_number(figures.get("score")):
                continue
            passed, failed = figures.get("passed"), figures.get("failed")
            peers.append(
                PeerTrust(
                    str(peer_id),
                    float(figures["score"]),
                    int(passed) if _is_number(passed) else None,
                    int(failed) if _is_number(failed) else None,
                    str(peer_id) in shunned,
                )
            )
    scored = {p.peer_id for p in peers}
    peers += [PeerTrust(p, None, None, None, True) for p in sorted(shunned - scored)]
    peers.sort(key=lambda p: (p.score is not None, p.score or 0.0, p.peer_id))
    return peers if limit is None else peers[:limit]


_TRANSPORT_FIGURES: Final = (
    ("datagrams_received", "datagrams in"),
    ("datagrams_sent", "out"),
    ("requests_sent", "requests sent"),
    ("requests_served", "served"),
    ("request_timeouts", "timeouts"),
    ("handshakes_rejected_locally", "handshakes rejected"),
)


def _transport_line(transport: Mapping[str, Any]) -> str:
    return "   ".join(
        f"{label} {transport[key]}"
        for key, label in _TRANSPORT_FIGURES
        if _is_number(transport.get(key))
    )


def _actors(status: Mapping[str, Any]) -> RenderableType | None:
    actors = status.get("actors")
    if not isinstance(actors, Mapping):
        return None
    table = Table(title="actors", title_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True)
    table.add_column("actor", no_wrap=True, min_width=max((len(str(n)) for n in actors), default=5))
    for column in ("depth", "processed", "rate/s", "mean ms"):
        table.add_column(column, justify="right", no_wrap=True, min_width=len(column))
    table.add_column("last message", overflow="ellipsis")  # wrapable: shrinks first
    table.add_column("failures", justify="right", no_wrap=True, min_width=len("failures"))
    for name, figures in actors.items():
        fig = figures if isinstance(figures, Mapping) else {}
        depth = fig.get("depth")
        failures = fig.get("failures")
        row_style = ""
        if _is_number(depth) and depth >= VERY_DEEP_MAILBOX:
            row_style = "bold red"
        elif _is_number(depth) and depth >= DEEP_MAILBOX:
            row_style = "yellow"
        table.add_row(
            str(name),
            _int_text(depth),
            _int_text(fig.get("processed")),
            _float_text(fig.get("rate"), 1),
            _float_text(fig.get("mean_ms"), 3),
            str(fig.get("last_message", "-")),
            Text(_int_text(failures), style="red" if _is_number(failures) and failures else ""),
            style=row_style,
        )
    if not actors:
        table.add_row("(no actors reported)", "", "", "", "", "", "")
    return table


class _ByWidth:
    """A section built for the width it is given: a narrow terminal gets fewer columns."""

    def __init__(self, build: Callable[[int], RenderableType]) -> None:
        self._build = build

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        try:
            yield self._build(options.max_width)
        except Exception as exc:
            yield Text(f"(cannot show: {exc!r})", style="dim red")


def _connections(status: Mapping[str, Any]) -> RenderableType | None:
    connections = status.get("connections")
    if not isinstance(connections, list):
        return None
    rows = sorted(
        (c for c in connections if isinstance(c, Mapping)), key=lambda c: str(c.get("peer_id"))
    )
    return _ByWidth(lambda width: _connections_table(rows, wide=width >= WIDE))


def _connections_table(
    rows: list[Mapping[str, Any]], wide: bool, max_rows: int = MAX_CONNECTION_ROWS
) -> Table:
    table = Table(
        title=f"connections ({len(rows)})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
    )
    columns: list[tuple[str, Callable[[Mapping[str, Any]], RenderableType]]] = [
        ("peer", lambda c: str(c.get("peer_id", "?"))[: SHORT_ID if wide else 12]),
        ("direction", lambda c: str(c.get("direction", "-"))),
        ("how", lambda c: str(c.get("how", "-"))),
        ("pq", lambda c: _pq_text(c.get("pq"))),
        ("key exchange", lambda c: str(c.get("group") or "-")),
        ("rtt ms", _rtt_text),
    ]
    if wide:
        columns[3:3] = [("address", lambda c: str(c.get("remote_addr") or "-"))]
        columns += [
            ("age", lambda c: format_duration(c["age_s"]) if _is_number(c.get("age_s")) else "-"),
            ("state", _state_text),
        ]
    for header, _ in columns:
        table.add_column(header, no_wrap=True, justify="right" if header == "rtt ms" else "left")
    for conn in rows[:max_rows]:
        table.add_row(*(cell(conn) for _, cell in columns))
    filler = [""] * (len(columns) - 1)
    if len(rows) > max_rows:
        table.add_row(f"... and {len(rows) - max_rows} more", *filler, style="dim")
    if not rows:
        table.add_row("(none)", *filler, style="dim")
    return table


def _state_text(conn: Mapping[str, Any]) -> Text:
    state = str(conn.get("state", "-"))
    return Text(state, style="" if state in ("ready", "-") else "yellow")


def _bottom_row(status: Mapping[str, Any]) -> RenderableType | None:
    panels = [
        p
        for p in (
            _guarded(_buckets, status) if "buckets" in status else None,
            _guarded(_close_group, status) if "close_group" in status else None,
            _guarded(_storage, status) if _has_storage(status) else None,
            _guarded(_trust, status) if isinstance(status.get("audits"), Mapping) else None,
        )
        if p is not None
    ]
    if not panels:
        return None
    return _ByWidth(lambda width: _side_by_side(panels, per_row=3 if width >= WIDE else 2))


def _side_by_side(panels: list[RenderableType], per_row: int) -> Table:
    grid = Table.grid(expand=True, padding=(0, 1))
    columns = min(per_row, len(panels))
    for _ in range(columns):
        grid.add_column(ratio=1)
    for first in range(0, len(panels), columns):
        row = panels[first : first + columns]
        grid.add_row(*row, *([""] * (columns - len(row))))
    return grid


def _buckets(status: Mapping[str, Any], max_rows: int = MAX_BUCKET_ROWS) -> RenderableType:
    buckets = status["buckets"]
    sizes: list[tuple[int, int]] = []
    if isinstance(buckets, Mapping):
        sizes = [(int(i), int(n)) for i, n in buckets.items() if _is_number(n) and n > 0]
    elif isinstance(buckets, list):  # a list of sizes indexed by bucket
        sizes = [(i, int(n)) for i, n in enumerate(buckets) if _is_number(n) and n > 0]
    sizes.sort(reverse=True)  # the far buckets (high index) hold most of the network
    table = Table.grid(padding=(0, 1))
    table.add_column(justify="right", style="bold")
    table.add_column(justify="right")
    table.add_column()
    for index, size in sizes[:max_rows]:
        table.add_row(str(index), str(size), _bar(size, K, width=K))
    if len(sizes) > max_rows:
        table.add_row("", "", Text(f"... {len(sizes) - max_rows} more buckets", style="dim"))
    if not sizes:
        table.add_row("", "", Text("(empty)", style="dim"))
    if _is_number(status.get("lookups_running")):
        table.add_row("", "", Text(f"{status['lookups_running']} lookups running", style="dim"))
    total = sum(n for _, n in sizes)
    return Panel(
        table,
        title=f"routing buckets ({len(sizes)} used, {total} peers)",
        title_align="left",
        box=box.ROUNDED,
    )


def _close_group(status: Mapping[str, Any]) -> RenderableType:
    group = status["close_group"]
    peers = [str(p) for p in group] if isinstance(group, list) else []
    connected = {
        str(c.get("peer_id"))
        for c in status.get("connections") or []
        if isinstance(c, Mapping) and "peer_id" in c
    }
    table = Table.grid(padding=(0, 1))
    table.add_column(justify="right", style="dim")
    table.add_column(no_wrap=True)
    table.add_column()
    for i, peer in enumerate(peers):
        mark = ""
        if peer == status.get("peer_id"):
            mark = "(this node)"
        elif peer in connected:
            mark = "connected"
        table.add_row(str(i + 1), peer[:SHORT_ID], Text(mark, style="green"))
    if not peers:
        table.add_row("", Text("(empty: no peers known)", style="dim"), "")
    return Panel(table, title=f"close group ({len(peers)})", title_align="left", box=box.ROUNDED)


_STORAGE_KEYS: Final = ("chunks", "bytes_stored", "max_storage", "cached_chunks", "puts", "gets")


def _has_storage(status: Mapping[str, Any]) -> bool:
    return any(key in status for key in _STORAGE_KEYS)


def _storage(status: Mapping[str, Any]) -> RenderableType:
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    if _is_number(status.get("chunks")):
        table.add_row("chunks", str(status["chunks"]))
    stored = status.get("bytes_stored")
    limit = status.get("max_storage")
    if _is_number(stored):
        used = format_size(stored)
        if _is_number(limit) and limit > 0:
            share = 100.0 * stored / limit
            table.add_row("stored", f"{used} of {format_size(limit)} ({share:.1f}%)")
            table.add_row("", _bar(stored, limit, width=30))
        else:
            table.add_row("stored", used)
    elif _is_number(limit):
        table.add_row("limit", format_size(limit))
    if _is_number(status.get("cached_chunks")):
        table.add_row("cached", f"{status['cached_chunks']} chunks")
    counters = [
        f"{label} {status[key]}"
        for key, label in (("puts", "puts"), ("gets", "gets"), ("puts_rejected", "rejected"))
        if _is_number(status.get(key))
    ]
    if counters:
        table.add_row("requests", "  ".join(counters))
    return Panel(table, title="storage", title_align="left", box=box.ROUNDED)


def _trust(status: Mapping[str, Any], max_rows: int = MAX_TRUST_ROWS) -> RenderableType | None:
    """The least trusted peers: short id, score, audits passed/failed, shunned or not."""
    audits = status["audits"]
    if audits.get("enabled") is False:
        return None
    peers = least_trusted(audits)
    shunned = sum(p.shunned for p in peers)
    return Panel(
        _ByWidth(lambda width: _trust_table(peers[:max_rows], len(peers), wide=width >= 45)),
        title=f"peer trust ({len(peers)} peers, {shunned} shunned)",
        title_align="left",
        box=box.ROUNDED,
    )


def _trust_table(peers: list[PeerTrust], total: int, wide: bool) -> Table:
    """Short id, score, audits passed and failed (``wide`` only), shunned or not."""
    table = Table(box=None, padding=(0, 1), pad_edge=False, header_style="dim")
    table.add_column("peer", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    if wide:
        table.add_column("passed", justify="right", no_wrap=True)
        table.add_column("failed", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True)
    for peer in peers:
        score = "-" if peer.score is None else f"{peer.score:.2f}"
        counts = [_int_text(peer.passed), _int_text(peer.failed)] if wide else []
        table.add_row(
            peer.peer_id[: SHORT_ID if wide else 12],
            Text(score, style="red" if peer.score is not None and peer.score < 0 else ""),
            *counts,
            Text("shunned", style="bold red") if peer.shunned else "",
        )
    filler = [""] * (len(table.columns) - 1)
    if total > len(peers):
        table.add_row(Text(f"... and {total - len(peers)} more", style="dim"), *filler)
    if not peers:
        table.add_row(Text("(no peer audited yet)", style="dim"), *filler)
    return table


def _footer(
    status: Mapping[str, Any] | None, error: str | None, age: float | None, interval: float | None
) -> Text:
    parts = ["q quits"]
    if interval is not None:
        parts.append(f"refresh every {interval:g} s")
    if status is not None and error is None and age is not None:
        parts.append(f"updated {age:.1f} s ago")
    return Text("  ·  ".join(parts), style="dim")


def _bar(value: float, total: float, width: int) -> ProgressBar:
    return ProgressBar(total=max(total, 1), completed=min(value, total), width=width)


def _is_number(value: Any) -> TypeGuard[int | float]:
    """A JSON number (not a bool, not None)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int_text(value: Any) -> str:
    return str(int(value)) if _is_number(value) else "-"


def _float_text(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if _is_number(value) else "-"


def _pq_text(pq: Any) -> Text:
    if pq is True:
        return Text("yes", style="green")
    if pq is False:
        return Text("no", style="yellow")
    return Text("-")


def _rtt_text(conn: Mapping[str, Any]) -> str:
    """``rtt_ms`` in milliseconds, or ``rtt`` in seconds (as aioquic counts it)."""
    if _is_number(conn.get("rtt_ms")):
        return f"{conn['rtt_ms']:.1f}"
    if _is_number(conn.get("rtt")):
        return f"{conn['rtt'] * 1000.0:.1f}"
    return "-"


def format_duration(seconds: float) -> str:
    """``3725`` -> ``1:02:05``; a day or more -> ``2d 03:04:05``."""
    whole = max(0, int(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {hours:02d}:{minutes:02d}:{secs:02d}" if days else clock


# -- polling ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """What the poller knows: the last good answer, the latest error, and when."""

    status: dict[str, Any] | None
    error: str | None
    answered_at: float | None
    """``time.monotonic()`` of the last good answer."""
    version: int


class StatusPoller:
    """Asks for ``status`` every ``interval`` seconds from a daemon thread.

    Requests never overlap: a slow answer delays the next request instead of piling
    more onto the node. After each answer or failure it calls ``on_change``.
    """

    def __init__(
        self,
        fetch: Callable[[], Any],
        interval: float,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._fetch = fetch
        self._interval = interval
        self._on_change = on_change
        self._lock = threading.Lock()
        self._snapshot = Snapshot(None, None, None, 0)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="top-status-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._snapshot

    def poll_once(self) -> None:
        """One request; the snapshot records its answer or its failure."""
        try:
            answer = self._fetch()
            if not isinstance(answer, dict):
                raise ControlError(f"unexpected status answer of type {type(answer).__name__}")
        except (ControlError, OSError) as exc:
            with self._lock:
                old = self._snapshot
                self._snapshot = Snapshot(old.status, str(exc), old.answered_at, old.version + 1)
        else:
            with self._lock:
                version = self._snapshot.version + 1
                self._snapshot = Snapshot(answer, None, time.monotonic(), version)
        self._on_change()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stopping.is_set():
            self.poll_once()
            next_at = max(next_at + self._interval, time.monotonic())
            self._stopping.wait(next_at - time.monotonic())


# -- the terminal ----------------------------------------------------------------------


class _Terminated(Exception):
    """SIGTERM arrived while ``top`` was running."""


@contextlib.contextmanager
def _cbreak(fd: int | None) -> Iterator[None]:
    """Keys arrive one at a time without echo; the old terminal mode comes back on exit."""
    if fd is None or not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM ends ``top`` like ``q``; a handler already installed (``run``'s) still runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if callable(previous):
            previous(signum, frame)
        raise _Terminated

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stdin_fd() -> int | None:
    try:
        return sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        return None


def run_top(
    root_dir: Path,
    interval: float = DEFAULT_INTERVAL,
    *,
    stop: threading.Event | None = None,
    console: Console | None = None,
) -> int:
    """Show the live screen of the node on ``root_dir`` until ``q``, Ctrl-C, SIGTERM or
    ``stop`` is set; returns the exit status (0).

    On a console that is not a terminal it prints one screen and returns (1 if the
    node did not answer).
    """
    if interval < MIN_INTERVAL:
        raise ValueError(f"the refresh interval must be at least {MIN_INTERVAL} s")
    console = console or Console()
    timeout = max(STATUS_TIMEOUT, interval)

    def fetch() -> Any:
        return request(root_dir, "status", timeout=timeout)

    if not console.is_terminal:
        once = StatusPoller(fetch, interval)
        once.poll_once()
        snap = once.snapshot()
        console.print(render(snap.status, snap.error, live=False))
        return 0 if snap.error is None else 1

    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    pipe_lock = threading.Lock()
    pipe_open = True

    def wake() -> None:
        # Under the lock: once closed, the pipe's fd numbers may belong to someone else.
        with pipe_lock, contextlib.suppress(BlockingIOError):
            if pipe_open:
                os.write(wake_write, b"x")

    poller = StatusPoller(fetch, interval, on_change=wake)
    stdin = _stdin_fd()
    try:
        with (
            _sigterm_raises(),
            _cbreak(stdin),
            Live(
                render(None, None, interval=interval),
                console=console,
                screen=True,
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
            ) as live,
        ):
            poller.start()
            _loop(live, poller, stdin, wake_read, interval, stop)
    except (KeyboardInterrupt, _Terminated):
        pass
    finally:
        poller.stop()
        with pipe_lock:
            pipe_open = False
            os.close(wake_read)
            os.close(wake_write)
    return 0


def _loop(
    live: Live,
    poller: StatusPoller,
    stdin: int | None,
    wake_read: int,
    interval: float,
    stop: threading.Event | None,
) -> None:
    """Redraw on every answer (and once a second for the clock) until a quit key."""
    watch_stdin = stdin is not None
    while stop is None or not stop.is_set():
        snap = poller.snapshot()
        age = None if snap.answered_at is None else time.monotonic() - snap.answered_at
        live.update(render(snap.status, snap.error, age=age, interval=interval), refresh=True)
        sources = [wake_read, stdin] if watch_stdin and stdin is not None else [wake_read]
        ready, _, _ = select.select(sources, [], [], min(1.0, interval * 2))
        if wake_read in ready:
            os.read(wake_read, 4096)
        if stdin is not None and stdin in ready:
            keys = os.read(stdin, 64)
            if not keys:  # stdin closed (not a terminal): only Ctrl-C, SIGTERM or stop end top
                watch_stdin = False
            elif any(key in QUIT_KEYS for key in keys):
                return
