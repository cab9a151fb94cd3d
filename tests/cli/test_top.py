"""`autonomi-actors top`: the pure ``render`` and, in a real terminal (tmux), the live screen.

The tmux tests run ``top`` against a real node process. Set ``TUI_SNAPSHOT=docs/tui.txt``
to save the screen they capture (that is how ``docs/tui.txt`` was made).
"""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from cli.control import ControlError
from cli.main import main, print_status
from cli.top import StatusPoller, format_ant, format_duration, render, run_top
from tests.cli.samples import FAR, OTHER, SHUNNED, audits_section
from tests.cli.test_run_and_status import wait_for_status

PEER_ID = "1d4e1d58aed80781d690718de00513c13b1d2ae38861f83d48a2f190dd98cde3"
REWARDS = "0x" + "5a" * 20


def full_status() -> dict[str, Any]:
    return {
        "peer_id": PEER_ID,
        "public_key": "97f3" * 8,
        "root_dir": "/srv/node",
        "uptime": 3725.4,
        "listen_addrs": [f"/ip4/127.0.0.1/udp/12000/quic-v1/p2p/{PEER_ID}"],
        "quic": "qh3",
        "routing_table_size": 24,
        "buckets": {"255": 12, "254": 7, "251": 5, "3": 0},
        "lookups_running": 2,
        "connections": [
            {
                "peer_id": OTHER,
                "direction": "outbound",
                "remote_addr": "127.0.0.1:12001",
                "pq": True,
                "group": "X25519MLKEM768",
                "rtt_ms": 0.42,
                "quic": "qh3",
                "state": "ready",
                "age_s": 63.0,
            },
            {
                "peer_id": "bb" * 32,
                "direction": "inbound",
                "how": "punched",
                "remote_addr": "198.51.100.7:4000",
                "pq": False,
                "group": "x25519",
                "rtt_ms": None,
                "state": "draining",
                "age_s": 2.0,
            },
        ],
        "close_group": [OTHER, FAR],
        "nat": {"reachability": "public", "observed_addrs": {}, "confirmed_addrs": []},
        "chunks": 12,
        "bytes_stored": 512 * 1024**2,
        "max_storage": 1024**3,
        "cached_chunks": 3,
        "puts": 14,
        "gets": 40,
        "puts_rejected": 1,
        "payments": {
            "enabled": True,
            "rewards_address": REWARDS,
            "quotes_given": 31,
            "paid_chunks": 9,
            "earned": 3 * 10**18 // 2 + 27 * 10**12,
            "chain_calls": 10,
            "chain_errors": 0,
            "last_chain_error": "",
            "proof_verdicts": {"paid": 9, "unpaid": 1},
            "proofs_cached": 9,
            "proof_cache_hits": 4,
            "payment_rejections": {"unpaid": 1, "expired": 2},
        },
        "audits": audits_section(),
        "actors": {
            "Transport": {
                "depth": 0,
                "processed": 98765,
                "rate": 12.4,
                "mean_ms": 0.125,
                "last_message": "InboundStream",
                "failures": 0,
            },
            "ChunkKeeper": {
                "depth": 150,
                "processed": 4321,
                "rate": 1.2,
                "mean_ms": 0.549,
                "last_message": "PutChunkRequest",
                "failures": 2,
            },
        },
    }


def screen_text(renderable: Any, width: int = 160) -> str:
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text()


def row_of(text: str, first_word: str) -> list[str]:
    """The words of the line that starts with ``first_word`` (box characters dropped)."""
    for line in text.splitlines():
        words = line.replace("│", " ").split()
        if words and words[0] == first_word:
            return words
    raise AssertionError(f"no line starts with {first_word!r} in:\n{text}")


def panel_rows(text: str, title: str) -> list[list[str]]:
    """The words of each line inside the panel titled ``title`` (the first panel
    whose title starts so; panels beside it are left out)."""
    lines = text.splitlines()
    top = next(i for i, line in enumerate(lines) if f"╭─ {title}" in line)
    left = lines[top].index(f"╭─ {title}")
    right = lines[top].index("╮", left)
    rows: list[list[str]] = []
    for line in lines[top + 1 :]:
        inside = line[left : right + 1]
        if inside.startswith("╰"):
            return rows
        rows.append(inside.strip("│").split())
    raise AssertionError(f"the panel {title!r} is not closed in:\n{text}")


# -- render ----------------------------------------------------------------------------


def test_render_full_status_shows_every_section() -> None:
    text = screen_text(render(full_status(), None, age=0.3, interval=0.4))
    assert PEER_ID in text
    assert f"/ip4/127.0.0.1/udp/12000/quic-v1/p2p/{PEER_ID}" in text
    assert "uptime 1:02:05" in text and "quic qh3" in text and "routing table 24 peers" in text
    assert "nat public" in text
    # actors: name, depth, processed, rate, mean ms, last message, failures
    assert row_of(text, "Transport") == [
        "Transport",
        "0",
        "98765",
        "12.4",
        "0.125",
        "InboundStream",
        "0",
    ]
    assert row_of(text, "ChunkKeeper") == [
        "ChunkKeeper",
        "150",
        "4321",
        "1.2",
        "0.549",
        "PutChunkRequest",
        "2",
    ]
    # connections: short peer id, direction, how ("-" when the node does not say), pq, group, rtt
    assert row_of(text, OTHER[:16]) == [
        OTHER[:16],
        "outbound",
        "-",
        "127.0.0.1:12001",
        "yes",
        "X25519MLKEM768",
        "0.4",
        "0:01:03",
        "ready",
    ]
    assert row_of(text, "bb" * 8)[1:6] == [
        "inbound",
        "punched",
        "198.51.100.7:4000",
        "no",
        "x25519",
    ]
    assert "connections (2)" in text
    # routing buckets: non-empty ones only, high index first
    assert "routing buckets (3 used, 24 peers)" in text
    assert text.index("255 12") < text.index("254  7") < text.index("251  5")
    assert "2 lookups running" in text
    # close group, with the connected member marked
    assert "close group (2)" in text
    assert f"{OTHER[:16]} connected" in text and FAR[:16] in text
    # storage
    assert "chunks   12" in text
    assert "512.0 MiB of 1.0 GiB (50.0%)" in text
    assert "3 chunks" in text and "puts 14" in text and "gets 40" in text and "rejected 1" in text
    # payments
    assert row_of(text, "payments") == [
        "payments",
        "rewards",
        REWARDS,
        "earned",
        "1.500027",
        "ANT",
        "quotes",
        "given",
        "31",
        "paid",
        "chunks",
        "9",
        "rejected",
        "3",
        "chain",
        "errors",
        "0",
    ]
    assert "chain error " not in text
    assert "refresh every 0.4 s" in text and "updated 0.3 s ago" in text
    assert "not answering" not in text


def test_render_payments_of_a_free_node_and_chain_errors() -> None:
    status = full_status()
    status["payments"] = {"enabled": False, "quotes_given": 0, "paid_chunks": 0}
    text = screen_text(render(status, None))
    assert row_of(text, "payments") == ["payments", "free", "(no", "rewards", "address)"]
    assert "earned" not in text
    status["payments"] = {
        "enabled": True,
        "rewards_address": REWARDS,
        "earned": 0,
        "chain_errors": 2,
        "last_chain_error": "connection refused " + "x" * 100,
    }
    console = Console(width=160, record=True, file=io.StringIO(), color_system="truecolor")
    console.print(render(status, None))
    text = console.export_text(clear=False)
    assert f"rewards {REWARDS}   earned 0 ANT   chain errors 2" in text
    error_line = row_of(text, "chain")
    assert error_line[:4] == ["chain", "error", "connection", "refused"]
    assert len(" ".join(error_line)) < 80 and error_line[-1].endswith("…")
    styled = console.export_text(styles=True)
    assert "\x1b[31mchain errors 2" in styled  # red
    del status["payments"]
    assert "payments" not in screen_text(render(status, None))  # an older node: no line


def test_render_audits_row_and_the_least_trusted_peers() -> None:
    console = Console(width=160, record=True, file=io.StringIO(), color_system="truecolor")
    console.print(render(full_status(), None))
    text = console.export_text(clear=False)
    assert " ".join(row_of(text, "audits")) == (
        "audits sent 12 passed 10 failed 1 unanswered 1 missing 3 answered 9 refused 3 "
        "shunned 1 every 900 s"
    )
    assert "peer trust (3 peers, 1 shunned)" in text
    # least trusted first: short id, score, audits passed and failed, shunned or not
    assert panel_rows(text, "peer trust") == [
        ["peer", "score", "passed", "failed"],
        [SHUNNED[:16], "-2.50", "3", "1", "shunned"],
        [FAR[:16], "0.00", "1", "0"],
        [OTHER[:16], "1.25", "3", "0"],
    ]
    styled = console.export_text(styles=True)
    assert "\x1b[1;31mshunned" in styled  # bold red
    assert "\x1b[31mshunned 1" in styled  # the audits row: red when a peer is shunned


def test_render_audits_off_absent_or_odd() -> None:
    status = full_status()
    status["audits"] = {"enabled": False}
    text = screen_text(render(status, None))
    assert row_of(text, "audits") == ["audits", "off"]
    assert "peer trust" not in text
    del status["audits"]
    text = screen_text(render(status, None))  # an older node: no row, no panel
    assert "audits" not in text and "peer trust" not in text
    status["audits"] = {"sent": 2, "trust": {}, "shunned": []}
    text = screen_text(render(status, None))
    assert row_of(text, "audits") == ["audits", "sent", "2", "shunned", "0"]
    assert "peer trust (0 peers, 0 shunned)" in text and "(no peer audited yet)" in text
    status["audits"] = {
        "refused": "many",
        "shunned": [SHUNNED],  # shunned, but no score sent: listed first, score "-"
        "trust": {OTHER: {"score": "high"}, FAR: 5, "ee" * 32: {"score": 0.5}},
    }
    text = screen_text(render(status, None))
    assert "cannot show" not in text
    assert "peer trust (2 peers, 1 shunned)" in text
    assert text.index(SHUNNED[:16]) < text.index("ee" * 8)
    assert row_of(text, "audits") == ["audits", "shunned", "1"]


def test_render_many_trusted_peers_shows_the_least_trusted_few() -> None:
    status = full_status()
    status["audits"]["trust"] = {
        f"{n:02x}" * 32: {"score": float(n), "passed": n, "failed": 0} for n in range(0x10, 0x24)
    }
    status["audits"]["shunned"] = []
    text = screen_text(render(status, None))
    assert "peer trust (20 peers, 0 shunned)" in text
    rows = panel_rows(text, "peer trust")
    assert [row[0] for row in rows[1:9]] == [f"{n:02x}" * 8 for n in range(0x10, 0x18)]
    assert rows[9:] == [["...", "and", "12", "more"]]
    narrow = screen_text(render(status, None), width=80)
    assert max(len(line) for line in narrow.splitlines()) <= 80
    assert [row[0] for row in panel_rows(narrow, "peer trust")[1:3]] == ["10" * 6, "11" * 6]


def test_format_ant() -> None:
    assert format_ant(0) == "0 ANT"
    assert format_ant(10**18) == "1 ANT"
    assert format_ant(3 * 10**12) == "0.000003 ANT"
    assert format_ant(12 * 10**18 + 1) == "12.000000000000000001 ANT"


def test_print_status_shows_payments(capsys: pytest.CaptureFixture[str]) -> None:
    status = full_status()
    print_status(status)
    out = " ".join(capsys.readouterr().out.split())  # a narrow console wraps the line
    assert f"payments rewards {REWARDS}, earned 1.500027 ANT, 31 quotes given, 9 paid chunks" in out
    status["payments"] = {"enabled": False, "quotes_given": 0, "paid_chunks": 0}
    print_status(status)
    assert re.search(r"payments +free \(no rewards address\)", capsys.readouterr().out)


def test_print_status_shows_audits_and_the_least_trusted_peers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = full_status()
    print_status(status)
    out = " ".join(capsys.readouterr().out.split())  # a narrow console wraps the line
    assert "audits 12 sent, 10 passed, 1 failed, 1 unanswered; 9 answered; shunned 1 peer(s)" in out
    assert (
        f"trust lowest {SHUNNED[:12]} -2.5 (shunned), {FAR[:12]} 0, {OTHER[:12]} 1.25 reachability"
        in out
    )
    status["audits"] = {"enabled": False}
    print_status(status)
    out = capsys.readouterr().out
    assert re.search(r"audits +off", out) and "trust" not in out
    status["audits"] = {"enabled": True, "trust": {}, "shunned": []}  # nothing audited yet
    print_status(status)
    out = " ".join(capsys.readouterr().out.split())
    assert "audits 0 sent, 0 passed, 0 failed, 0 unanswered; 0 answered; shunned 0 peer(s)" in out
    assert "trust lowest" not in out
    del status["audits"]  # an older node
    print_status(status)
    out = capsys.readouterr().out
    assert "audits" not in out and "trust" not in out


def test_render_deep_mailbox_is_highlighted() -> None:
    console = Console(width=160, record=True, file=io.StringIO(), color_system="truecolor")
    console.print(render(full_status(), None))
    styled = console.export_text(styles=True)
    deep_line = next(line for line in styled.splitlines() if "ChunkKeeper" in line)
    calm_line = next(line for line in styled.splitlines() if "Transport" in line)
    assert "\x1b[1;31m" in deep_line  # bold red
    assert "\x1b[1;31m" not in calm_line


def test_render_today_s_status_without_network_keys() -> None:
    status = full_status()
    for key in ("listen_addrs", "quic", "routing_table_size", "buckets", "connections", "nat"):
        del status[key]
    text = screen_text(render(status, None))
    assert PEER_ID in text and "ChunkKeeper" in text and "storage" in text
    assert "connections" not in text and "routing buckets" not in text and "listening" not in text


def test_render_bare_status_and_odd_shapes_do_not_crash() -> None:
    text = screen_text(render({"peer_id": "ab"}, None))
    assert "ab" in text and "q quits" in text
    odd = {
        "peer_id": "ab",
        "uptime": "soon",
        "actors": {"Weird": 5, "Half": {"processed": 3}},
        "buckets": "not buckets",
        "connections": [1, {"peer_id": 3, "rtt": 0.0123}],
        "close_group": None,
        "bytes_stored": 10,
        "max_storage": 0,
    }
    text = screen_text(render(odd, None))
    assert row_of(text, "Weird") == ["Weird", "-", "-", "-", "-", "-", "-"]
    assert row_of(text, "Half")[:3] == ["Half", "-", "3"]
    assert "connections (1)" in text and "12.3" in text  # rtt in seconds shown in ms
    assert "(empty)" in text and re.search(r"stored +10 B", text)


def test_render_narrow_terminal_keeps_names_and_drops_minor_columns() -> None:
    status = full_status()
    status["actors"]["CloseGroupTracker"] = status["actors"]["Transport"]
    text = screen_text(render(status, None), width=80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert row_of(text, "CloseGroupTracker")[:3] == ["CloseGroupTracker", "0", "98765"]
    assert row_of(text, "ChunkKeeper")[-1] == "2"  # failures still shown
    assert row_of(text, OTHER[:12]) == [OTHER[:12], "outbound", "-", "yes", "X25519MLKEM768", "0.4"]
    assert "address" not in text and "127.0.0.1:12001" not in text
    wide = screen_text(render(status, None), width=160)
    assert "127.0.0.1:12001" in wide and "draining" in wide


def test_render_without_status_says_the_node_is_not_answering() -> None:
    text = screen_text(render(None, "no node is running on /x", interval=0.4))
    assert "node not answering" in text and "no node is running on /x" in text
    assert "waiting for the node's first status answer" in text


def test_render_stale_status_keeps_the_last_answer_and_says_how_old() -> None:
    text = screen_text(render(full_status(), "timed out", age=4.25))
    assert "node not answering" in text and "last answer 4.2 s ago" in text
    assert "ChunkKeeper" in text and "updated" not in text


def test_format_duration() -> None:
    assert format_duration(0) == "0:00:00"
    assert format_duration(3725.9) == "1:02:05"
    assert format_duration(2 * 86400 + 3 * 3600 + 4 * 60 + 5) == "2d 03:04:05"


# -- the poller ------------------------------------------------------------------------


def test_poller_keeps_the_last_answer_through_failures_and_recovers() -> None:
    answers: list[Any] = [
        ControlError("no node"),
        {"peer_id": "a"},
        ControlError("gone"),
        {"peer_id": "b"},
    ]

    def fetch() -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    poller = StatusPoller(fetch, interval=1.0)
    poller.poll_once()
    assert poller.snapshot().status is None and poller.snapshot().error == "no node"
    poller.poll_once()
    first = poller.snapshot()
    assert (
        first.status == {"peer_id": "a"} and first.error is None and first.answered_at is not None
    )
    poller.poll_once()
    stale = poller.snapshot()
    assert stale.status == {"peer_id": "a"} and stale.error == "gone"
    assert stale.answered_at == first.answered_at
    poller.poll_once()
    assert poller.snapshot().status == {"peer_id": "b"} and poller.snapshot().error is None
    assert poller.snapshot().version == 4


def test_poller_never_sends_two_requests_at_once() -> None:
    in_flight = 0
    most = 0
    calls = 0
    lock = threading.Lock()

    def slow_fetch() -> Any:
        nonlocal in_flight, most, calls
        with lock:
            in_flight += 1
            calls += 1
            most = max(most, in_flight)
        time.sleep(0.05)  # slower than the interval
        with lock:
            in_flight -= 1
        return {}

    poller = StatusPoller(slow_fetch, interval=0.01)
    poller.start()
    time.sleep(0.4)
    poller.stop()
    assert most == 1 and 3 <= calls <= 10


def test_top_on_a_non_terminal_prints_one_screen(tmp_path: Path) -> None:
    out = io.StringIO()
    assert run_top(tmp_path, 0.4, console=Console(file=out, width=120)) == 1
    assert "node not answering" in out.getvalue() and "no node is running" in out.getvalue()
    assert "retrying" not in out.getvalue() and "q quits" not in out.getvalue()
    with pytest.raises(ValueError, match="at least"):
        run_top(tmp_path, 0.01)


def test_top_rejects_a_too_short_interval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["top", "--root-dir", str(tmp_path), "--interval", "0.01"]) == 1
    assert "--interval must be at least" in capsys.readouterr().err


# -- in a real terminal ------------------------------------------------------------------

CLI = [sys.executable, "-m", "cli"]
needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Tmux:
    """A private tmux server (its own socket) running one command in a 160x50 pane."""

    def __init__(self, tmp_path: Path) -> None:
        self.socket = f"autonomi-top-{uuid.uuid4().hex[:12]}"
        self.config = tmp_path / "tmux.conf"
        self.config.write_text("set -g remain-on-exit on\n")
        self.exit_file = tmp_path / "exit-status"
        self.stty_file = tmp_path / "stty-after"

    def tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-u", "-L", self.socket, "-f", str(self.config), *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=10,
        )

    def start_top(self, root: Path, interval: float = 0.3) -> None:
        self.start([*CLI, "top", "--root-dir", str(root), "--interval", str(interval)])

    def start(self, argv: list[str]) -> None:
        top = shlex.join(argv)
        # bash runs top, then records its exit status and the terminal mode it left behind.
        # COLUMNS/LINES (bash may export stale ones) would override the pane's real size.
        script = (
            f"env -u COLUMNS -u LINES {top}; echo $? > {self.exit_file}; stty -a > {self.stty_file}"
        )
        self.tmux(
            "new-session", "-d", "-s", "top", "-x", "160", "-y", "50",
            "-c", os.getcwd(), f"LANG=C.UTF-8 exec bash -c {shlex.quote(script)}",
        )  # fmt: skip

    def capture(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "top").stdout

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.capture()
            if predicate(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"the screen never became what was expected:\n{screen}")

    def top_pid(self) -> int:
        shell = int(self.tmux("display-message", "-p", "-t", "top", "#{pane_pid}").stdout)
        children = Path(f"/proc/{shell}/task/{shell}/children").read_text().split()
        assert len(children) == 1, children
        return int(children[0])

    def wait_until_top_ended(self, timeout: float = 5.0) -> int:
        """Exit status of top; also checks the pane's shell finished and the tty is sane."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = self.tmux("display-message", "-p", "-t", "top", "#{pane_dead}", check=False)
            if dead.returncode != 0 or dead.stdout.strip() == "1":
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"top did not end within {timeout} s:\n{self.capture()}")
        stty = self.stty_file.read_text().split()
        assert "icanon" in stty and "echo" in stty, "top left the terminal in cbreak mode"
        return int(self.exit_file.read_text())

    def kill(self) -> None:
        self.tmux("kill-server", check=False)
        tmux_dir = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}"
        (tmux_dir / self.socket).unlink(missing_ok=True)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    session = Tmux(tmp_path)
    try:
        yield session
    finally:
        session.kill()


class NodeProcess:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc = subprocess.Popen(
            [*CLI, "run", "--root-dir", str(root), "--first"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.peer_id = str(wait_for_status(root)["peer_id"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    running = NodeProcess(tmp_path_factory.mktemp("top") / "node")
    try:
        yield running
    finally:
        running.stop()


def processed_counts(screen: str, actors: tuple[str, ...]) -> dict[str, int]:
    return {name: int(row_of(screen, name)[2]) for name in actors}


@pytest.mark.system
@needs_tmux
def test_top_in_a_terminal_refreshes_and_q_quits(node: NodeProcess, tmux: Tmux) -> None:
    tmux.start_top(node.root)
    actors = ("ChunkKeeper", "CloseGroupTracker")
    first = tmux.wait_for(lambda s: node.peer_id in s and all(a in s for a in actors))
    assert "processed" in first and "storage" in first and "q quits" in first
    before = processed_counts(first, actors)
    time.sleep(1.5)
    second = tmux.capture()
    after = processed_counts(second, actors)
    assert all(after[name] > before[name] for name in actors), (before, after)
    if snapshot := os.environ.get("TUI_SNAPSHOT"):
        Path(snapshot).write_text(second.rstrip() + "\n")
    tmux.tmux("send-keys", "-t", "top", "q")
    assert tmux.wait_until_top_ended() == 0
    assert "ChunkKeeper" not in tmux.capture()  # the alternate screen is gone


@pytest.mark.system
def test_top_without_a_terminal_prints_the_node_once(node: NodeProcess) -> None:
    out = io.StringIO()
    assert run_top(node.root, 0.4, console=Console(file=out, width=160)) == 0
    assert node.peer_id in out.getvalue() and "ChunkKeeper" in out.getvalue()


@pytest.mark.system
@needs_tmux
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_top_ends_cleanly_on_ctrl_c_and_sigterm(node: NodeProcess, tmux: Tmux, how: str) -> None:
    tmux.start_top(node.root)
    tmux.wait_for(lambda s: "ChunkKeeper" in s)
    if how == "ctrl-c":
        tmux.tmux("send-keys", "-t", "top", "C-c")
    else:
        os.kill(tmux.top_pid(), signal.SIGTERM)
    assert tmux.wait_until_top_ended() == 0
    assert "Traceback" not in tmux.capture()


@pytest.mark.system
@needs_tmux
def test_top_waits_for_the_node_and_survives_its_restart(tmp_path: Path, tmux: Tmux) -> None:
    root = tmp_path / "late-node"
    tmux.start_top(root)
    tmux.wait_for(lambda s: "node not answering" in s and "no node is running" in s)
    late = NodeProcess(root)
    try:
        tmux.wait_for(lambda s: late.peer_id in s and "not answering" not in s)
        late.stop()
        stale = tmux.wait_for(lambda s: "node not answering" in s and "last answer" in s)
        assert late.peer_id in stale  # the last answer stays on screen
        late = NodeProcess(root)
        tmux.wait_for(lambda s: "not answering" not in s and "ChunkKeeper" in s)
    finally:
        late.stop()
    tmux.tmux("send-keys", "-t", "top", "q")
    assert tmux.wait_until_top_ended() == 0


@needs_tmux
def test_run_tui_shows_the_node_and_q_stops_it(tmp_path: Path, tmux: Tmux) -> None:
    root = tmp_path / "node"
    tmux.start([*CLI, "run", "--root-dir", str(root), "--first", "--tui"])
    screen = tmux.wait_for(lambda s: "BucketManager" in s and "q quits" in s, timeout=30)
    assert "INFO" not in screen, "log lines must not write over the TUI"
    tmux.tmux("send-keys", "-t", "top", "q")
    assert tmux.wait_until_top_ended(timeout=15) == 0
    assert not (root / "control.sock").exists(), "the node stopped with its TUI"
    assert "running in" in (root / "logs" / "node.log").read_text()
